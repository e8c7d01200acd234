"""cineforge.data."""
