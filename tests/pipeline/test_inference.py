"""The Predictor: cropping to the core, nodata, and the CUDA path where there is one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
        full = predictor.model(torch.from_numpy(b["image"])).argmax(1).numpy()
    np.testing.assert_array_equal(out["labels"][:, 5:], full[:, 10:69, 7:77])


@pytest.mark.gpu
def test_cuda_labels_match_cpu(make_checkpoint):
    ckpt = make_checkpoint(logit_scale=100.0)
    cpu = Predictor(ckpt, device="cpu")(batch())["labels"]
    gpu = Predictor(ckpt, device="cuda")(batch())["labels"]
    assert (cpu == gpu).mean() > 0.999
