"""The operator's path: a real Ray head on loopback, `ray job submit`, outputs, manifest."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fcnrs.pipeline.distributed import run_scenes
from fcnrs.pipeline.manifest import read_manifest
from fcnrs.pipeline.scenes import SegmentSettings
from fcnrs.pipeline.writing import is_complete, staging_path
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.cluster


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path_factory):
    """`ray start --head` with its own ports and temp dir; stopped afterwards."""
    if shutil.which("ray", path=str(BIN)) is None:
        pytest.skip("the ray CLI is not installed beside this Python")
    temp = Path("/tmp") / f"rayh{os.getpid()}"  # short: Ray's socket paths are length-limited
    port, dash = free_port(), free_port()
    # The head's own token, for it and its clients: nothing read from ~/.ray, so
    # the test runs alike with an empty HOME (a new machine) and in any order.
    token = secrets.token_hex(32)
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env |= {"RAY_AUTH_TOKEN": token, "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--include-dashboard=true",
        f"--temp-dir={temp}",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
    ]
    proc = subprocess.run(start, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    try:
        yield f"http://127.0.0.1:{dash}", env, port
    finally:
        # Not `ray stop`: it stops every Ray on the machine, not only this head.
        stop_processes_using(temp)
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_using(temp: Path) -> None:
    """SIGTERM, then SIGKILL, every process whose command line names ``temp``."""
    marker = str(temp).encode()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [
            int(p.name)
            for p in Path("/proc").iterdir()
            if p.name.isdigit() and _cmdline(p).find(marker) >= 0 and int(p.name) != os.getpid()
        ]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if Path(f"/proc/{p}").exists()]
            time.sleep(0.2)


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def submit(address: str, env: dict, *args: str, submission_id: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(ROOT),
            "--submission-id",
            submission_id,
            "--",
            "python",
            "jobs/segment_scenes.py",
            *args,
        ],
        env={**env, "RAY_AUTH_MODE": "token"},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_ray_job_submit_runs_the_nightly_job(ray_head, make_scene, make_checkpoint, tmp_path):
    address, env, gcs_port = ray_head
    good = make_scene("good.tif", height=300, width=260)
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"II*\x00garbage")
    out = tmp_path / "out"
    args = [
        "--model",
        str(make_checkpoint()),
        "--scenes",
        str(good),
        str(bad),
        "--out",
        str(out),
        "--tile-size",
        "128",
        "--overlap",
        "64",
    ]
    first = submit(address, env, *args, submission_id="nightly-test-1")
    log = first.stdout + first.stderr
    # The job ran on the existing cluster (no local Ray of its own) and failed
    # overall because one scene was bad, after finishing the good one.
    assert "started a local Ray" not in log
    joined = rf"joined the Ray cluster at [\d.]+:{gcs_port} \(2 CPU, 0 GPU\)"
    assert re.search(joined, log), log[:8000]
    assert first.returncode != 0
    assert "failed with" in log or "FAILED" in log
    assert is_complete(out / "good.zarr") and not (out / "broken.zarr").exists()
    rows = read_manifest(out).to_pylist()
    assert {(Path(r["scene"]).name, r["status"]) for r in rows} == {
        ("good.tif", "done"),
        ("broken.tif", "failed"),
    }
    assert "broken.tif" in next(r["error"] for r in rows if r["status"] == "failed")

    # Without the token the job server refuses the client.
    no_token = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address],
        env={**env, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    refused = no_token.stdout + no_token.stderr
    assert no_token.returncode != 0 and ("401" in refused or "nauthorized" in refused), refused

    # The next night: the good scene is skipped and the job succeeds.
    second = submit(
        address,
        env,
        *args[:4],
        "--out",
        str(out),
        "--tile-size",
        "128",
        "--overlap",
        "64",
        submission_id="nightly-test-2",
    )
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "0 done, 1 skipped, 0 failed" in second.stdout

    # A second submission with a night's id is refused, so cron cannot run it twice.
    again = submit(address, env, *args, submission_id="nightly-test-2")
    assert again.returncode != 0 and "already exists" in again.stdout + again.stderr


def test_ray_job_stop_records_interrupted_and_the_resubmission_resumes(
    ray_head, make_scene, make_checkpoint, tmp_path
):
    address, env, _ = ray_head
    scene = make_scene("scene.tif", height=1000, width=1000, seed=6)
    ckpt = make_checkpoint(width=0.5)  # slow enough to stop mid-scene
    settings = SegmentSettings(tile_size=96, overlap=64, batch_size=1, precision="fp32")
    run_scenes(
        [scene],
        model=ckpt,
        out_dir=tmp_path / "ref",
        settings=settings,
        progress=None,
        engine="local",
    )
    out = tmp_path / "out"
    args = ["--model", str(ckpt), "--scenes", str(scene), "--out", str(out)]
    args += ["--tile-size", "96", "--overlap", "64", "--batch-size", "1", "--precision", "fp32"]
    job_env = {**env, "RAY_AUTH_MODE": "token"}
    ray = str(BIN / "ray")
    started = subprocess.run(
        [ray, "job", "submit", "--address", address, "--working-dir", str(ROOT),
         "--submission-id", "stop-1", "--no-wait", "--", "python", "jobs/segment_scenes.py",
         *args],
        env=job_env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr
    chunks = staging_path(out / "scene.zarr") / "labels"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(list(chunks.glob("*.*"))) < 10:
        time.sleep(0.1)
    stop = subprocess.run(
        [ray, "job", "stop", "--address", address, "stop-1"],
        env=job_env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stop.returncode == 0, stop.stdout + stop.stderr
    partial = len(list(chunks.glob("*.*")))
    assert 10 <= partial < 121, f"{partial} of 121 chunks on disk when stopped"
    [row] = read_manifest(out).to_pylist()
    assert row["status"] == "interrupted" and "SIGTERM" in row["error"], row["error"]
    assert not (out / "scene.zarr").exists()

    again = submit(address, env, *args, submission_id="stop-2")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    rows = read_manifest(out).to_pylist()
    done = next(r for r in rows if r["status"] == "done")
    # Only the batches not on disk were recomputed, and the bytes are the same.
    assert done["tiles_predicted"] <= 121 - partial + 1
    assert tree_bytes(out / "scene.zarr") == tree_bytes(tmp_path / "ref" / "scene.zarr")
