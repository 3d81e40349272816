"""Checkpoints: round trip, metadata, and clear failures on bad files."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fcnrs.fcn_model import (
    CheckpointError,
    FCN8s,
    FCN16s,
    HaloMeasurement,
    checkpoint_digest,
    load_checkpoint,
    read_meta,
    record_halo,
    save_checkpoint,
)


@pytest.fixture
def trained_like(tmp_path):
    torch.manual_seed(3)
    model = FCN16s(3, in_channels=4, width=0.125, skip_scaling=True).eval()
    with torch.no_grad():  # move off the initial state so a fresh build would differ
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = save_checkpoint(
        tmp_path / "model.safetensors",
        model,
        classes=["land", "water", "cloud"],
        bands=[4, 3, 2, 8],
        mean=[100.0, 200.0, 300.0, 400.0],
        std=[10.0, 20.0, 30.0, 40.0],
        colors=[(0, 128, 0), (0, 0, 255), (255, 255, 255)],
        provenance={"data": "unit test"},
    )
    return model, path


def test_round_trip_gives_identical_outputs(trained_like):
    model, path = trained_like
    loaded, meta = load_checkpoint(path)
    x = torch.randn(2, 4, 70, 45)
    with torch.inference_mode():
        assert torch.equal(model(x), loaded(x))
    assert type(loaded) is FCN16s and not loaded.training
    assert loaded.skip_scaling and loaded.width == 0.125
    assert meta.variant == "fcn16s"
    assert meta.bands == (4, 3, 2, 8)
    assert meta.classes == ("land", "water", "cloud")
    assert meta.colors == ((0, 128, 0), (0, 0, 255), (255, 255, 255))
    assert meta.mean == (100.0, 200.0, 300.0, 400.0) and meta.std[3] == 40.0
    assert meta.provenance["data"] == "unit test" and "created" in meta.provenance


def test_checkpoint_is_written_exactly_at_path_and_nowhere_else(trained_like, tmp_path):
    _, path = trained_like
    assert path == tmp_path / "model.safetensors" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert read_meta(path).num_classes == 3


def test_identity_is_the_weights_and_what_the_labels_mean_not_when_saved(trained_like, tmp_path):
    """Re-saving the same weights elsewhere, later, keeps the identity (so finished
    scenes stay skipped); a changed weight or class list does not."""
    model, path = trained_like
    meta = read_meta(path)
    kwargs = dict(
        classes=meta.classes, bands=meta.bands, mean=meta.mean, std=meta.std, colors=meta.colors
    )
    again = save_checkpoint(
        tmp_path / "again.safetensors", model, **kwargs, provenance={"created": "2031-01-01"}
    )
    assert read_meta(again).provenance != meta.provenance
    assert again.read_bytes() != path.read_bytes()  # the files differ ...
    assert checkpoint_digest(again) == checkpoint_digest(path)  # ... the model does not
    renamed = save_checkpoint(
        tmp_path / "renamed.safetensors", model, **{**kwargs, "classes": ("a", "b", "z")}
    )
    assert checkpoint_digest(renamed) != checkpoint_digest(path)
    with torch.no_grad():
        model.score_fr.weight[0, 0, 0, 0] += 1.0
    changed = save_checkpoint(tmp_path / "changed.safetensors", model, **kwargs)
    assert checkpoint_digest(again) != checkpoint_digest(changed)
    assert checkpoint_digest(path) != checkpoint_digest(changed)


def test_default_colours_are_distinct(tmp_path):
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        FCN8s(12, width=0.125),
        classes=[f"c{i}" for i in range(12)],
        bands=[1, 2, 3],
        mean=[0] * 3,
        std=[1] * 3,
    )
    colors = read_meta(path).colors
    assert len(colors) == 12 and len(set(colors)) == 12


def test_metadata_that_does_not_fit_the_model_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="2 class names for a 3-class model"):
        save_checkpoint(
            tmp_path / "m.safetensors",
            FCN8s(3, width=0.125),
            classes=["a", "b"],
            bands=[1, 2, 3],
            mean=[0] * 3,
            std=[1] * 3,
        )
    with pytest.raises(CheckpointError, match="std must be positive"):
        save_checkpoint(
            tmp_path / "m.safetensors",
            FCN8s(2, width=0.125),
            classes=["a", "b"],
            bands=[1, 2, 3],
            mean=[0] * 3,
            std=[1, 0, 1],
        )
    assert not any(tmp_path.iterdir())


def test_a_file_that_is_not_a_checkpoint_fails_naming_it(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint"):
        load_checkpoint(text)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=r"foreign\.safetensors: .*not a checkpoint of this"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_a_truncated_checkpoint_fails_naming_it(trained_like, tmp_path):
    _, path = trained_like
    data = path.read_bytes()
    for cut in (len(data) // 2, 20, len(data) - 1):
        broken = tmp_path / f"cut{cut}.safetensors"
        broken.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=rf"cut{cut}\.safetensors"):
            load_checkpoint(broken)


def test_weights_that_disagree_with_metadata_fail(trained_like, tmp_path):
    model, path = trained_like
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    meta = json.loads(header["meta"])
    meta["classes"] = ["a", "b", "c", "d"]
    meta["colors"] = [[0, 0, 0]] * 4
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    lying = tmp_path / "lying.safetensors"
    save_file(state, lying, metadata={**header, "meta": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=r"lying\.safetensors: weights do not fit"):
        load_checkpoint(lying)


def a_halo(halo: int = 64) -> HaloMeasurement:
    return HaloMeasurement(
        halo=halo,
        agreement=0.99953,
        threshold=0.999,
        tile_size=256,
        precision="fp32",
        scenes=("val/a.tif",),
        measured="2026-01-02T03:04:05+00:00",
        tried=((0, 0.97), (32, 0.9993), (64, 0.99953)),
        needed=32,
    )


def test_a_checkpoint_without_a_recorded_halo_still_loads(trained_like, tmp_path):
    """Checkpoints written before the field existed: their metadata has no halo."""
    _, path = trained_like
    old = tmp_path / "old.safetensors"
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["meta"])
    meta.pop("halo")
    save_file(tensors, old, metadata={**header, "meta": json.dumps(meta)})
    assert read_meta(old).halo is None
    loaded, _ = load_checkpoint(old)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())


def test_record_halo_rewrites_the_metadata_and_keeps_the_weights(trained_like, tmp_path):
    model, path = trained_like
    path.chmod(0o640)
    before = read_meta(path)
    digest = checkpoint_digest(path)
    recorded = record_halo(path, a_halo())
    after = read_meta(path)
    assert after.halo == a_halo() == recorded.halo
    assert after.halo.describe().startswith("64 px (32 px needed + margin, 99.953% agreement")
    assert replace(after, halo=None) == before  # nothing else changed
    loaded = load_checkpoint(path)[0].state_dict()
    for k, weights in model.state_dict().items():
        assert torch.equal(weights, loaded[k]), k
    assert checkpoint_digest(path) != digest  # outputs made with the old file recompute
    assert path.stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_an_interrupted_record_leaves_the_checkpoint_as_it_was(trained_like, tmp_path, monkeypatch):
    _, path = trained_like
    original = path.read_bytes()

    def dies_half_way(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("fcnrs.fcn_model.checkpoint.save_file", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        record_halo(path, a_halo())
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_bad_halo_metadata_and_foreign_files_fail_naming_the_file(trained_like, tmp_path):
    _, path = trained_like
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta = json.loads(header["meta"])
    meta["halo"] = {**asdict(a_halo()), "halo": 50}  # not on the stride
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, bad, metadata={**header, "meta": json.dumps(meta)})
    with pytest.raises(CheckpointError, match=rf"{bad}: .*multiple of 32 px"):
        read_meta(bad)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match=f"{foreign}: a safetensors file, but not"):
        record_halo(foreign, a_halo())
    with pytest.raises(ValueError, match="multiple of 32"):
        a_halo(halo=-32)
