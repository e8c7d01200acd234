"""cineforge's own demo model: trained by this project on its shapes world, runs on a CPU.

    dit.py   DemoDiT: Wan 2.1's DiT plus a learned position table and a pooled caption (and
             Wan 2.2 TI2V's clean first frame, which the image-to-video weights use)
    vae.py   CompactVAE: a small causal video VAE (8x8 spatial, 4x temporal, 16 channels)

Text states are MiniLM's (384-d); the pipeline is Wan's: ``TextToVideo`` for ``demo``, and
for ``demo-i2v`` Wan 2.2 TI2V's ``TextImageToVideo`` (the image is the clean first latent
frame; without one it is text-to-video). The weights ship inside the package
(``cineforge/assets/demo``, fp16) and are re-made by the recipe in ``configs/demo/``
(docs/demo-training.md); the recipe's last stage builds exactly the DiT config below.
"""

from __future__ import annotations

import dataclasses

from cineforge.families.demo.dit import DemoDiT, DemoDiTConfig
from cineforge.families.demo.vae import COMPACT_VAE_TINY, CompactVAE, CompactVAEConfig
from cineforge.families.family import CINEFORGE_LAYOUT, MINILM, Family, Preset, SamplerDefaults
from cineforge.families.wan.dit import WAN_DIT_TINY
from cineforge.families.wan.pipeline import TextToVideo
from cineforge.families.wan.ti2v_pipeline import TextImageToVideo

DEMO_DIT = DemoDiTConfig(
    dim=256,
    ffn_dim=1024,
    num_heads=4,
    num_layers=8,
    text_dim=384,
    patch_size=(1, 2, 2),
    text_len=64,
    position_table=(5, 8, 8),  # 5 latent frames x 8 x 8 tokens: 17 frames at 64x64
    pooled_text=True,
)
DEMO_DIT_TINY = DemoDiTConfig(**{**dataclasses.asdict(WAN_DIT_TINY), "text_dim": 384,
                                 "in_channels": 4, "out_channels": 4},  # COMPACT_VAE_TINY's
                              position_table=(3, 8, 8), pooled_text=True)
DEMO_VAE = CompactVAEConfig(
    widths=(32, 64, 64), z_dim=16, frames_per_latent=4,
    num_res_blocks=1, norm_groups=8,
    latents_mean=(
        0.1232439035658476, -0.0661913145420682, -0.058832153287474015, 0.006165005148163331,
        0.2145842063705402, -0.2670400335043854, -0.04264680113171305, 0.08742300970519684,
        0.000550695171336311, -0.005915279698832605, 0.0843529625941968, -0.03651120789044197,
        -0.12306495882293388, 0.03069031198594923, -0.08016170596684465, -0.057576594421503244
    ),
    latents_std=(
        1.2825838162513603, 0.627925255406077, 0.4961153593734253, 0.9243398534710187,
        0.47674412895098406, 0.7685683504528409, 0.7439971872952027, 0.29906684601409,
        0.592376074450049, 1.1573259221095584, 1.0400086950111267, 0.758671468576755,
        0.8540511243064118, 0.178022100177463, 0.5455509605511644, 0.3265508967351059
    ),
)

# MagCache's calibration of the shipped weights at the defaults below: (t, mean|v|) of the
# guided velocity at each step (FlowPipeline.calibrate_magnitudes, prompt "a red circle moves
# to the right", seed 0)
DEMO_MAGNITUDES = (
    (0.999, 2.27425), (0.982, 1.6813), (0.964, 1.36742), (0.944, 1.31575), (0.923, 1.21546),
    (0.9, 1.10637), (0.875, 1.07247), (0.848, 1.03451), (0.818, 1.01978), (0.786, 1.01954),
    (0.75, 1.01496), (0.71, 1.00785), (0.667, 1.02024), (0.618, 1.02468), (0.563, 1.01898),
    (0.5, 1.03402), (0.429, 1.0358), (0.347, 1.03049), (0.251, 1.05112), (0.138, 1.0544),
)

DEMO_FAMILY = Family(
    name="demo",
    dit_class=DemoDiT,
    vae_class=CompactVAE,
    tiny_dit=DEMO_DIT_TINY,
    tiny_vae=COMPACT_VAE_TINY,
    layouts={"cineforge": CINEFORGE_LAYOUT},
    pipeline=TextToVideo,
    text_encoder=MINILM,
)

DEMO = Preset(
    name="demo",
    summary="cineforge's own demo model (shapes world, 64x64, 17 frames; runs on a CPU)",
    family=DEMO_FAMILY,
    dit=DEMO_DIT,
    vae=DEMO_VAE,
    width=64,
    height=64,
    frames=17,
    fps=8,
    sampler=SamplerDefaults(steps=20, guidance=6.0, shift=3.0, frame_noise_share=0.5,
                            magnitudes=DEMO_MAGNITUDES),
    embedded="demo",
)

# The demo distilled to 4 steps without guidance: the sampler settings its student is trained
# for (configs/demo/flash.yaml, train.distill: the flash solver re-noises every step at
# sampling.flash_schedule(4, 2.0)); the same VAE and text encoder. Its weights are what that
# stage exports (--weights DIR); none ship yet.
DEMO_FLASH = dataclasses.replace(
    DEMO, name="demo-flash",
    summary="the demo distilled to 4 steps, no guidance (weights: configs/demo/flash.yaml)",
    sampler=SamplerDefaults(steps=4, guidance=1.0, shift=2.0, solver="flash",
                            frame_noise_share=0.5),
    embedded=None,
)
# The demo trained on to take a first frame (configs/demo/i2v.yaml, flow.first_frame: the
# first latent frame clean with time 0, as Wan 2.2 TI2V and Kandinsky 4.0's I2V): image-to-
# video, and text-to-video without an image; same sampler, VAE and text encoder. Its weights
# ship inside the package (cineforge/assets/demo-i2v, the stage's EMA export).
DEMO_I2V_FAMILY = dataclasses.replace(DEMO_FAMILY, name="demo-i2v", pipeline=TextImageToVideo)
DEMO_I2V = dataclasses.replace(
    DEMO, name="demo-i2v", family=DEMO_I2V_FAMILY,
    summary="the demo with a first frame: image-to-video (and text-to-video), 64x64",
    embedded="demo-i2v",
)
# The demo architecture at toy size, random weights (tests and CI; bring your own weights).
DEMO_TINY = dataclasses.replace(
    DEMO, name="demo-tiny", summary="the demo architecture at toy size (tests; your weights)",
    dit=DEMO_DIT_TINY, vae=COMPACT_VAE_TINY, height=32, width=32, frames=9,
    sampler=SamplerDefaults(steps=4, guidance=6.0, shift=3.0), embedded=None,
)

DEMO_I2V_TINY = dataclasses.replace(
    DEMO_TINY, name="demo-i2v-tiny", family=DEMO_I2V_FAMILY,
    summary="the demo's image-to-video architecture at toy size (tests; your weights)",
    dit=dataclasses.replace(DEMO_DIT_TINY, text_len=DEMO_DIT.text_len),  # the shapes captions
)

PRESETS = (DEMO, DEMO_FLASH, DEMO_I2V, DEMO_TINY, DEMO_I2V_TINY)
