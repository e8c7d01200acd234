"""The demo's DiT: Wan's DiT plus a learned position table and a pooled caption, both through
``WanDiT.extra_terms``; with neither it is Wan's DiT exactly, packed or not."""

from __future__ import annotations

import dataclasses
import functools

import pytest
import torch
from torch import nn

from cineforge.errors import CineforgeError
from cineforge.families.demo.dit import DemoDiT, DemoDiTConfig, pool_text
from cineforge.families.wan.dit import WAN_DIT_TINY, WanDiT, pad_context
from packed_items import assert_packed_equals_per_item, gen, perturbed


def _config(**extension) -> DemoDiTConfig:
    return DemoDiTConfig(**{**dataclasses.asdict(WAN_DIT_TINY), **extension})


def _demo_and_wan(seed: int, **extension) -> tuple[DemoDiT, WanDiT]:
    """A tiny DemoDiT with ``extension`` (its init from ``seed``) and the WanDiT with the same
    weights minus the extension's; both output layers are randomised alike, so the
    zero-initialised head hides no difference."""
    model = DemoDiT(_config(**extension)).init_weights(gen(seed))
    plain = WanDiT(WAN_DIT_TINY)
    own = model.state_dict()
    plain.load_state_dict({k: own[k] for k in plain.state_dict()})
    for m in (model, plain):
        nn.init.normal_(m.head.head.weight, std=0.1, generator=gen(seed + 1))
    return model.eval(), plain.eval()


def test_without_extensions_it_is_wan_exactly():
    """``position_table=()`` and ``pooled_text=False``: the same parameters as WanDiT and the
    same outputs bit for bit, per batch and packed; neither model adds an extra term."""
    model, plain = _demo_and_wan(3)
    assert model.state_dict().keys() == plain.state_dict().keys()
    g = gen(4)
    x, context = torch.randn(2, 16, 3, 8, 12, generator=g), torch.randn(2, 5, 32, generator=g)
    latents, t, contexts = [x[0], x[1, :, :1]], torch.tensor([0.2, 0.7]), list(context)
    with torch.no_grad():
        assert plain.extra_terms([(3, 4, 6)], context) == (0.0, None)
        assert model.extra_terms([(3, 4, 6)], context) == (0.0, None)
        out = model(x, 0.6, context)
        assert out.abs().max() > 0.5  # a real signal
        assert torch.equal(out, plain(x, 0.6, context))
        for a, b in zip(model.forward_packed(latents, t, contexts),
                        plain.forward_packed(latents, t, contexts), strict=True):
            assert torch.equal(a, b)


def test_position_table_gives_each_token_its_own_vector():
    """``position_table``: token (f, y, x) of any grid that fits gets table[f, y, x] added
    to its patch embedding; a larger grid is refused with the table's size in the message."""
    model, plain = _demo_and_wan(7, position_table=(3, 4, 6))
    table = model.pos_table.detach()
    assert 0.2 < table.std() < 0.4
    g = gen(9)
    x, context = torch.randn(2, 16, 3, 8, 12, generator=g), torch.randn(2, 5, 32, generator=g)
    term, time_term = model.extra_terms([(3, 4, 6), (1, 2, 3)], context)
    assert term.shape == (1, 78, 32) and time_term is None
    torch.testing.assert_close(term[0, :72], table.reshape(72, -1), rtol=0, atol=0)
    torch.testing.assert_close(term[0, 72:], table[0, :2, :3].reshape(6, -1), rtol=0, atol=0)
    with torch.no_grad():
        assert (model(x, 0.6, context) - plain(x, 0.6, context)).abs().max() > 1e-2
        nn.init.zeros_(model.pos_table)
        assert torch.equal(model(x, 0.6, context), plain(x, 0.6, context))
        with pytest.raises(CineforgeError, match=r"larger than this model's position table "
                                                 r"\(3, 4, 6\)"):
            model(torch.randn(1, 16, 4, 8, 12), 0.6, context[:1])
    with pytest.raises(ValueError, match="position_table"):
        _config(position_table=(3, 4))


