"""Named presets: an official release name -> model configs, sampler defaults, weight source.

Presets are data. A variant is ``dataclasses.replace`` of another, never a re-typed block.
A preset's ``family`` selects the file layouts (``cineforge.weights.loader``) and the
pipeline (``cineforge.pipelines.select``); its configs' types select the model classes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cineforge.errors import CineforgeError
from cineforge.models.compact_vae import CompactVAEConfig
from cineforge.models.flux_vae import FLUX_VAE, FluxVAEConfig
from cineforge.models.hunyuan_vae import HUNYUAN_VAE, HunyuanVAEConfig
from cineforge.models.kandinsky5_dit import (
    K5_DIT_IMAGE_LITE,
    K5_DIT_VIDEO_LITE,
    K5_DIT_VIDEO_PRO,
    Kandinsky5DiTConfig,
)
from cineforge.models.wan_dit import WAN_DIT_1_3B, WAN_DIT_14B, WAN_DIT_TINY, WanDiTConfig
from cineforge.models.wan_vae import WAN_VAE_2_1, WAN_VAE_TINY, WanVAEConfig

DiTConfig = WanDiTConfig | Kandinsky5DiTConfig
VAEConfig = WanVAEConfig | HunyuanVAEConfig | FluxVAEConfig | CompactVAEConfig


@dataclass(frozen=True)
class SamplerDefaults:
    steps: int
    guidance: float
    shift: float
    solver: str = "unipc"
    negative: str = ""
    frame_noise_share: float = 0.0  # the model's training noise: sampling.frame_noise


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    family: str  # selects key maps and file layouts (cineforge.weights.loader), the pipeline
    dit: DiTConfig
    vae: VAEConfig
    text_encoder: str  # a key of TEXT_ENCODER_DIMS
    width: int
    height: int
    frames: int
    fps: int
    sampler: SamplerDefaults
    hub_repo: str | None = None  # official release (the layout its files follow)
    diffusers_repo: str | None = None  # the same weights in diffusers layout
    embedded: str | None = None  # weights ship inside the package: cineforge/assets/<name>
    text_len: int | None = None  # text tokens the encoder gives (default: the DiT's text_len)
    dit_file: str | None = None  # official layout: the DiT's file stem under model/ (Kandinsky)
    vae_repo: str | None = None  # hub repo of the VAE when the release takes it from elsewhere
    text_repos: tuple[str, ...] = ()  # hub ids of the text encoders, same reason

    def __post_init__(self) -> None:
        if self.width % 16 or self.height % 16 or (self.frames - 1) % 4:
            raise ValueError(f"preset {self.name}: default size/frames violate 16 / 4k+1")
        if self.text_encoder not in TEXT_ENCODER_DIMS:
            raise ValueError(f"preset {self.name}: unknown text encoder {self.text_encoder!r}")
        if self.dit.text_dim != TEXT_ENCODER_DIMS[self.text_encoder]:
            raise ValueError(f"preset {self.name}: DiT text_dim != {self.text_encoder} width")
        pooled = POOLED_DIMS.get(self.text_encoder)
        if pooled is not None and getattr(self.dit, "pooled_dim", None) != pooled:
            raise ValueError(f"preset {self.name}: DiT pooled_dim != {pooled}")
        if self.max_text_len is None:
            raise ValueError(f"preset {self.name}: text_len is needed for this DiT")

    @property
    def max_text_len(self) -> int | None:
        return self.text_len if self.text_len is not None else getattr(self.dit, "text_len", None)


TEXT_ENCODER_DIMS = {"umt5-xxl": 4096, "minilm": 384, "qwen2.5-vl+clip-l": 3584}
POOLED_DIMS = {"qwen2.5-vl+clip-l": 768}

# Wan 2.1's recommended negative prompt is long and Chinese; this is our short English one.
WAN_NEGATIVE = (
    "blurry, low quality, worst quality, static, still picture, overexposed, jpeg artifacts, "
    "deformed, distorted, subtitles, watermark, messy background"
)

WAN21_T2V_1_3B = Preset(
    name="wan2.1-t2v-1.3b",
    summary="Wan 2.1 text-to-video 1.3B, 480p",
    family="wan2.1",
    dit=WAN_DIT_1_3B,
    vae=WAN_VAE_2_1,
    text_encoder="umt5-xxl",
    width=832,
    height=480,
    frames=81,
    fps=16,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=3.0, negative=WAN_NEGATIVE),
    hub_repo="Wan-AI/Wan2.1-T2V-1.3B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
)

WAN21_T2V_14B = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-14b",
    summary="Wan 2.1 text-to-video 14B, 720p",
    dit=WAN_DIT_14B,
    width=1280,
    height=720,
    sampler=dataclasses.replace(WAN21_T2V_1_3B.sampler, shift=5.0),
    hub_repo="Wan-AI/Wan2.1-T2V-14B",
    diffusers_repo="Wan-AI/Wan2.1-T2V-14B-Diffusers",
)

# Random-weight sized for tests and CI: the Wan architecture at toy width, fed by the
# embedded MiniLM text encoder so the whole CLI path runs offline in well under a second.
WAN21_T2V_TINY = dataclasses.replace(
    WAN21_T2V_1_3B,
    name="wan2.1-t2v-tiny",
    summary="Wan 2.1 architecture at toy size (tests; bring your own weights)",
    dit=dataclasses.replace(WAN_DIT_TINY, text_dim=384, text_len=77),
    vae=WAN_VAE_TINY,
    text_encoder="minilm",
    width=64,
    height=64,
    frames=9,
    sampler=SamplerDefaults(steps=4, guidance=5.0, shift=3.0),
    hub_repo=None,
    diffusers_repo=None,
)

# Kandinsky 5 (kandinskylab/kandinsky-5). Sampler settings from the release: steps and
# guidance from configs/k5_*.yaml (model.num_steps, model.guidance_weight); shift from the
# config's metrics.scheduler_scale where it has one (10 s: 10, distilled 5 s: 5), else the
# release pipelines' defaults (Kandinsky5T2VPipeline: 10.0, Kandinsky5T2IPipeline: 3.0).
# Size: the pipelines' defaults (768x512 video, 1024x1024 image); frames: seconds * 24 + 1.
# Files: the release repo holds model/<dit_file>.safetensors; its code takes the VAE from
# vae_repo (folder vae/, diffusers format) and the text encoders from text_repos.
K5_NEGATIVE = (
    "Static, 2D cartoon, cartoon, 2d animation, paintings, images, worst quality, low quality, "
    "ugly, deformed, walking backwards"
)
K5_TEXT_REPOS = ("Qwen/Qwen2.5-VL-7B-Instruct", "openai/clip-vit-large-patch14")
K5_HUB = "kandinskylab/Kandinsky-5.0-"

K5_T2V_LITE = Preset(
    name="kandinsky5-t2v-lite",
    summary="Kandinsky 5.0 Video Lite 2B text-to-video, SFT, 5 s at 512 px",
    family="kandinsky5",
    dit=K5_DIT_VIDEO_LITE,
    vae=HUNYUAN_VAE,
    text_encoder="qwen2.5-vl+clip-l",
    width=768,
    height=512,
    frames=121,
    fps=24,
    sampler=SamplerDefaults(steps=50, guidance=5.0, shift=10.0, solver="euler",
                            negative=K5_NEGATIVE),
    hub_repo=K5_HUB + "T2V-Lite-sft-5s",
    diffusers_repo=K5_HUB + "T2V-Lite-sft-5s-Diffusers",
    text_len=256,
    dit_file="kandinsky5lite_t2v_sft_5s",
    vae_repo="hunyuanvideo-community/HunyuanVideo",
    text_repos=K5_TEXT_REPOS,
)


def _k5_variant(base: Preset, name: str, tag: str, summary: str, **changes) -> Preset:
    """A Kandinsky 5 video release: ``tag`` (e.g. ``sft-10s``) names its repos and DiT file."""
    kind = "Pro" if base.dit is K5_DIT_VIDEO_PRO else "Lite"
    fields = dict(
        hub_repo=f"{K5_HUB}T2V-{kind}-{tag}",
        diffusers_repo=f"{K5_HUB}T2V-{kind}-{tag}-Diffusers",
        dit_file=f"kandinsky5{kind.lower()}_t2v_{tag.replace('-', '_')}",
    )
    return dataclasses.replace(base, name=name, summary=summary, **{**fields, **changes})


_NOCFG = dataclasses.replace(K5_T2V_LITE.sampler, guidance=1.0, negative="")
# The 10 s configs run NABLA (P 0.9, sliding-tile window 11x3x3: the "nabla" backend's
# defaults); the 5 s ones dense attention.
_NABLA_LITE = dataclasses.replace(K5_DIT_VIDEO_LITE, attention="nabla")

K5_T2V_LITE_10S = _k5_variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-10s", "sft-10s",
    "Kandinsky 5.0 Video Lite, SFT, 10 s (NABLA attention)", frames=241, dit=_NABLA_LITE)
K5_T2V_LITE_NOCFG = _k5_variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-nocfg", "nocfg-5s",
    "Kandinsky 5.0 Video Lite, CFG-distilled (guidance 1), 5 s", sampler=_NOCFG)
K5_T2V_LITE_NOCFG_10S = _k5_variant(
    K5_T2V_LITE_10S, "kandinsky5-t2v-lite-nocfg-10s", "nocfg-10s",
    "Kandinsky 5.0 Video Lite, CFG-distilled, 10 s", sampler=_NOCFG)
K5_T2V_LITE_DISTILL = _k5_variant(
    K5_T2V_LITE, "kandinsky5-t2v-lite-distill", "distilled16steps-5s",
    "Kandinsky 5.0 Video Lite, distilled to 16 steps, 5 s",
    sampler=dataclasses.replace(_NOCFG, steps=16, shift=5.0))
K5_T2V_LITE_DISTILL_10S = _k5_variant(
    K5_T2V_LITE_10S, "kandinsky5-t2v-lite-distill-10s", "distilled16steps-10s",
    "Kandinsky 5.0 Video Lite, distilled to 16 steps, 10 s",
    sampler=dataclasses.replace(_NOCFG, steps=16))
K5_T2V_PRO = _k5_variant(
    dataclasses.replace(K5_T2V_LITE, dit=K5_DIT_VIDEO_PRO), "kandinsky5-t2v-pro", "sft-5s",
    "Kandinsky 5.0 Video Pro 19B text-to-video, SFT, 5 s at 512 px")
K5_T2V_PRO_10S = _k5_variant(  # diffusers lists no Pro 10 s conversion
    K5_T2V_PRO, "kandinsky5-t2v-pro-10s", "sft-10s",
    "Kandinsky 5.0 Video Pro, SFT, 10 s (NABLA attention)", frames=241,
    dit=dataclasses.replace(K5_DIT_VIDEO_PRO, attention="nabla"), diffusers_repo=None)

K5_T2I_LITE = dataclasses.replace(
    K5_T2V_LITE,
    name="kandinsky5-t2i-lite",
    summary="Kandinsky 5.0 Image Lite 6B text-to-image, 1024 px",
    family="kandinsky5-image",
    dit=K5_DIT_IMAGE_LITE,
    vae=FLUX_VAE,
    width=1024,
    height=1024,
    frames=1,
    sampler=SamplerDefaults(steps=50, guidance=3.5, shift=3.0, solver="euler"),
    hub_repo=K5_HUB + "T2I-Lite",
    diffusers_repo=K5_HUB + "T2I-Lite-sft-Diffusers",
    text_len=512,
    dit_file="kandinsky5lite_t2i",
    vae_repo="black-forest-labs/FLUX.1-dev",
)

# The shipped demo (``cineforge/assets/demo``, fp16): trained by this project on its own
# shapes world with configs/demo_vae.yaml, then the DiT in stages, each starting from the
# one before: demo_dit_p2.yaml (to its step 2000), demo_dit_p2s3.yaml, demo_dit_p2s3b.yaml,
# demo_dit_t.yaml (adds the position table; to its step 1000, raw weights), demo_dit_k.yaml
# (raw weights at its step 1000), demo_dit_w.yaml (EMA weights at its step 1500), then a
# shape curriculum: demo_dit_s.yaml (raw, step 800), demo_dit_v.yaml (raw, step 1000),
# demo_dit_s2.yaml (raw, step 400), demo_dit_v2.yaml (EMA weights at its step 500), then
# with the flow loss weighted towards objects: demo_dit_o.yaml (EMA, step 800),
# demo_dit_l.yaml (objects 1.25x larger; EMA, step 800), demo_dit_l2.yaml (EMA, step 1500),
# demo_dit_l3.yaml (EMA, step 2000), demo_dit_p3.yaml (adds the pooled caption to the time
# embedding; EMA, step 1500) and demo_dit_p4.yaml (EMA weights at its step 1500;
# docs/demo-training.md). The last stage's model config equals the JSON shipped beside the
# weights (tests/test_demo_model.py).
DEMO_DIT = dataclasses.replace(
    WAN_DIT_1_3B,
    dim=256,
    ffn_dim=1024,
    num_heads=4,
    num_layers=8,
    text_dim=384,
    patch_size=(1, 2, 2),
    text_len=64,
    abs_position_table=(5, 8, 8),  # learned per-token positions: 5 latent frames x 8 x 8
    pooled_text=True,  # the mean caption state also modulates every block
)
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
DEMO = Preset(
    name="demo",
    summary="cineforge's own demo model (shapes world, 64x64, 17 frames; runs on a CPU)",
    family="wan2.1",
    dit=DEMO_DIT,
    vae=DEMO_VAE,
    text_encoder="minilm",
    width=64,
    height=64,
    frames=17,
    fps=8,
    sampler=SamplerDefaults(steps=20, guidance=6.0, shift=3.0, frame_noise_share=0.5),
    embedded="demo",
)

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        DEMO, WAN21_T2V_1_3B, WAN21_T2V_14B, WAN21_T2V_TINY,
        K5_T2V_LITE, K5_T2V_LITE_10S, K5_T2V_LITE_NOCFG, K5_T2V_LITE_NOCFG_10S,
        K5_T2V_LITE_DISTILL, K5_T2V_LITE_DISTILL_10S, K5_T2V_PRO, K5_T2V_PRO_10S, K5_T2I_LITE,
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise CineforgeError(
            f"unknown preset {name!r}; run `cineforge presets` to list them ({', '.join(PRESETS)})"
        ) from None
