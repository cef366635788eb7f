"""tfsky.predict"""
