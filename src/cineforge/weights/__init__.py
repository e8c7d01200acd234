"""cineforge.weights."""
