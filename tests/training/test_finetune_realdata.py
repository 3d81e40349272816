"""Learning on real data (slow: 10 minutes of training): Sen1Floods11, top half
trains, bottom half scores. Run with ``pytest -m slow tests/training/test_finetune_realdata.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_fcn2s_beats_the_plain_loop_and_ndwi_on_the_bottom_half(realdata, tmp_path):
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "finetune_sen1floods.py"),
            "--time-limit",
            "10",
            "--out",
            str(tmp_path),
        ],
        check=True,
        cwd=ROOT,
    )
    best = json.loads((tmp_path / "run" / "best_report.json").read_text())
    # Baselines on this split (the issue's): plain FCN-8s loop 0.58, NDWI 0.59,
    # per-pixel MLP 0.66. FCN-2s reached 0.640 here; the MLP bar is not met yet.
    assert best["iou"]["water"] > 0.62
