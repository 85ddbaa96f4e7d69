"""`python -m imageclf`."""

from imageclf.cli import main

main()
