"""Model families: one folder and one ``Family`` object per family (``family.py``), its
presets beside it; ``registry.py`` lists them all by public name."""
