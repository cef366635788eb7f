"""``python -m tfsky``: the ``tfsky`` command, for environments whose scripts folder is not on PATH."""

from tfsky.cli.main import main

main()
