"""Every job's command line against the real S3 server (``weed mini``): a model
in S3 for the jobs that take one, and permanent errors (a bucket that does not
exist, a wrong secret) that fail in seconds, naming the URL and the reason."""

from __future__ import annotations

import time
import uuid

import pytest

from fcnrs.fcn_model import checkpoint_digest
from fcnrs.jobs import finetune
from fcnrs.jobs.cli import main as fcnrs
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.storage import Location
from tests.files import tree_bytes

pytestmark = pytest.mark.s3
FLAGS = ["--tile-size", "64", "--overlap", "32", "--batch-size", "2", "--engine", "local"]


def test_segment_takes_its_model_from_s3(s3_server, make_scene, make_checkpoint, tmp_path, capsys):
    scene, ckpt = make_scene("a.tif", height=150, width=200), make_checkpoint()
    base = f"s3://fcnrs/{uuid.uuid4().hex[:10]}"
    model = f"{base}/models/best.safetensors"
    Location(model).write_bytes(ckpt.read_bytes())
    scenes = ["--scenes", str(scene)]
    assert fcnrs(["segment", "--model", model, *scenes, "--out", str(tmp_path / "s3"), *FLAGS]) == 0
    assert (
        fcnrs(["segment", "--model", str(ckpt), *scenes, "--out", str(tmp_path / "here"), *FLAGS])
        == 0
    )
    chunks = {k: v for k, v in tree_bytes(tmp_path / "s3").items() if k.startswith("a.zarr/labels")}
    assert len(chunks) > 12 and chunks == {
        k: v for k, v in tree_bytes(tmp_path / "here").items() if k.startswith("a.zarr/labels")
    }
    [row] = read_manifest(tmp_path / "s3").to_pylist()
    assert row["model_digest"] == checkpoint_digest(ckpt)
    capsys.readouterr()

    # A missing model and a file that is no checkpoint: exit 2, named, nothing written.
    Location(f"{base}/models/notes.txt").write_bytes(b"not a checkpoint")
    for bad, reason in ((f"{base}/models/nope.safetensors", "no such object"),
                        (f"{base}/models/notes.txt", "not a checkpoint")):  # fmt: skip
        out = tmp_path / f"bad{len(reason)}"
        assert fcnrs(["segment", "--model", bad, *scenes, "--out", str(out), *FLAGS]) == 2
        err = capsys.readouterr().err
        assert f"{bad}: {reason}" in err, err[-2000:]
        assert not out.exists()


def test_finetune_refuses_a_missing_init_in_s3_before_it_starts(s3_server, tmp_path, capsys):
    url = f"s3://fcnrs/{uuid.uuid4().hex[:10]}/models/nope.safetensors"
    t0 = time.perf_counter()
    status = finetune.main(["--scenes", str(tmp_path / "t.csv"), "--classes", "a,b",
                            "--out", str(tmp_path / "run"), "--init", url])  # fmt: skip
    assert status == 2 and time.perf_counter() - t0 < 10
    assert f"{url}: no such object" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


NO_BUCKET = "s3://no-such-bucket-fcnrs"


def permanent_cases(tmp_path, zarr_path, scene, model) -> dict[str, list[str]]:
    """Each job's arguments with its output (or input folder) in ``NO_BUCKET``."""
    return {
        "segment": ["segment", "--model", str(model), "--scenes", str(scene),
                    "--out", f"{NO_BUCKET}/labels", *FLAGS],
        "finetune": ["finetune", "--scenes", str(tmp_path / "t.csv"), "--classes", "a,b",
                     "--out", f"{NO_BUCKET}/run"],
        "export": ["export", str(zarr_path), "--out", f"{NO_BUCKET}/cogs"],
        "vectorize": ["vectorize", str(zarr_path), "--out", f"{NO_BUCKET}/vectors"],
        "areas": ["areas", f"{NO_BUCKET}/labels"],
        "mosaic": ["mosaic", f"{NO_BUCKET}/labels"],
        "catalog": ["catalog", f"{NO_BUCKET}/labels"],
    }  # fmt: skip


@pytest.mark.parametrize("failure", ["no such bucket", "access denied"])
def test_every_job_fails_fast_on_a_permanent_error_naming_the_url(
    failure, s3_server, make_labels, make_scene, make_checkpoint, tmp_path, capsys, caplog,
    monkeypatch,
):  # fmt: skip
    import numpy as np

    zarr_path = make_labels(np.zeros((64, 64), np.uint8))
    cases = permanent_cases(tmp_path, zarr_path, make_scene(), make_checkpoint())
    if failure == "access denied":  # the bucket exists; the secret is wrong
        cases = {job: [a.replace(NO_BUCKET, "s3://fcnrs/denied") for a in args]
                 for job, args in cases.items()}  # fmt: skip
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret-at-all")
    for job, args in cases.items():
        url = next(a for a in args if a.startswith("s3://"))
        caplog.clear()
        t0 = time.perf_counter()
        try:
            status = fcnrs(args)
        except SystemExit as exc:  # argparse's error(): the areas job's bad OUT
            status = exc.code
        seconds = time.perf_counter() - t0
        said = capsys.readouterr().err + caplog.text
        assert status in (1, 2), (job, status)
        assert url in said and failure in said, (job, said[-2000:])
        assert seconds < 15, f"{job}: a permanent error is not retried ({seconds:.1f} s)"
        assert "not-the-secret-at-all" not in said and "fcnrs-test-secret-1" not in said
