"""Run the command-line interface with ``python -m embedseg_cli``."""

from embedseg_cli.cli import main

main()
