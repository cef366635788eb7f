"""tfsky.serving"""
