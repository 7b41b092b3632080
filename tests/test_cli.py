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
from tiny_models import train_tiny


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


@pytest.mark.gui
def test_demo_opens_the_first_docks_and_says_how_to_start(tmp_path, qapp, monkeypatch):
    """The demo's window, looked at before it closes: *Pose project* and *Label poses* in one
    tab group, and a notification with the first clicks, keys and docks."""
    import napari
    from napari.utils.notifications import notification_manager

    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    kept, close = [], napari.Viewer.close
    monkeypatch.setattr(napari.Viewer, "close", lambda viewer: kept.append(viewer))
    n_notes = len(notification_manager.records)
    assert main(["demo", "--screenshot", str(tmp_path / "demo.png")]) == 0
    (viewer,) = kept
    try:
        docks = {type(widget).__name__: widget.native.parentWidget()
                 for widget in viewer.window.dock_widgets.values()}  # fmt: skip
        assert docks.keys() == {"ProjectWidget", "LabelWidget"}
        window = docks["LabelWidget"].parentWidget()
        assert window.tabifiedDockWidgets(docks["LabelWidget"]) == [docks["ProjectWidget"]]
        (note,) = [str(n.message) for n in notification_manager.records[n_notes:]]
        for words in ("click on the image", "n = new instance", "Train model", "Predict"):
            assert words in note
    finally:
        close(viewer)


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


def _tiny_train_project(tmp_path, steps_per_epoch: int = 2):
    """A 12-frame one-animal project and a --config YAML with a tiny single-instance model."""
    import yaml

    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video

    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    save_labels(to_labels(data, str(tmp_path / "v.mp4")), tmp_path / "p.slp")
    tiny = {"backbone": {"filters": 4, "max_stride": 16, "output_stride": 2},
            "heads": {"confmaps": 5}}  # fmt: skip
    stage = {"kind": "single_instance", "model": tiny, "input_size": [64, 64]}
    config = {"pipeline": "single_instance",
              "training": {"batch_size": 2, "steps_per_epoch": steps_per_epoch},
              "stages": {"single_instance": stage}}  # fmt: skip
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    return tmp_path / "p.slp", tmp_path / "cfg.yaml"


