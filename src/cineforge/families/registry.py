"""The registry: every family and every preset, by public name.

Generation, training, export and evaluation resolve models here and nowhere else.
"""

from __future__ import annotations

from cineforge.errors import CineforgeError
from cineforge.families import cogvideox, demo, kandinsky4, kandinsky5, wan
from cineforge.families.family import Family, Preset
from cineforge.families.wan import a14b as wan_a14b
from cineforge.families.wan import i2v_family as wan_i2v
from cineforge.families.wan import ti2v as wan_ti2v

PRESETS: dict[str, Preset] = {
    p.name: p for m in (demo, wan, wan_i2v, wan_a14b, wan_ti2v, kandinsky5, kandinsky4, cogvideox)
    for p in m.PRESETS}
FAMILIES: dict[str, Family] = {f.name: f for f in (
    demo.DEMO_FAMILY, demo.DEMO_I2V_FAMILY, wan.WAN21, wan_i2v.WAN21_I2V, wan_a14b.WAN22_T2V_A14B,
    wan_a14b.WAN22_I2V_A14B, wan_ti2v.WAN22_TI2V, kandinsky5.KANDINSKY5,
    kandinsky5.KANDINSKY5_I2V, kandinsky5.KANDINSKY5_IMAGE,
    kandinsky4.KANDINSKY4, cogvideox.COGVIDEOX, cogvideox.COGVIDEOX_I2V)}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise CineforgeError(
            f"unknown preset {name!r}; run `cineforge presets` to list them ({', '.join(PRESETS)})",
            fields=("preset",),
        ) from None
