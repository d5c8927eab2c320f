"""`python -m nrm` is the `nrm` command."""

from .cli import main

main()
