"""The Predictor: cropping to the core, nodata, and the CUDA path where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fcnrs.fcn_model import load_checkpoint
from fcnrs.pipeline.inference import Predictor


def batch(n: int = 2, size: int = 96) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    valid = np.ones((n, size, size), dtype=bool)
    valid[:, :10, :] = False
    return {
        "image": rng.normal(0, 1, (n, 3, size, size)).astype(np.float32),
        "valid": valid,
        "core": np.array([[5, 7, 64, 70]] * n),
    }


def test_labels_are_cropped_to_the_core_with_nodata_where_invalid(make_checkpoint):
    predictor = Predictor(make_checkpoint(logit_scale=100.0), probabilities=True)
    b = batch()
    out = predictor(b)
    assert out["labels"].shape == (2, 64, 70) and out["labels"].dtype == np.uint8
    assert (out["labels"][:, :5] == 255).all() and (out["labels"][:, 5:] < 4).all()
    assert out["probabilities"].shape == (2, 4, 64, 70)
    with torch.inference_mode():
        x = torch.from_numpy(b["image"]).to(predictor.dtype)
        full = predictor.model(x.contiguous(memory_format=torch.channels_last))
        full = full.float().argmax(1).numpy()
    np.testing.assert_array_equal(out["labels"][:, 5:], full[:, 10:69, 7:77])


@pytest.mark.gpu
def test_cuda_labels_match_cpu(make_checkpoint):
    ckpt = make_checkpoint(logit_scale=100.0)
    cpu = Predictor(ckpt, device="cpu")(batch())["labels"]
    gpu = Predictor(ckpt, device="cuda")(batch())["labels"]
    assert (cpu == gpu).mean() > 0.999


def test_auto_precision_follows_the_cpu_flags():
    from fcnrs.pipeline.inference import cpu_has_fast_bf16, resolve_precision

    assert cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512_bf16 amx_tile")
    assert cpu_has_fast_bf16("flags : fpu avx512f amx_bf16 amx_tile")
    assert not cpu_has_fast_bf16("flags : fpu sse avx2 avx512f avx512bw")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("auto", "cpu") == ("bf16" if cpu_has_fast_bf16() else "fp32")


def test_channels_last_bf16_labels_agree_with_plain_fp32(make_checkpoint):
    """The fast path (channels-last, bf16 where the CPU has it) labels like the plain
    fp32 network on a checkpoint with decisive logits."""
    ckpt = make_checkpoint(logit_scale=50.0)
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(2, 3, 192, 160)).astype(np.float32),
        "valid": np.ones((2, 192, 160), bool),
        "core": np.array([[32, 32, 128, 96]] * 2),
    }
    net, _ = load_checkpoint(ckpt)
    with torch.inference_mode():
        plain = net.eval()(torch.from_numpy(batch["image"])).argmax(1).numpy()
    fast = Predictor(ckpt, device="cpu", precision="auto")(batch)["labels"]
    assert (fast == plain[:, 32:160, 32:128]).mean() > 0.99
