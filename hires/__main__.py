"""`python -m hires` works like `hires`."""

from hires import main

main()
