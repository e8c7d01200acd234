"""cineforge.cli."""
