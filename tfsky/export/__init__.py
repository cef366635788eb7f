"""tfsky.export"""
