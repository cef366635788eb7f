"""Model builders (one per family) and the saved-model bundle."""
