"""cineforge.eval."""