def test_pooled_text_adds_the_mean_text_state_to_the_time_embedding():
    """``pooled_text``: a fresh model equals Wan's (zero output layer); trained, it adds
    ``MLP(mean of the non-padding text rows)`` to e, so zero padding does not change it."""
    model, plain = _demo_and_wan(10, pooled_text=True)
    g = gen(12)
    x, context = torch.randn(2, 16, 3, 8, 12, generator=g), torch.randn(2, 5, 32, generator=g)
    padded = pad_context(context, WAN_DIT_TINY.text_len)
    with torch.no_grad():
        assert torch.equal(model(x, 0.6, padded), plain(x, 0.6, padded))
        nn.init.normal_(model.text_pool_embedding[2].weight, std=0.5, generator=gen(13))
        assert (model(x, 0.6, padded) - plain(x, 0.6, padded)).abs().max() > 1e-2
        pooled = pool_text(padded)
        torch.testing.assert_close(pooled, context.mean(1), rtol=0, atol=1e-6)
        token_term, time_term = model.extra_terms([(3, 4, 6)] * 2, padded)
        assert token_term == 0.0
        want = model.text_pool_embedding(context.mean(1))
        torch.testing.assert_close(time_term, want)
        t = torch.full((2,), 0.6)
        e, _ = model._time_embedding(t)
        e_text, _ = model._time_embedding(t, time_term)
        torch.testing.assert_close(e_text - e, want)


@functools.cache
def _perturbed(table: tuple[int, ...], pooled: bool, field: bool) -> DemoDiT:
    return perturbed(DemoDiT(_config(position_table=table, pooled_text=pooled,
                                     position_field=field)))


@pytest.mark.parametrize(("table", "pooled", "field"),
                         [((5, 4, 6), False, False), ((), True, False), ((), False, True)],
                         ids=["position_table", "pooled_text", "position_field"])
@pytest.mark.parametrize("pad", [True, False], ids=["padded_text", "trimmed_text"])
def test_forward_packed_equals_forward_per_item(pad, table, pooled, field):
    """Each extension's terms follow their item in a pack (the packed items' token grids
    all fit a (5, 4, 6) table): packed == per-item forward."""
    assert_packed_equals_per_item(_perturbed(table, pooled, field), pad)


def test_position_field_fitted_to_a_table_reproduces_the_table_model_at_any_grid():
    """A table model's weights start a field model (``adapt_init_weights`` fits the field to
    the table): same output on the table's grid; the field model also runs at a larger grid,
    where the table model refuses."""
    from cineforge.families.demo.dit import PositionField

    table_model, _ = _demo_and_wan(7, position_table=(3, 4, 6))
    field_model = DemoDiT(_config(position_field=True)).init_weights(gen(8)).eval()
    weights = field_model.adapt_init_weights(table_model.state_dict())
    assert "pos_table" not in weights and "pos_field.mlp.0.weight" in weights
    field_model.load_state_dict(weights)
    g = gen(9)
    x, context = torch.randn(2, 16, 3, 8, 12, generator=g), torch.randn(2, 5, 32, generator=g)
    with torch.no_grad():
        field = field_model.pos_field((3, 4, 6))
        table = table_model.pos_table.reshape(72, -1)
        assert ((field - table).norm() / table.norm()) < 1e-3
        want = table_model(x, 0.6, context)
        torch.testing.assert_close(field_model(x, 0.6, context), want, rtol=0,
                                   atol=1e-3 * want.abs().max().item())
        big = torch.randn(1, 16, 5, 16, 20, generator=g)
        assert field_model(big, 0.6, context[:1]).isfinite().all()
        with pytest.raises(CineforgeError, match="larger than this model's position table"):
            table_model(big, 0.6, context[:1])

    # features: sin / cos (pi k p) of each axis's cell centres p = (i + 1/2) / n
    f = PositionField(8, frequencies=2)
    feats = f.features((1, 2, 4))
    assert feats.shape == (8, 12)
    k = torch.tensor([1.0, 2.0]) * torch.pi
    col = torch.tensor(2.5 / 4) * k  # token (0, 1, 2): column 2 of 4
    torch.testing.assert_close(feats[1 * 4 + 2, 8:], torch.cat([col.sin(), col.cos()]))
    row = torch.tensor(1.5 / 2) * k
    torch.testing.assert_close(feats[1 * 4 + 2, 4:8], torch.cat([row.sin(), row.cos()]))

    # weights that are already a field's, or a model without a field: passed through
    assert field_model.adapt_init_weights(weights) is weights
    plain_weights = table_model.state_dict()
    assert table_model.adapt_init_weights(plain_weights) is plain_weights
    with pytest.raises(ValueError, match="set one of them"):
        _config(position_table=(3, 4, 6), position_field=True)


