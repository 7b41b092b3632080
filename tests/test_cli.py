"""The ``napari-pose`` command line: the demo the README starts with, and conversion."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import sleap_io as sio
from skimage.io import imread

from napari_pose.cli import main
from napari_pose.core.pose_arrays import labels_to_arrays


@pytest.mark.gui
def test_demo_screenshot_renders_the_whole_window(tmp_path, qapp):
    """``napari-pose demo --screenshot`` (the README's first command, headless) draws a window."""
    shot = tmp_path / "demo.png"
    env = {**os.environ, "NAPARI_POSE_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-m", "napari_pose.cli", "demo", "--screenshot", str(shot)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    image = imread(shot)
    assert image.shape[0] >= 600 and image.shape[1] >= 1000  # the window, not just the canvas
    assert image[..., :3].std() > 20  # something was drawn, not a blank (offscreen) frame
    # The sample video is shown: its textured gray arena fills the middle of the canvas.
    middle = image[image.shape[0] // 2 - 50 : image.shape[0] // 2 + 50,
                   image.shape[1] // 2 - 50 : image.shape[1] // 2 + 50, :3]  # fmt: skip
    assert 60 < middle.mean() < 200 and middle.std() > 3


def test_convert_dlc_project_to_slp(data_dir, tmp_path, capsys):
    out = tmp_path / "openfield.slp"
    assert main(["convert", str(data_dir / "deeplabcut/openfield/config.yaml"), str(out)]) == 0
    labels = sio.load_slp(out, open_videos=False)
    arrays = labels_to_arrays(labels)
    assert len(labels.labeled_frames) == 116 and labels.skeletons[0].node_names == [
        "snout", "leftear", "rightear", "tailbase"]  # fmt: skip
    assert np.isfinite(arrays.xy).any()


def test_convert_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "broken.slp"
    bad.write_text("nope")
    assert main(["convert", str(bad), str(tmp_path / "out.slp")]) == 2
    assert "broken.slp" in capsys.readouterr().err
    assert not (tmp_path / "out.slp").exists()
