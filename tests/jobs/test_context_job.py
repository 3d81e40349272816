"""``fcnrs context`` measures and records a checkpoint's halo; the nightly job
then uses it by default, logs its choice, and recomputes when the halo changes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import zarr

from fcnrs.fcn_model import checkpoint_digest, load_checkpoint, read_meta
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.context import MARGIN, UNTRAINED_HALO
from fcnrs.pipeline.manifest import read_manifest


@pytest.fixture
def trained(trained_checkpoint, tmp_path) -> Path:
    """A copy of the session's trained checkpoint, free to be rewritten."""
    return Path(shutil.copy(trained_checkpoint, tmp_path / "trained.safetensors"))


def test_context_measures_and_records_the_halo(make_scene, trained, capsys):
    scene = make_scene(height=420, width=390)
    ckpt = trained
    weights = load_checkpoint(ckpt)[0].state_dict()
    digest = checkpoint_digest(ckpt)
    assert fcnrs(["context", str(ckpt), str(scene), "--dry-run"]) == 0
    assert checkpoint_digest(ckpt) == digest  # a dry run writes nothing
    assert fcnrs(["context", str(ckpt), str(scene)]) == 0
    printed = capsys.readouterr().out
    halo = read_meta(ckpt).halo
    assert halo is not None and halo.scenes == (str(scene),) and halo.agreement >= 0.999
    assert f"halo {halo.halo:>3} px: {halo.agreement:.4%} of valid pixels agree" in printed
    assert f"needs {halo.needed} px for 99.9% here; with a margin of {MARGIN} px" in printed
    assert f"recorded in {ckpt}" in printed and halo.halo == halo.needed + MARGIN
    assert halo.tried[-2][0] == halo.needed and halo.tried[-1] == (halo.halo, halo.agreement)
    assert all(agreement < 0.999 for _, agreement in halo.tried[:-2])
    loaded = load_checkpoint(ckpt)[0].state_dict()
    assert all((loaded[k] == v).all() for k, v in weights.items())


def test_context_without_a_scene_measures_on_a_generated_one(trained):
    earlier = read_meta(trained).halo  # measured on its val scene while training
    assert earlier is not None and earlier.scenes[0].endswith("v.tif")
    assert fcnrs(["context", str(trained)]) == 0
    halo = read_meta(trained).halo
    assert halo is not None and halo.scenes == ("generated:777x1001",)
    assert halo.tile_size == 256 and halo.agreement >= 0.999 and halo != earlier


def test_context_bad_inputs_fail_naming_the_file(make_checkpoint, tmp_path, capsys):
    # The job's log lines go to stderr (setup_logging's handler).
    notckpt = tmp_path / "model.safetensors"
    notckpt.write_text("nope")
    assert fcnrs(["context", str(notckpt)]) == 2
    assert fcnrs(["context", "s3://bucket/model.safetensors"]) == 2
    missing = tmp_path / "missing.tif"
    ckpt = make_checkpoint()
    digest = checkpoint_digest(ckpt)
    assert fcnrs(["context", str(ckpt), str(missing)]) == 1
    logged = capsys.readouterr().err
    assert f"{notckpt}: not a checkpoint" in logged
    assert "s3://bucket/model.safetensors: give a local checkpoint file" in logged
    assert f"the halo was not measured: {missing}" in logged
    assert checkpoint_digest(ckpt) == digest


def test_segment_uses_the_recorded_halo_and_recomputes_when_it_changes(
    make_scene, make_checkpoint, tmp_path, capsys
):
    scene = make_scene(height=300, width=330)
    ckpt = make_checkpoint()
    out = tmp_path / "out"
    logged = ""

    def segment(*extra: str) -> list[str]:
        nonlocal logged
        args = ["segment", "--model", str(ckpt), "--scenes", str(scene), "--out", str(out)]
        assert fcnrs([*args, "--tile-size", "128", "--engine", "local", *extra]) == 0
        logged = capsys.readouterr().err
        rows = read_manifest(out).to_pylist()
        return [r["status"] for r in rows if r["run_id"] == rows[-1]["run_id"]]

    def used() -> int:
        return zarr.open_group(str(out / "scene.zarr"), mode="r").attrs["settings"]["overlap"]

    assert segment() == ["done"]
    untrained = UNTRAINED_HALO["fcn8s"][0.125]
    assert used() == untrained
    assert f"halo {untrained} px: no halo recorded in the checkpoint" in logged
    assert segment() == ["skipped"]
    assert fcnrs(["context", str(ckpt), str(scene)]) == 0
    recorded = read_meta(ckpt).halo
    assert recorded is not None
    assert segment() == ["done"]  # a new checkpoint digest (and maybe halo): recomputed
    assert used() == recorded.halo
    assert f"halo {recorded.halo} px: recorded in the checkpoint" in logged
    other = str(recorded.halo + 32)
    assert segment("--overlap", other) == ["done"]  # only the halo differs: recomputed
    assert used() == int(other) and f"halo {other} px: --overlap" in logged
    assert segment("--overlap", other) == ["skipped"]
