"""Shapes, parameter counts, bilinear upsampling and stride-32 alignment of the FCNs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnrs.fcn_model import FCN2s, FCN4s, FCN8s, FCN16s, FCN32s, bilinear_kernel, build_model
from fcnrs.fcn_model.network import Upsample


def test_fcn8s_parameter_count_matches_the_paper():
    model = FCN8s(21, in_channels=3, width=1.0)
    counts = {
        "trunk": sum(p.numel() for n, p in model.named_parameters() if n.startswith("conv")),
        "fc6": sum(p.numel() for p in model.fc6.parameters()),
        "fc7": sum(p.numel() for p in model.fc7.parameters()),
        "total": sum(p.numel() for p in model.parameters()),
    }
    assert counts == {
        "trunk": 14_714_688,
        "fc6": 102_764_544,
        "fc7": 16_781_312,
        "total": 134_489_759,
    }
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        assert getattr(model, name).bias is None


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {
        cls.__name__: cls(4, in_channels=5, width=0.125).eval()
        for cls in (FCN8s, FCN16s, FCN32s, FCN4s, FCN2s)
    }


@settings(max_examples=25, deadline=None)
@given(height=st.integers(1, 200), width=st.integers(1, 200))
def test_output_has_the_input_height_and_width(small_models, height, width):
    x = torch.randn(1, 5, height, width)
    with torch.inference_mode():
        for model in small_models.values():
            assert model(x).shape == (1, 4, height, width)


@settings(max_examples=20, deadline=None)
@given(
    factor=st.sampled_from([2, 8, 16, 32]),
    value=st.floats(-100, 100, allow_nan=False),
    cells=st.integers(3, 7),
)
def test_bilinear_upsampler_maps_a_constant_to_the_same_constant(factor, value, cells):
    up = Upsample(3, factor)
    x = torch.full((1, 3, cells, cells), value)
    with torch.no_grad():
        y = up(x)
    assert y.shape[-1] == cells * factor
    # Away from the edges (where the kernel runs off the map) every output is the constant.
    inner = y[..., factor:-factor, factor:-factor]
    torch.testing.assert_close(inner, torch.full_like(inner, value), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_upsampler_is_aligned_with_the_finer_grid(factor):
    """A coarse cell i is centred on fine pixel f*i + (f-1)/2: a ramp over cells must
    come out as the same ramp over fine pixels, value (o - (f-1)/2) / f at pixel o."""
    cells = 6
    ramp = torch.arange(cells, dtype=torch.float32)
    x = ramp.view(1, 1, 1, cells).expand(1, 1, cells, cells).contiguous()
    with torch.no_grad():
        y = Upsample(1, factor)(x)[0, 0, cells * factor // 2]
    o = torch.arange(cells * factor, dtype=torch.float32)
    expected = (o - (factor - 1) / 2) / factor
    inner = slice(factor, -factor)
    torch.testing.assert_close(y[inner], expected[inner], atol=1e-5, rtol=0)


def test_bilinear_kernel_matches_reference_filter():
    k = bilinear_kernel(2, 4)
    assert torch.allclose(k[0, 0, 0], torch.tensor([0.0625, 0.1875, 0.1875, 0.0625]))
    assert torch.all(k[0, 1] == 0) and torch.all(k[1, 0] == 0)


def test_upsampling_is_frozen_by_default_and_learnable_on_request():
    frozen = FCN8s(3, width=0.125)
    learn = FCN8s(3, width=0.125, learnable_upsampling=True)
    assert not frozen.upscore8.weight.requires_grad
    assert learn.upscore8.weight.requires_grad
    assert frozen.conv1_1.weight.requires_grad


def test_skip_scaling_scales_pool_features_as_the_reference():
    torch.manual_seed(1)
    plain = FCN8s(3, width=0.125).eval()
    scaled = FCN8s(3, width=0.125, skip_scaling=True).eval()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        feats = plain.forward_features(x)
        a = plain._skip(feats, "pool3")
        b = scaled._skip(feats, "pool3")
    bias = plain.score_pool3.bias.view(1, -1, 1, 1)
    torch.testing.assert_close((b - bias), (a - bias) * 1e-4, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("variant", ["FCN8s", "FCN2s"])
def test_shifting_the_input_by_the_stride_shifts_the_labels(small_models, variant):
    """Tiling relies on this: a 32-px shift of the input shifts the output by 32 px
    away from the borders (any other shift changes the pooling phase)."""
    torch.manual_seed(2)
    model = small_models[variant]
    # fc6's 7x7 at stride 32 gives a receptive field of about 400 px: keep the
    # compared core more than 300 px from every border.
    x = torch.randn(1, 5, 704, 704)
    with torch.inference_mode():
        whole = model(x)
        shifted = model(x[..., 32:, 32:])
    core = (slice(None), slice(None), slice(320, 384), slice(320, 384))
    shifted_core = (slice(None), slice(None), slice(288, 352), slice(288, 352))
    torch.testing.assert_close(shifted[shifted_core], whole[core], atol=1e-4, rtol=1e-4)
    # Off the stride the pooling phase changes and so do the scores.
    with torch.inference_mode():
        off = model(x[..., 16:, 16:])
    off_core = (slice(None), slice(None), slice(304, 368), slice(304, 368))
    assert (off[off_core] - whole[core]).abs().max() > 1e-3


def test_build_model_rejects_unknown_variant():
    with pytest.raises(ValueError, match="fcn1s"):
        build_model("fcn1s", num_classes=2)


@pytest.mark.parametrize(
    ("variant", "upsamplers"),
    [
        ("fcn32s", {"upscore": 32}),
        ("fcn16s", {"upscore2": 2, "upscore16": 16}),
        ("fcn8s", {"upscore2": 2, "upscore_pool4": 2, "upscore8": 8}),
        ("fcn4s", {"upscore2": 2, "upscore_pool4": 2, "upscore_pool3": 2, "upscore4": 4}),
        (
            "fcn2s",
            {
                "upscore2": 2,
                "upscore_pool4": 2,
                "upscore_pool3": 2,
                "upscore_pool2": 2,
                "upscore_pool1": 2,
            },
        ),
    ],
)
def test_skip_chain_layers_and_factors(variant, upsamplers):
    """The reference's layer names for the paper's variants (checkpoints rely on
    them), and a x2 step per finer skip down to pool1 for FCN-4s/2s."""
    model = build_model(variant, num_classes=3, width=0.125)
    found = {n: m.factor for n, m in model.named_modules() if isinstance(m, Upsample)}
    assert found == upsamplers
    skips = {n for n, _ in model.named_children() if n.startswith("score_pool")}
    assert skips == {f"score_{s}" for s in model.skips}
    # The fine skip sees the pool's channels: pool1 of width 0.125 has 8.
    if variant == "fcn2s":
        assert model.score_pool1.in_channels == 8


def test_forward_rejects_wrong_band_count():
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        FCN8s(2, width=0.125)(torch.zeros(1, 4, 8, 8))


def test_width_quarter_keeps_a_quarter_of_channels():
    model = FCN8s(2, in_channels=13, width=0.25)
    assert model.conv1_1.weight.shape == (16, 13, 3, 3)
    assert model.conv5_3.weight.shape == (128, 128, 3, 3)
    assert model.fc6.weight.shape == (1024, 128, 7, 7)
    assert model.fc7.weight.shape == (1024, 1024, 1, 1)
