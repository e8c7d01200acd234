"""cineforge.io."""
