"""`python -m yunque.cli` runs the command line, as `yunque` does."""

from yunque.cli.app import main

main()
