"""``python -m cli``: the ``optimus`` command."""

from cli import main

main()