def test_coarse_patch_weights_start_a_finer_patch_model():
    """Patch (1, 2, 2) weights start a patch (1, 1, 1) model (``adapt_init_weights``): on a
    latent repeated 2x2 (each coarse cell filled with one value per channel), every fine
    token embeds as its coarse token does; the fine head gives the mean of the coarse head's
    four sub-positions; all other weights load unchanged. A patch that is not a divisor of
    the weights' patch is refused."""
    coarse = DemoDiT(_config(pooled_text=True)).init_weights(gen(3))
    nn.init.normal_(coarse.head.head.weight, std=0.1, generator=gen(4))
    nn.init.normal_(coarse.head.head.bias, std=0.1, generator=gen(5))
    fine = DemoDiT(_config(pooled_text=True, patch_size=(1, 1, 1), rope_step=(1.0, 0.5, 0.5)))
    weights = fine.adapt_init_weights(coarse.state_dict())
    fine.load_state_dict(weights)  # strict: every key, every shape
    for key, value in coarse.state_dict().items():
        if not key.startswith(("patch_embedding.weight", "head.head.")):
            assert torch.equal(weights[key], value), key
    g = gen(6)
    cells = torch.randn(2, 16, 3, 4, 6, generator=g)
    x = cells.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)  # 2, 16, 3, 8, 12
    with torch.no_grad():
        want = coarse._patchify(x).view(2, 3, 4, 1, 6, 1, -1).expand(2, 3, 4, 2, 6, 2, -1)
        torch.testing.assert_close(fine._patchify(x), want.reshape(2, 3 * 8 * 12, -1))
        tokens, e = torch.randn(2, 7, 32, generator=g), torch.randn(2, 1, 32, generator=g)
        sub = coarse.head(tokens, e).view(2, 7, 2, 2, 16).mean(dim=(2, 3))
        torch.testing.assert_close(fine.head(tokens, e), sub)
    odd = DemoDiT(_config(patch_size=(1, 3, 3)))
    with pytest.raises(CineforgeError, match="not a multiple"):
        odd.adapt_init_weights(coarse.state_dict())


def test_trainer_starts_a_field_model_from_a_table_models_weights(tmp_path):
    """``Trainer.initialise`` lets the model adapt an earlier design's weights: a table
    model's file starts a field model whose field gives the table's vectors."""
    from types import SimpleNamespace

    from safetensors.torch import save_file

    from cineforge.train.config import load_config
    from cineforge.train.loop import Trainer
    from train_runs import CONFIGS

    table_model, _ = _demo_and_wan(7, position_table=(3, 4, 6))
    save_file({k: v.contiguous() for k, v in table_model.state_dict().items()},
              tmp_path / "dit.safetensors")
    field_model = DemoDiT(_config(position_field=True)).init_weights(gen(8))
    config = load_config(CONFIGS / "tiny_dit.yaml", [f"out={tmp_path / 'run'}"])
    trainer = Trainer(config, SimpleNamespace(model=field_model, name="dit"), tmp_path / "run")
    trainer.initialise(tmp_path / "dit.safetensors")
    with torch.no_grad():
        field, table = field_model.pos_field((3, 4, 6)), table_model.pos_table.reshape(72, -1)
        assert ((field - table).norm() / table.norm()) < 1e-3
        assert torch.equal(field_model.blocks[0].self_attn.q.weight,
                           table_model.blocks[0].self_attn.q.weight)
