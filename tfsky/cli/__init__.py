"""Command-line interface (``tfsky ...``); see `tfsky.cli.main`."""
