"""The demo's segmentation step: the library call the segmentation job makes."""

from __future__ import annotations

import numpy as np
import zarr

from fcnrs.demo.run import segment
from fcnrs.jobs import segment_scenes
from fcnrs.pipeline.writing import is_complete


def test_the_demo_segments_as_the_job_does(make_scene, make_checkpoint, tmp_path, capsys):
    scene, model = make_scene("test.tif", height=150, width=200), make_checkpoint()
    assert segment(model, scene, tmp_path / "demo") == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    argv = ["--model", str(model), "--scenes", str(scene), "--out", str(tmp_path / "job")]
    assert segment_scenes.main([*argv, "--tile-size", "512"]) == 0
    demo, job = (tmp_path / where / "test.zarr" for where in ("demo", "job"))
    assert is_complete(demo)
    labels = [zarr.open_array(str(z), path="labels", mode="r")[:] for z in (demo, job)]
    assert np.array_equal(*labels)


def test_an_unusable_output_folder_is_exit_status_2(make_scene, make_checkpoint, tmp_path):
    (tmp_path / "taken").write_text("a file, not a folder")
    assert segment(make_checkpoint(), make_scene(), tmp_path / "taken") == 2
