"""The operator's command line: scene lists, globs, and one bad scene among good ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fcnrs.jobs.segment_scenes import main
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import expand_scenes
from fcnrs.pipeline.writing import is_complete

ROOT = Path(__file__).resolve().parents[2]


def test_scenes_from_files_globs_and_lists(tmp_path):
    for name in ("a.tif", "b.tif", "c.tif"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "scenes.txt"
    listing.write_text("# nightly\nc.tif\n/abs/missing.tif  # kept, fails later\n")
    got = expand_scenes([str(tmp_path / "a.tif"), str(tmp_path / "*.tif"), str(listing)])
    assert got == [str(tmp_path / n) for n in ("a.tif", "b.tif", "c.tif")] + ["/abs/missing.tif"]


def test_one_bad_scene_fails_alone_and_exit_status_is_1(
    ray_local, make_scene, make_checkpoint, tmp_path, capsys
):
    good1 = make_scene("good1.tif", height=150, width=170)
    good2 = make_scene("good2.tif", height=90, width=200, seed=3)
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    out = tmp_path / "out"
    status = main(
        [
            "--model",
            str(make_checkpoint()),
            "--scenes",
            str(good1),
            str(bad),
            str(good2),
            "--out",
            str(out),
            "--tile-size",
            "64",
            "--overlap",
            "32",
        ]
    )
    assert status == 1
    assert is_complete(out / "good1.zarr") and is_complete(out / "good2.zarr")
    assert not (out / "bad.zarr").exists()
    printed = capsys.readouterr().out
    assert "2 done, 0 skipped, 1 failed" in printed
    assert f"failed: {bad}: not a readable GTiff raster" in printed
    rows = read_manifest(out).to_pylist()
    assert [(Path(r["scene"]).name, r["status"]) for r in rows] == [
        ("bad.tif", "failed"),
        ("good1.tif", "done"),
        ("good2.tif", "done"),
    ]


def test_unknown_band_and_bad_model_fail_clearly(
    ray_local, make_scene, make_checkpoint, tmp_path, capsys
):
    scene = make_scene(height=64, width=64)
    status = main(
        [
            "--model",
            str(make_checkpoint()),
            "--scenes",
            str(scene),
            "--out",
            str(tmp_path / "o"),
            "--bands",
            "1,2,9",
        ]
    )
    assert status == 1
    assert "band index 9 does not exist: the file has 3 band(s)" in capsys.readouterr().out
    notckpt = tmp_path / "model.safetensors"
    notckpt.write_text("nope")
    assert (
        main(["--model", str(notckpt), "--scenes", str(scene), "--out", str(tmp_path / "o")]) == 2
    )


def test_runs_as_a_plain_script(make_scene, make_checkpoint, tmp_path):
    scene = make_scene(height=100, width=120)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs" / "segment_scenes.py"),
            "--model",
            str(make_checkpoint()),
            "--scenes",
            str(scene),
            "--out",
            str(tmp_path / "o"),
            "--engine",
            "ray",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 done, 0 skipped, 0 failed" in proc.stdout
    assert "started a local Ray at" in proc.stderr
    assert is_complete(tmp_path / "o" / "scene.zarr")
    # Quiet by default: the project's own log lines and progress, nothing of Ray's
    # (no token-authentication warning, no native-core "E" lines, no Ray Data plans).
    foreign = [
        line
        for line in proc.stderr.splitlines()
        if line.strip() and " fcnrs" not in line and not line.startswith("tiles ")
    ]
    assert foreign == [], proc.stderr


def test_engine_auto_is_ray_under_ray_job_submit_and_local_otherwise(monkeypatch):
    from fcnrs.jobs.segment_scenes import choose_engine

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert choose_engine("auto") == "local" and choose_engine("ray") == "ray"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert choose_engine("auto") == "ray" and choose_engine("local") == "local"
