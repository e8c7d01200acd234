"""cineforge.train."""
