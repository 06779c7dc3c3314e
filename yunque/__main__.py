"""`python -m yunque` (and `torchrun -m yunque train ...`) run the command line."""

from yunque.cli.app import main

main()
