"""cineforge.sampling."""
