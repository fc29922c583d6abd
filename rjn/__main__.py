"""Allow `python -m rjn`."""

from rjn.cli import main

main()
