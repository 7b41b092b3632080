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


def test_train_command_writes_a_model_package(tmp_path, capsys):
    """``napari-pose train`` with a --config YAML (tiny model) and flags on top of it."""
    import yaml

    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
    from napari_pose.nn.package import read_config, read_log

    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    save_labels(to_labels(data, str(tmp_path / "v.mp4")), tmp_path / "p.slp")
    tiny = {"backbone": {"filters": 4, "max_stride": 16, "output_stride": 2}, "heads": {"confmaps": 5}}
    stage = {"kind": "single_instance", "model": tiny, "input_size": [64, 64]}
    config = {"pipeline": "single_instance", "training": {"batch_size": 2, "steps_per_epoch": 2},
              "stages": {"single_instance": stage}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "model"
    code = main(["train", str(tmp_path / "p.slp"), "-o", str(out), "--config",
                 str(tmp_path / "cfg.yaml"), "--epochs", "2", "--frames", "0-9", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "OKS mAP" in printed and str(out) in printed
    recorded = read_config(out)
    assert recorded["complete"] and recorded["training"]["frames"] == "0-9"
    assert recorded["training"]["epochs"] == 2 and recorded["training"]["batch_size"] == 2
    assert recorded["stages"]["single_instance"]["model"]["backbone"]["filters"] == 4
    assert [row["epoch"] for row in read_log(out)] == ["1", "2"]


def test_train_command_reports_bad_input(tmp_path, capsys):
    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import make_synthetic, to_labels

    data = make_synthetic(n_frames=3, size=64, n_animals=1)
    save_labels(to_labels(data, str(tmp_path / "v.mp4"), predicted=True), tmp_path / "p.slp")
    assert main(["train", str(tmp_path / "p.slp"), "-o", str(tmp_path / "m"), "--quiet"]) == 2
    assert "no user-labelled instances" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "p.slp"), "-o", str(tmp_path / "m"),
                 "--frames", "nine"]) == 2  # fmt: skip
    assert "frames must look like" in capsys.readouterr().err
