"""Run the command line with ``python -m publisher``."""

from publisher.cli import main

main()
