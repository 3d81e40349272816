"""Fine-tuning with every path in S3 (the real ``weed mini`` server): the scene
table, its rasters, the class file, ``--init`` and ``--out``, Ray Train's own
storage included."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fcnrs.fcn_model import load_checkpoint
from fcnrs.jobs import finetune as finetune_job
from fcnrs.jobs.options import build_parser
from fcnrs.pipeline.errors import SceneError
from fcnrs.pipeline.storage import Location, local_copy
from fcnrs.synthetic.scenes import CLASSES
from fcnrs.training.data import read_scene_table
from fcnrs.training.runners import train_in_process
from fcnrs.training.trainer import settings_from_args
from tests.conftest import S3_CREDENTIALS
from tests.files import tree_bytes

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.s3


@pytest.fixture
def s3_training(s3_server, labeled, make_checkpoint):
    """The labeled scenes, a scene table with relative lines, a class file and an
    initial checkpoint, all in S3; returns the prefix and the job's arguments."""
    _, scenes = labeled
    base = f"s3://fcnrs/{uuid.uuid4().hex[:10]}"
    for scene in scenes:
        for path in (scene.image, scene.label):
            Location(f"{base}/data/{Path(path).name}").write_bytes(Path(path).read_bytes())
    rows = [f"data/{Path(s.image).name},data/{Path(s.label).name},{s.split}" for s in scenes]
    Location(f"{base}/scenes.csv").write_bytes(("image,label,split\n" + "\n".join(rows)).encode())
    Location(f"{base}/classes.json").write_bytes(json.dumps(list(CLASSES)).encode())
    init = f"{base}/models/init.safetensors"
    ckpt = make_checkpoint(bands=(1, 2, 3, 4), classes=CLASSES, width=0.125)
    Location(init).write_bytes(ckpt.read_bytes())
    args = ["--scenes", f"{base}/scenes.csv", "--classes", f"{base}/classes.json"]
    args += ["--out", f"{base}/run", "--init", init, "--variant", "fcn8s", "--width", "0.125"]
    args += ["--window", "64", "--batch-size", "2", "--steps-per-epoch", "5"]
    return base, args


def test_scene_table_rasters_classes_init_and_best_export_in_s3(s3_training, labeled):
    base, args = s3_training
    found = read_scene_table(f"{base}/scenes.csv")
    assert [(s.image, s.label, s.split) for s in found] == [
        (f"{base}/data/a.tif", f"{base}/data/a_l.tif", "train"),
        (f"{base}/data/b.tif", f"{base}/data/b_l.tif", "val"),
    ]
    settings = settings_from_args(build_parser(finetune_job).parse_args([*args, "--epochs", "1"]))
    assert settings.out == f"{base}/run" and settings.classes == CLASSES
    # The same band statistics as from the local copies of the scenes.
    local = settings_from_args(
        build_parser(finetune_job).parse_args(
            [*args, "--epochs", "1", "--scenes", str(labeled[0]), "--classes", ",".join(CLASSES)]
        )
    )
    assert settings.mean == local.mean and settings.std == local.std
    progress = train_in_process(settings)
    assert [h["epoch"] for h in progress.history] == [0]
    _, meta = load_checkpoint(local_copy(f"{base}/run/best"))
    assert meta.classes == CLASSES and meta.provenance["init"] == f"{base}/models/init.safetensors"
    assert json.loads(Location(f"{base}/run/best_report.json").read_bytes())["epoch"] == 0

    # A table line naming a missing object: the error names the table's object and it.
    Location(f"{base}/bad.csv").write_bytes(
        b"image,label,split\ndata/nope.tif,data/a_l.tif,train\n"
    )
    with pytest.raises(SceneError, match=f"{base}/data/nope.tif: no such object"):
        read_scene_table(f"{base}/bad.csv")
    with pytest.raises(SceneError, match=f"{base}/missing.csv: cannot read the scene table"):
        read_scene_table(f"{base}/missing.csv")


def finetune(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, str(ROOT / "jobs" / "finetune.py"), *args]
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_job_on_ray_train_keeps_its_state_in_s3_and_continues_from_it(s3_training, tmp_path):
    """The command line in its own process (its Ray workers get the AWS
    variables from it, whatever Ray this session started): about 100 s."""
    base, args = s3_training
    out = f"{base}/run"
    work = tmp_path / "cwd"
    work.mkdir()
    first = finetune(*args, "--epochs", "1", cwd=work)
    assert first.returncode == 0, first.stderr[-4000:]
    _, meta = load_checkpoint(local_copy(f"{out}/best"))
    assert meta.classes == CLASSES and meta.bands == (1, 2, 3, 4)
    assert meta.provenance["init"] == f"{base}/models/init.safetensors"
    assert [h["epoch"] for h in json.loads(Location(f"{out}/report.json").read_bytes())] == [0]
    stored = set(Location(f"{out}/ray_results").list())
    assert "finetune/checkpoint_manager_snapshot.json" in stored, sorted(stored)
    assert any(k.endswith("/state.pt") for k in stored), sorted(stored)
    assert not list(work.iterdir()), "nothing is written to the working directory"

    # Same --out, one more epoch: Ray Train restores its last checkpoint from S3.
    again = finetune(*args, "--epochs", "2", cwd=work)
    assert again.returncode == 0, again.stderr[-4000:]
    history = json.loads(Location(f"{out}/report.json").read_bytes())
    assert [h["epoch"] for h in history] == [0, 1]
    assert [h["resumed_from_epoch"] for h in history] == [-1, 0]
    # Ray Train pickles its storage filesystem into its state: no secret in it.
    objects = tree_bytes(out)
    assert {"best", "best_report.json", "report.json"} < set(objects)
    assert len([k for k in objects if k.endswith("/state.pt")]) == 2  # the kept checkpoints
    for key, data in objects.items():
        for value in S3_CREDENTIALS.values():
            assert value.encode() not in data, f"{key} holds a credential"
