"""``python -m musicflow.cli``: the ``musicflow`` command."""

from musicflow.cli import main

main()
