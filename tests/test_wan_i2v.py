"""Wan 2.1 image-to-video against diffusers' WanImageToVideoPipeline (with its CLIP vision
encoder), identical tiny weights; the shared image plumbing (``prepare_image``, ``image=``)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

from cineforge.errors import CineforgeError
from cineforge.families.family import Components
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT
from cineforge.families.wan.i2v import ImageToVideo
from cineforge.families.wan.i2v_keys import WAN_I2V_DIT_FROM_DIFFUSERS
from cineforge.families.wan.image_encoder import CLIP_MEAN, CLIP_STD, WanImageEncoder
from cineforge.families.wan.vae import WAN_VAE_TINY, WanVAE
from cineforge.families.wan.vae_keys import WAN_VAE_FROM_DIFFUSERS
from cineforge.pipelines.common import VideoRequest, prepare_image
from cineforge.weights.keymap import load_strict
from oracles import perturb, tiny_wan_vae

TEXT_LEN = 512  # diffusers splits image from text tokens at len - 512
CLIP_WIDTH, CLIP_TOKENS = 24, 17  # tiny CLIP: 32 x 32 frames, 8 x 8 patches -> 16 + 1
I2V_DIT_TINY = dataclasses.replace(WAN_DIT_TINY, in_channels=36, text_len=TEXT_LEN,
                                   image_dim=CLIP_WIDTH, image_tokens=CLIP_TOKENS)


def tiny_i2v_transformer(seed: int = 3, image_dim: int | None = CLIP_WIDTH):
    torch.manual_seed(seed)
    ref = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36,
        out_channels=16, text_dim=32, freq_dim=32, ffn_dim=64, num_layers=2,
        cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
        image_dim=image_dim, added_kv_proj_dim=None if image_dim is None else 32,
    )
    return perturb(ref, seed)


def tiny_clip(seed: int = 4) -> CLIPVisionModel:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=CLIP_WIDTH, intermediate_size=48, num_attention_heads=2,
                              num_hidden_layers=3, patch_size=8, image_size=32,
                              hidden_act="gelu")
    return CLIPVisionModel(config).eval()


def ours(transformer, vae, clip=None, dit_config=I2V_DIT_TINY) -> ImageToVideo:
    with torch.device("meta"):
        dit, our_vae = WanDiT(dit_config), WanVAE(WAN_VAE_TINY)
    load_strict(dit, WAN_I2V_DIT_FROM_DIFFUSERS.convert(transformer.state_dict()))
    load_strict(our_vae, WAN_VAE_FROM_DIFFUSERS.convert(vae.state_dict()))
    encoder = None if clip is None else WanImageEncoder(clip)
    return ImageToVideo(Components(dit.eval(), our_vae.eval(), text_encoder=None,
                                   image_encoder=encoder))


def random_image(seed: int, width: int = 32, height: int = 32) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def run_ours(pipe, cond, uncond, noise, request):
    image = pipe.first_frame(request, 1)
    for step in pipe.sample({"context": cond, **image},
                            None if uncond is None else {"context": uncond, **image}, noise,
                            steps=request.steps, guidance=request.guidance, shift=request.shift,
                            solver=request.solver):
        latents = step.x
    return ((pipe.decode(latents) + 1) / 2).permute(0, 2, 1, 3, 4)  # B, T, C, H, W in [0, 1]


def test_i2v_matches_diffusers_wan_image_to_video_pipeline():
    shift, steps, guidance = 3.0, 3, 5.0
    transformer, vae, clip = tiny_i2v_transformer(), tiny_wan_vae(), tiny_clip()
    processor = CLIPImageProcessor(do_resize=False, do_center_crop=False, image_mean=CLIP_MEAN,
                                   image_std=CLIP_STD)
    ref = WanImageToVideoPipeline(
        tokenizer=None, text_encoder=None, vae=vae, transformer=transformer,
        image_encoder=clip, image_processor=processor,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction",
                                          use_flow_sigmas=True, flow_shift=shift))
    ref.set_progress_bar_config(disable=True)
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(1, TEXT_LEN, 32, generator=g)
    uncond = torch.randn(1, TEXT_LEN, 32, generator=g)
    noise = torch.randn(1, 16, 2, 4, 4, generator=g)  # 5 frames of 32 x 32
    image = random_image(1)
    expected = ref(image=image, prompt_embeds=cond, negative_prompt_embeds=uncond,
                   latents=noise.clone(), num_inference_steps=steps, guidance_scale=guidance,
                   height=32, width=32, num_frames=5, output_type="pt").frames

    pipe = ours(transformer, vae, clip)
    request = VideoRequest(prompt="-", width=32, height=32, frames=5, steps=steps,
                           guidance=guidance, shift=shift, image=image)
    got = run_ours(pipe, cond, uncond, noise, request)
    err = (got - expected).abs().max().item()
    print(f"wan2.1 i2v parity: max abs diff {err:.2e}")
    assert err <= 1e-4, f"max abs diff {err:.2e}"
    assert expected.std() > 0.01
    # the image conditions the DiT through both paths: y (mask + latents) and CLIP states
    a, b = pipe.first_frame(request, 1), pipe.first_frame(
        dataclasses.replace(request, image=random_image(2)), 1)
    t = torch.tensor([0.5])
    base = pipe.dit(noise, t, cond, **a)
    assert (pipe.dit(noise, t, cond, y=b["y"], clip=a["clip"]) - base).abs().max() > 1e-3
    assert (pipe.dit(noise, t, cond, y=a["y"], clip=b["clip"]) - base).abs().max() > 1e-3


# ---------------------------------------------------------------- full-size key layouts


def _meta_diffusers_state(config) -> dict[str, torch.Tensor]:
    c = config
    with torch.device("meta"):
        ref = WanTransformer3DModel(
            patch_size=c.patch_size, num_attention_heads=c.num_heads,
            attention_head_dim=c.head_dim, in_channels=c.in_channels,
            out_channels=c.out_channels, text_dim=c.text_dim, freq_dim=c.freq_dim,
            ffn_dim=c.ffn_dim, num_layers=c.num_layers, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=c.eps, image_dim=c.image_dim,
            added_kv_proj_dim=None if c.image_dim is None else c.dim)
    return ref.state_dict()


@pytest.mark.parametrize("name", ["wan2.1-i2v-14b-480p", "wan2.1-i2v-14b-720p"])
def test_full_size_i2v_state_dicts_load_strictly(name):
    """The release's DiT keys and shapes (diffusers' and the official names, the latter also
    with ComfyUI's prefix) load strictly into the preset's DiT; the T2V map refuses them."""
    from cineforge.families.registry import get_preset
    from cineforge.families.wan.dit_keys import WAN_DIT_FROM_DIFFUSERS
    from cineforge.families.wan.i2v_keys import WAN_I2V_DIT_FROM_OFFICIAL
    from cineforge.families.wan.image_encoder import clip_vit_h14_config

    preset = get_preset(name)
    diffusers_state = _meta_diffusers_state(preset.dit)
    with torch.device("meta"):
        dit = WanDiT(preset.dit)
    load_strict(dit, WAN_I2V_DIT_FROM_DIFFUSERS.convert(diffusers_state))
    official = dict(dit.state_dict())
    assert {"img_emb.proj.4.bias", "blocks.39.cross_attn.norm_k_img.weight",
            "blocks.0.cross_attn.k_img.weight"} <= official.keys()
    for prefix in ("", "model.diffusion_model."):
        with torch.device("meta"):
            again = WanDiT(preset.dit)
        load_strict(again, WAN_I2V_DIT_FROM_OFFICIAL.convert(
            {prefix + k: v for k, v in official.items()}))
    with pytest.raises(CineforgeError, match="match no rule"):
        WAN_DIT_FROM_DIFFUSERS.convert(diffusers_state)
    count = sum(p.numel() for p in dit.parameters())
    with torch.device("meta"):
        clip = CLIPVisionModel(clip_vit_h14_config())
    clip_count = sum(p.numel() for p in clip.parameters())
    print(f"{name}: DiT {count:,} parameters, CLIP ViT-H/14 {clip_count:,}")
    assert dit.patch_embedding.weight.shape == (5120, 36, 1, 2, 2)
    assert 16.3e9 < count < 16.5e9 and 0.6e9 < clip_count < 0.65e9


# ---------------------------------------------------------------- image plumbing


def test_prepare_image_covers_and_centre_crops():
    image = Image.new("RGB", (60, 20), (0, 0, 255))
    image.paste((255, 0, 0), (15, 0, 45, 20))  # a red middle half
    frame, note = prepare_image(image, 32, 32)
    assert frame.shape == (1, 3, 32, 32) and note is not None and "60x20" in note
    assert frame[0, 0].min() > 0.9 and frame[0, 2].max() < -0.9  # the crop kept the middle
    same, none = prepare_image(torch.zeros(32, 32, 3, dtype=torch.uint8), 32, 32)
    assert none is None and torch.equal(same, -torch.ones(1, 3, 32, 32))
    wide, note = prepare_image(torch.rand(3, 16, 64) * 2 - 1, 32, 32)
    assert wide.shape == (1, 3, 32, 32) and note is not None
    with pytest.raises(CineforgeError, match="uint8 H, W, 3"):
        prepare_image(torch.zeros(2, 2), 32, 32)


def test_image_on_a_family_without_image_to_video_is_one_line(tmp_path, capsys):
    from cineforge.cli.main import main
    from cineforge.families.registry import get_preset

    preset = get_preset("wan2.1-t2v-tiny")
    with pytest.raises(CineforgeError, match="has no image-to-video; drop image") as error:
        preset.family.check_request(preset, preset.request("a", image=torch.zeros(3, 64, 64)))
    assert "\n" not in str(error.value)
    path = tmp_path / "first.png"
    Image.new("RGB", (64, 64)).save(path)
    code = main(["generate", "a cat", "--preset", "wan2.1-t2v-tiny", "--image", str(path),
                 "--weights", str(tmp_path), "--out", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "drop --image" in err and "\n" not in err
    i2v = get_preset("wan2.1-i2v-tiny")
    with pytest.raises(CineforgeError, match="give the first frame as image"):
        i2v.family.check_request(i2v, i2v.request("a"))


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """wan2.1-i2v-tiny in the cineforge layout, its tiny CLIP in image_encoder/."""
    from cineforge.families.family import save_components
    from cineforge.families.registry import get_preset

    preset = get_preset("wan2.1-i2v-tiny")
    torch.manual_seed(0)
    folder = save_components(tmp_path_factory.mktemp("i2v"), dit=perturb(WanDiT(preset.dit), 5),
                             vae=perturb(WanVAE(preset.vae), 6, scale=0.02))
    tiny_clip().save_pretrained(folder / "image_encoder")
    return folder


def test_api_image_argument_warns_once_about_the_size(tiny_weights):
    import cineforge

    pipe = cineforge.load_pipeline("wan2.1-i2v-tiny", tiny_weights, device="cpu")
    image = random_image(7, width=40, height=32)
    with pytest.warns(UserWarning, match="40x32: scaled to cover 32x32"):
        video = pipe("a cat", image=image, steps=1)
    assert video.frames.shape == (5, 32, 32, 3)
    with pytest.raises(CineforgeError, match="give the first frame as image"):
        pipe("a cat")


def test_cli_image_of_another_size_says_so_and_writes_the_video(tiny_weights, tmp_path, capsys):
    from cineforge.cli.main import main
    from cineforge.families.registry import get_preset
    from cineforge.io.video import read_video

    preset, folder = get_preset("wan2.1-i2v-tiny"), tiny_weights
    image = tmp_path / "first.png"
    random_image(3, width=48, height=40).save(image)
    out = tmp_path / "v.mp4"
    code = main(["generate", "a cat", "--preset", preset.name, "--weights", str(folder),
                 "--image", str(image), "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "48x40: scaled to cover 32x32 and centre-cropped" in captured.err
    frames, _ = read_video(out)
    assert frames.shape[:3] == (5, 32, 32)
