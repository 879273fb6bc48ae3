"""`python -m hires` works like `hires`."""

from hires.cli import main

main()
