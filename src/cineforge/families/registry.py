"""The registry: every family and every preset, by public name.

Generation, training, export and evaluation resolve models here and nowhere else.
"""

from __future__ import annotations

from cineforge.errors import CineforgeError
from cineforge.families import cogvideox, demo, kandinsky4, kandinsky5, wan
from cineforge.families.family import Family, Preset

PRESETS: dict[str, Preset] = {p.name: p for m in (demo, wan, kandinsky5, kandinsky4, cogvideox)
                              for p in m.PRESETS}
FAMILIES: dict[str, Family] = {f.name: f for f in (
    demo.DEMO_FAMILY, wan.WAN21, kandinsky5.KANDINSKY5, kandinsky5.KANDINSKY5_IMAGE,
    kandinsky4.KANDINSKY4, cogvideox.COGVIDEOX)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise CineforgeError(
            f"unknown preset {name!r}; run `cineforge presets` to list them ({', '.join(PRESETS)})",
            fields=("preset",),
        ) from None