def test_train_command_writes_a_model_package(tmp_path, capsys):
    """``napari-pose train`` with a --config YAML (tiny model) and flags on top of it."""
    from napari_pose.nn.package import read_config, read_log

    labels, config = _tiny_train_project(tmp_path)
    out = tmp_path / "model"
    code = main(["train", str(labels), "-o", str(out), "--config", str(config),
                 "--epochs", "2", "--frames", "0-9", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "done: " in printed and str(out) in printed  # figures, or "found no animals"
    recorded = read_config(out)
    assert recorded["complete"] and recorded["training"]["frames"] == "0-9"
    assert recorded["training"]["epochs"] == 2 and recorded["training"]["batch_size"] == 2
    assert recorded["stages"]["single_instance"]["model"]["backbone"]["filters"] == 4
    assert [row["epoch"] for row in read_log(out)] == ["1", "2"]


def test_train_command_continues_from_a_model_package(tmp_path, capsys):
    """``--from A`` without --config: B is trained with A's tiny model (not the default
    preset), from A's weights, and records where it started."""
    import torch

    from napari_pose.nn.package import load_torch, read_config, weights_path

    labels, config = _tiny_train_project(tmp_path)
    a, b = tmp_path / "A", tmp_path / "B"
    assert main(["train", str(labels), "-o", str(a), "--config", str(config), "--epochs", "1",
                 "--quiet"]) == 0  # fmt: skip
    code = main(["train", str(labels), "-o", str(b), "--from", str(a), "--epochs", "1",
                 "--quiet", "--device", "cpu"])  # fmt: skip
    assert code == 0
    assert "done: " in capsys.readouterr().out
    recorded = read_config(b)
    assert recorded["complete"] and recorded["training"]["started_from"] == str(a.resolve())
    assert recorded["stages"] == read_config(a)["stages"]
    assert recorded["stages"]["single_instance"]["model"]["backbone"]["filters"] == 4
    # One epoch moved B away from A: a continued run trains, it does not copy.
    start, end = (load_torch(weights_path(m, "single_instance")) for m in (a, b))
    assert not all(torch.equal(start[k], end[k]) for k in start)


def test_train_command_reports_a_bad_model_to_continue_from(tmp_path, capsys):
    labels, _ = _tiny_train_project(tmp_path)
    (tmp_path / "empty").mkdir()
    for folder, cause in ((tmp_path / "nope", "no model folder here"),
                          (tmp_path / "empty", "no model config here")):  # fmt: skip
        assert main(["train", str(labels), "-o", str(tmp_path / "B"), "--from", str(folder),
                     "--quiet"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert str(folder) in lines[0] and cause in lines[0]
        assert "Traceback" not in err
    assert main(["train", str(labels), "-o", str(tmp_path / "B"), "--from", str(tmp_path),
                 "--resume", "--quiet"]) == 2  # fmt: skip
    assert "--from and --resume cannot be combined" in capsys.readouterr().err
    assert not (tmp_path / "B").exists()
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--from MODEL_DIR" in capsys.readouterr().out


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


def test_train_command_reports_a_model_that_found_no_animals_in_words(tmp_path, capsys):
    labels, config = _tiny_train_project(tmp_path, steps_per_epoch=1)
    code = main(["train", str(labels), "-o", str(tmp_path / "model"), "--config", str(config),
                 "--epochs", "1", "--quiet"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "no animals" in printed and "label more frames" in printed
    assert "nan" not in printed.replace(str(tmp_path), "").lower()


def test_train_command_says_cancelled_on_ctrl_c_and_stays_resumable(tmp_path):
    """Ctrl-C (SIGINT) ends training within seconds with a resumable checkpoint and says it
    was cancelled, instead of a traceback."""
    import signal
    import time

    from napari_pose.nn.package import checkpoint_path, read_config

    labels, config = _tiny_train_project(tmp_path)
    out = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_pose.cli", "train", str(labels), "-o", str(out),
         "--config", str(config), "--epochs", "100000", "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not (out / "training_log.csv").exists() and process.poll() is None:
            assert time.monotonic() < deadline, "training never finished an epoch"
            time.sleep(0.1)
        asked = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    # Five seconds: one tiny step, the checkpoint and the interpreter's exit.
    assert time.monotonic() - asked < 5.0
    assert process.returncode == 130, stderr[-3000:]
    assert "cancelled" in stdout and "Traceback" not in stderr
    assert checkpoint_path(out, "single_instance").exists()
    assert not read_config(out)["complete"]


def test_predict_command_takes_stack_axes_and_tracks_each_z_along_time(tmp_path, capsys):
    """``--axes TZYX`` makes 5 pages of 3 planes (which tifffile takes for RGB samples) 15 gray
    (t, z) planes; ``--tracker`` then follows each z over time, not plane after plane."""
    import attrs
    import tifffile

    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.models import UNetConfig
    from napari_pose.nn.pipelines import default_stages
    from napari_pose.nn.train import TrainConfig, train

    data = make_synthetic(n_frames=15, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    labels = to_labels(data, str(tmp_path / "v.mp4"))
    tiny = UNetConfig(filters=4, max_stride=16, output_stride=2)
    stages = {k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=tiny))
              for k, s in default_stages(load_frames(labels), "single_instance").items()}  # fmt: skip
    config = TrainConfig(pipeline="single_instance", epochs=1, steps_per_epoch=2, batch_size=2)
    list(train(labels, tmp_path / "model", config, stages=stages))
    tifffile.imwrite(tmp_path / "stack.tif", data.frames.reshape(5, 3, 64, 64), metadata=None)
    out = tmp_path / "stack.slp"
    command = ["predict", str(tmp_path / "stack.tif"), "-m", str(tmp_path / "model"), "-o",
               str(out), "--peak-threshold", "0", "--device", "cpu", "--quiet"]  # fmt: skip
    assert main([*command, "--axes", "tzyx", "--tracker", "--max-tracks", "1"]) == 0
    arrays = labels_to_arrays(sio.load_slp(out, open_videos=False))
    assert sorted(set(arrays.frame.tolist())) == list(range(15))
    z = arrays.frame % 3
    assert [arrays.tracks[t].name for t in np.unique(arrays.track)] == [
        "z0 track_0", "z1 track_1", "z2 track_2"]  # fmt: skip
    assert all(len(set(z[arrays.track == t].tolist())) == 1 for t in range(3))
    assert arrays.videos[0].backend_metadata["axes"] == "TZYX"
    out.unlink()
    assert main([*command, "--axes", "TYX"]) == 2
    assert "stack.tif: axes 'TYX' do not fit the data of shape (5, 3, 64, 64)" in (
        capsys.readouterr().err)  # fmt: skip
    command[1] = str(tmp_path / "v.mp4")
    assert main([*command, "--axes", "TZYX"]) == 2
    assert "v.mp4: axes ('TZYX') can only be given for TIFF stacks" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def project_and_model(tmp_path_factory):
    """A 12-frame project (user labels on 0-7, an older model's predictions on 4-7, suggestions
    after) and a tiny model trained a few steps on it: its outputs are not what is tested."""

    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video

    folder = tmp_path_factory.mktemp("merge")
    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=1)
    write_video(data.frames, folder / "v.mp4")
    labels = to_labels(data, str(folder / "v.mp4"), labelled_frames=slice(0, 8))
    train_tiny(labels, folder / "model")
    for lf in labels.labeled_frames[4:8]:
        lf.instances.append(sio.PredictedInstance.from_numpy(
            data.points[lf.frame_idx, 0] + 1, labels.skeletons[0], point_scores=np.full(5, 0.5),
            score=0.5, track=labels.tracks[0]))  # fmt: skip
    save_labels(labels, folder / "p.slp")
    return folder / "p.slp", folder / "model"


def test_predict_merge_writes_the_project_with_the_new_predictions(project_and_model, tmp_path,
                                                                  capsys):  # fmt: skip
    project, model = project_and_model
    out = tmp_path / "merged.slp"
    # Every peak counts as found (threshold -1), so each frame predicted has one instance,
    # whatever the tiny model learned.
    assert main(["predict", str(project), "-m", str(model), "-o", str(out), "--merge",
                 "--frames", "0-5", "--peak-threshold", "-1", "--device", "cpu", "--quiet",
                 "--tracker", "--max-tracks", "1"]) == 0  # fmt: skip
    assert f"in 6 frames to {out} (merged into {project})" in capsys.readouterr().out
    before, merged = sio.load_slp(str(project)), sio.load_slp(str(out))
    assert [t.name for t in merged.tracks] == ["animal_0", "track_0"]
    assert [s.frame_idx for s in merged.suggestions] == [s.frame_idx for s in before.suggestions]
    assert merged.videos[0].filename == before.videos[0].filename

    def instances(labels, predicted: bool) -> dict[int, list]:
        return {lf.frame_idx: lf.predicted_instances if predicted else lf.user_instances
                for lf in labels.labeled_frames}  # fmt: skip

    user_before, user_after = instances(before, False), instances(merged, False)
    assert sorted(user_after) == list(range(8))
    for frame, (instance,) in user_before.items():
        np.testing.assert_array_equal(user_after[frame][0].numpy(), instance.numpy())
    predicted = instances(merged, True)
    assert {f: len(p) for f, p in predicted.items()} == dict.fromkeys(range(8), 1)
    assert [predicted[f][0].track.name for f in range(8)] == ["track_0"] * 6 + ["animal_0"] * 2
    assert [predicted[f][0].score for f in (6, 7)] == [0.5, 0.5]  # not predicted again: kept


def test_predict_merge_refuses_a_model_with_other_nodes(project_and_model, tmp_path, capsys):
    import shutil

    from napari_pose.core.skeleton import save_skeleton

    project, model = project_and_model
    other = tmp_path / "other model"
    shutil.copytree(model, other)
    nodes = sio.load_slp(str(project)).skeletons[0].node_names
    save_skeleton(sio.Skeleton(["snout", *nodes[1:]]), other / "skeleton.json")
    out = tmp_path / "merged.slp"
    assert main(["predict", str(project), "-m", str(other), "-o", str(out), "--merge",
                 "--device", "cpu", "--quiet"]) == 2  # fmt: skip
    error = capsys.readouterr().err
    for part in (str(other), str(project), "nodes missing in the project: snout",
                 f"nodes missing in the model: {nodes[0]}"):  # fmt: skip
        assert part in error
    assert not out.exists()

    video = project.parent / "v.mp4"
    assert main(["predict", str(video), "-m", str(model), "-o", str(out), "--merge"]) == 2
    assert "--merge takes exactly one .slp input" in capsys.readouterr().err
    assert not out.exists()


def test_stack_predictions_record_their_axes_for_napari_track_and_predict(
    project_and_model, tmp_path
):
    """Predictions of a stack read with ``--axes TZYX`` (5 pages of 3 planes, which tifffile
    takes for RGB samples) record those axes in their video: napari shows them on (t, z)
    planes, ``track`` follows each z over time, and predicting their video again predicts the
    same 15 gray planes (the file's own axes make 5 RGB ones, which this gray model refuses).
    Without ``--axes`` the file's own axes are recorded."""
    import tifffile

    from napari_pose.core.synthetic import make_synthetic
    from napari_pose.napari._reader import read_labels

    _, model = project_and_model
    frames = make_synthetic(n_frames=15, size=64, n_animals=1, seed=0).frames
    tifffile.imwrite(tmp_path / "stack.tif", frames.reshape(5, 3, 64, 64), metadata=None)
    out, options = tmp_path / "stack.slp", ["--peak-threshold", "-1", "--device", "cpu", "--quiet"]
    assert main(["predict", str(tmp_path / "stack.tif"), "-m", str(model), "-o", str(out),
                 "--axes", "TZYX", *options]) == 0  # fmt: skip
    predicted = labels_to_arrays(sio.load_slp(out, open_videos=False))
    assert predicted.videos[0].backend_metadata["axes"] == "TZYX"
    assert sorted(set(predicted.frame.tolist())) == list(range(15))

    layers = read_labels(str(out))
    ((image, image_kw),) = [(d, kw) for d, kw, kind in layers if kind == "image"]
    assert image.shape == (5, 3, 64, 64) and image_kw["axis_labels"] == ("t", "z", "y", "x")
    np.testing.assert_array_equal(np.asarray(image[2, 1]), frames[7])  # plane 7: t 2, z 1
    points, kw = next((d, kw) for d, kw, kind in layers if kind == "points" and len(d))
    shown = kw["metadata"]["napari_pose"].arrays
    assert kw["metadata"]["napari_pose"].plane_shape == (5, 3)
    planes = np.stack(np.unravel_index(shown.frame, (5, 3)), axis=1)
    per_instance = np.isfinite(shown.xy[..., 0]).sum(axis=1)
    np.testing.assert_array_equal(points[:, :2], np.repeat(planes, per_instance, axis=0))

    tracked = tmp_path / "tracked.slp"
    assert main(["track", str(out), "-o", str(tracked), "--max-tracks", "1"]) == 0
    arrays = labels_to_arrays(sio.load_slp(tracked, open_videos=False))
    assert [arrays.tracks[t].name for t in np.unique(arrays.track)] == [
        "z0 track_0", "z1 track_1", "z2 track_2"]  # fmt: skip
    assert all(set((arrays.frame[arrays.track == t] % 3).tolist()) == {t} for t in range(3))
    assert arrays.videos[0].backend_metadata["axes"] == "TZYX"

    again = tmp_path / "again.slp"
    assert main(["predict", str(out), "-m", str(model), "-o", str(again), *options]) == 0
    arrays = labels_to_arrays(sio.load_slp(again, open_videos=False))
    assert sorted(set(arrays.frame.tolist())) == list(range(15))

    ome = tmp_path / "stack.ome.tif"
    tifffile.imwrite(ome, frames.reshape(5, 3, 64, 64), ome=True, metadata={"axes": "TZYX"})
    assert main(["predict", str(ome), "-m", str(model), "-o", str(again), *options]) == 0
    assert sio.load_slp(again, open_videos=False).videos[0].backend_metadata["axes"] == "TZYX"


def test_predict_merge_records_stack_axes_in_the_project(project_and_model, tmp_path):
    """Merged predictions are saved with the project's video, which records the axes used."""
    import tifffile

    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import make_synthetic

    project, model = project_and_model
    frames = make_synthetic(n_frames=15, size=64, n_animals=1, seed=0).frames
    tifffile.imwrite(tmp_path / "stack.tif", frames.reshape(5, 3, 64, 64), metadata=None)
    skeleton = sio.load_slp(str(project), open_videos=False).skeletons[0]
    video = sio.Video(filename=str(tmp_path / "stack.tif"), open_backend=False)
    instance = sio.Instance.from_numpy(np.full((len(skeleton.nodes), 2), 9.0), skeleton)
    frame = sio.LabeledFrame(video=video, frame_idx=4, instances=[instance])
    save_labels(sio.Labels(videos=[video], skeletons=[skeleton], labeled_frames=[frame]),
                tmp_path / "p.slp")  # fmt: skip
    merged = tmp_path / "merged.slp"
    assert main(["predict", str(tmp_path / "p.slp"), "-m", str(model), "-o", str(merged),
                 "--merge", "--axes", "TZYX", "--frames", "0-5", "--peak-threshold", "-1",
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    labels = sio.load_slp(str(merged), open_videos=False)
    assert len(labels.videos) == 1 and labels.videos[0].backend_metadata["axes"] == "TZYX"
    arrays = labels_to_arrays(labels)
    assert sorted(set(arrays.frame[arrays.predicted].tolist())) == list(range(6))
    assert arrays.frame[~arrays.predicted].tolist() == [4]


def test_track_needs_a_stack_it_cannot_find(tmp_path, capsys):
    """Stack frame numbers are flat plane indices: without the file, no (t, z) to track along."""
    from napari_pose.core.io import save_labels

    skeleton = sio.Skeleton(["head"])
    video = sio.Video(filename=str(tmp_path / "gone.tif"), backend_metadata={"axes": "TZYX"},
                      open_backend=False)  # fmt: skip
    instance = sio.PredictedInstance.from_numpy(np.ones((1, 2)), skeleton, point_scores=[1.0],
                                                score=1.0)  # fmt: skip
    frame = sio.LabeledFrame(video=video, frame_idx=0, instances=[instance])
    save_labels(sio.Labels(videos=[video], skeletons=[skeleton], labeled_frames=[frame]),
                tmp_path / "p.slp")  # fmt: skip
    assert main(["track", str(tmp_path / "p.slp"), "-o", str(tmp_path / "t.slp")]) == 2
    assert f"p.slp: its stack {tmp_path / 'gone.tif'} was not found" in capsys.readouterr().err
    assert not (tmp_path / "t.slp").exists()


@pytest.fixture
def recorded_runs(tmp_path, monkeypatch):
    """A video, a model folder whose config says its training frames held up to 2 animals,
    and ``predict_one`` / ``track_planes`` replaced by recorders of the limit each is given:
    the animals per frame for detection and the most tracks."""
    import yaml

    import napari_pose.nn.scaleout
    import napari_pose.nn.tracking
    from napari_pose.core.synthetic import make_synthetic, write_video
    from napari_pose.nn.inference import predictions_to_arrays
    from napari_pose.nn.predict import FramePrediction

    write_video(make_synthetic(n_frames=2, size=64, n_animals=1).frames, tmp_path / "v.mp4")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.yaml").write_text(
        yaml.safe_dump({"format": 1, "pipeline": "topdown", "max_instances": 2}))  # fmt: skip
    limits: dict[str, int | None] = {}

    def predict_one(video, model, config, frames=None, **kwargs):
        limits["detection"] = config.max_instances
        limits["flip_tta"] = config.flip_tta
        if config.rotation_tta:
            limits["rotation_tta"] = config.rotation_tta
        found = FramePrediction(np.ones((1, 1, 2), np.float32), np.ones((1, 1), np.float32),
                                np.ones(1, np.float32))  # fmt: skip
        return predictions_to_arrays(sio.Skeleton(["head"]), [], [(0, 0, found)])

    def track_planes(arrays, planes, config):
        limits["tracks"] = config.max_tracks
        return arrays

    monkeypatch.setattr(napari_pose.nn.scaleout, "predict_one", predict_one)
    monkeypatch.setattr(napari_pose.nn.tracking, "track_planes", track_planes)
    command = ["predict", str(tmp_path / "v.mp4"), "-m", str(tmp_path / "model"), "-o",
               str(tmp_path / "p.slp"), "--quiet", "--tracker"]  # fmt: skip
    return command, limits


@pytest.mark.parametrize(("options", "said"), [
    (["--animals", "3"], "3 (--animals)"),
    (["--animals", "3", "--max-tracks", "3"], "3 (--animals)"),
    (["--max-instances", "3"], "3 (--max-instances, now called --animals)"),
    (["--max-tracks", "3"], "3 (--max-tracks, now called --animals)"),
    ([], "2 (the most in the training labels; change with --animals)"),
], ids=["animals", "same twice", "old detection name", "old tracking name", "default"])  # fmt: skip
def test_one_number_of_animals_limits_detection_and_tracking(recorded_runs, capsys, options,
                                                             said):  # fmt: skip
    """``--animals`` (or either of its old names) caps the animals found per frame and the
    tracks; by default both follow the most animals a training frame held."""
    command, limits = recorded_runs
    assert main([*command, *options]) == 0
    n = int(said.split()[0])
    assert limits == {"detection": n, "tracks": n, "flip_tta": False}
    assert capsys.readouterr().out.startswith(f"animals per frame: {said}\n")


def test_two_numbers_of_animals_are_refused(recorded_runs, tmp_path, capsys):
    command, limits = recorded_runs
    assert main([*command, "--animals", "3", "--max-tracks", "2"]) == 2
    assert capsys.readouterr().err == (
        "error: --animals 3 and --max-tracks 2 disagree: give the number of animals once, "
        "with --animals\n"
    )
    assert limits == {} and not (tmp_path / "p.slp").exists()
    assert main(["track", str(tmp_path / "p.slp"), "-o", str(tmp_path / "t.slp"),
                 "--max-tracks", "2", "--animals", "1"]) == 2  # fmt: skip
    assert capsys.readouterr().err == (
        "error: --max-tracks 2 and --animals 1 disagree: give the number of animals once, "
        "with --animals\n"
    )


def test_flip_tta_and_refinement_reach_prediction_and_tracks(recorded_runs, tmp_path, capsys,
                                                             monkeypatch):  # fmt: skip
    """``--flip-tta`` and ``--rotation-tta`` reach the predictor; ``--refine`` refines the tracked poses, and asks
    for ``--tracker`` (it works along tracks) before anything is predicted."""
    import napari_pose.nn.refine

    command, limits = recorded_runs
    refined = []
    monkeypatch.setattr(napari_pose.nn.refine, "refine_tracks",
                        lambda arrays: refined.append(len(arrays)) or arrays)  # fmt: skip
    assert main([*command, "--flip-tta", "--rotation-tta", "15", "--refine"]) == 0
    assert limits["flip_tta"] and limits["rotation_tta"] == 15 and refined == [1]
    capsys.readouterr()
    no_tracker = [arg for arg in command if arg != "--tracker"]
    assert main([*no_tracker, "--refine", "-o", str(tmp_path / "q.slp")]) == 2
    assert capsys.readouterr().err == "error: --refine works along tracks: add --tracker\n"
    assert refined == [1] and not (tmp_path / "q.slp").exists()


def test_check_command_flags_a_planted_mistake_and_writes_a_report(tmp_path, capsys):
    """``check``: exit 1 and one line per flag with a mistake (JSON report too), 0 when clean,
    2 with one error line for a missing file."""
    import json

    from napari_pose.core.io import save_labels
    from napari_pose.core.synthetic import HEAD, THORAX, make_synthetic, to_labels

    data = make_synthetic(n_frames=30, size=128, n_animals=2, seed=1)
    labels = to_labels(data, str(tmp_path / "v.mp4"))  # no video: no frame size, no outside
    save_labels(labels, tmp_path / "clean.slp")
    assert main(["check", str(tmp_path / "clean.slp")]) == 0
    assert "0 flagged: the labels look clean" in capsys.readouterr().out

    xy = labels.find(labels.video, 11)[0].instances[1].points["xy"]
    xy[HEAD] = xy[THORAX] + 5 * (xy[HEAD] - xy[THORAX])
    save_labels(labels, tmp_path / "bad.slp")
    report = tmp_path / "report.json"
    assert main(["check", str(tmp_path / "bad.slp"), "--json", str(report)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("v.mp4 frame 11 instance 1: [edge] head is far from")
    assert lines[-1] == "1 flagged (1 edge)"
    written = json.loads(report.read_text())
    assert written["counts"] == {"swap": 0, "edge": 1, "duplicate": 0, "outside": 0}
    assert [(f["kind"], f["frame"], f["instance"], f["nodes"]) for f in written["flags"]] == [
        ("edge", 11, 1, ["head"])
    ]

    assert main(["check", str(tmp_path / "nope.slp")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.slp'}: file not found\n"


def test_suggest_command_prints_model_frames_with_reasons(project_and_model, tmp_path, capsys):
    """``suggest -m``: the unlabelled frames (8-11) the tiny model is least sure of, each with
    its reason, in print and in JSON; the other methods need no model."""
    import json

    project, model = project_and_model
    report = tmp_path / "suggest.json"
    assert main(["suggest", str(project), "-m", str(model), "-n", "2", "--json", str(report),
                 "--quiet"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "2 frames suggested (model)" and len(lines) == 3
    assert all(line.startswith("v.mp4 frame ") and "(score " in line for line in lines[:2])
    written = json.loads(report.read_text())
    assert written["method"] == "model" and len(written["suggestions"]) == 2
    assert all(s["frame"] >= 8 and s["reason"] for s in written["suggestions"])

    assert main(["suggest", str(project), "--method", "strided", "-n", "2"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "v.mp4 frame 8: strided",
        "v.mp4 frame 11: strided",
        "2 frames suggested (strided)",
    ]


@pytest.mark.parametrize("extra, message", [
    (["--method", "model"], "--method model needs a model package folder"),
    (["-m", "MODEL", "--method", "random"], "-m is only used by --method model"),
    (["-m", "NOT_A_MODEL"], "NOT_A_MODEL"),
    (["--method", "strided", "-n", "0"], "-n must be at least 1"),
])  # fmt: skip
def test_suggest_command_reports_bad_input_in_one_line(project_and_model, tmp_path, capsys,
                                                       extra, message):  # fmt: skip
    project, model = project_and_model
    extra = [str(model) if e == "MODEL" else str(tmp_path) + "/x" if e == "NOT_A_MODEL" else e
             for e in extra]  # fmt: skip
    assert main(["suggest", str(project), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message.replace("NOT_A_MODEL", str(tmp_path / "x")) in err
