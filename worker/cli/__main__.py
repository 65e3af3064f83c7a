"""``python -m worker.cli``: the ``shared-cache`` command."""

from worker.cli import main

main()
