"""cineforge.pipelines."""
