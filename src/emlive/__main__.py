"""``python -m emlive`` is the ``emlive`` command."""

from emlive.cli.main import main

main()
