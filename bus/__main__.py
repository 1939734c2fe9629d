"""``python -m bus`` runs the ``bus`` command (useful where the script is not on PATH)."""

from bus.cli import run

run()
