"""Learning on real data (slow: 5 minutes of training): Sen1Floods11, top half
trains, bottom half scores, ``jobs/finetune.py`` at its defaults against the plain
loop's measured figure. Run with ``pytest -m slow tests/training/test_finetune_realdata.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: The plain loop's mean IoU on this split at 5 minutes, as measured by
#: ``benchmarks/finetune_vs_loop.py`` (README, "Fine-tuning against a plain loop").
PLAIN_LOOP_MEAN_IOU = 0.713


@pytest.mark.slow
def test_the_job_at_its_defaults_beats_the_plain_loop_on_sen1floods(realdata, tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "finetune_vs_loop.py"),
            *("--dataset", "sen1floods", "--minutes", "5", "--contenders", "job"),
            *("--work", str(tmp_path)),
        ],
        check=True,
        cwd=ROOT,
    )
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["wall_s"] < 5 * 60 + 15  # the time limit covers the whole job
    assert row["mean_iou"] > PLAIN_LOOP_MEAN_IOU
