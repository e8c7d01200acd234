"""cineforge.models."""
