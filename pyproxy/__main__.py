"""python -m pyproxy: the same as the pyproxy command."""

from .cli import main

main()
