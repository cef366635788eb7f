"""tfsky.train"""
