"""The plugin in a real napari viewer: open projects, step frames, locate videos, save."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari import convert
from napari_pose.napari.convert import EDGES_KEY, POSE_KEY, TRACKS_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from big_file import tile_as_predictions

pytestmark = pytest.mark.gui


def _by_type(viewer, kind):
    return [layer for layer in viewer.layers if type(layer).__name__ == kind]


def test_open_clip_project(make_napari_viewer, data_dir, tmp_path):
    for name in ("clip.slp", "clip.mp4"):  # a copy: the point moved below is autosaved beside it
        (tmp_path / name).write_bytes((data_dir / "sleap/tracks" / name).read_bytes())
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "clip.slp"), plugin="napari-pose")
    (image,) = _by_type(viewer, "Image")
    assert image.data.shape == (1500, 1024, 1024) and not image.rgb
    (points,) = _by_type(viewer, "Points")
    (edges,) = _by_type(viewer, "Vectors")
    (tracks,) = _by_type(viewer, "Tracks")
    assert points.name == "clip labels"
    # 38,363 points are more than a layer re-slices quickly: it holds the frames around the
    # one on screen, every point of those frames.
    binding = points.metadata[POSE_KEY]
    start, stop = binding.window
    assert start <= viewer.dims.current_step[0] < stop
    held = binding.arrays.select((binding.arrays.frame >= start) & (binding.arrays.frame < stop))
    assert len(points.data) == np.isfinite(held.xy[..., 0]).sum() < 38363

    # Frame 700's edges join frame 700's points (napari shows each frame's vectors).
    viewer.dims.set_current_step(0, 700)
    frame_edges = edges.data[edges.data[:, 0, 0] == 700]
    on_frame = points.data[points.data[:, 0] == 700]
    starts = {tuple(p) for p in frame_edges[:, 0, 1:]}
    assert len(frame_edges) > 0 and starts <= {tuple(p) for p in on_frame[:, 1:]}

    # Frame 700 of the image is exactly frame 700 of the video (frame-accurate, lazy).
    from napari_pose.core.video import VideoReader

    with VideoReader(data_dir / "sleap/tracks/clip.mp4") as reader:
        np.testing.assert_array_equal(np.asarray(image.data[700]), reader[700])

    # Moving a point redraws the edges at once.
    row = int(np.flatnonzero((points.data[:, 0] == 700) & (points.features["node"] == "head"))[0])
    moved = points.data.copy()
    moved[row, 1:] += 25
    points.data = moved
    frame_edges = edges.data[edges.data[:, 0, 0] == 700]
    assert tuple(moved[row, 1:]) in {tuple(p) for p in frame_edges[:, 0, 1:]} | {
        tuple(p) for p in (frame_edges[:, 0, 1:] + frame_edges[:, 1, 1:])
    }
    assert (
        set(tracks.data[:, 0]) == {0, 1}
        and tracks.data[:, 1].min() <= 700 <= tracks.data[:, 1].max()
    )


def test_save_from_widget_and_reopen(make_napari_viewer, data_dir, tmp_path):
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.slp"), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    assert widget.project.value == "clip.slp"
    assert "tracks: female, male" in widget.info.value and "video clip: ok" in widget.info.value

    (points,) = _by_type(viewer, "Points")
    moved = points.data.copy()
    moved[0, 1:] = [111.5, 222.25]
    points.data = moved
    widget.save_path.value = tmp_path / "edited.slp"
    widget.save.clicked.emit()  # what a click does

    saved = sio.load_slp(tmp_path / "edited.slp", open_videos=False)
    original = sio.load_slp(data_dir / "sleap/tracks/clip.slp", open_videos=False)
    a, b = labels_to_arrays(original), labels_to_arrays(saved)
    changed = {tuple(i[:2]) for i in np.argwhere(~np.isclose(a.xy, b.xy, equal_nan=True))}
    assert len(changed) == 1  # exactly the moved point, on its frame and node
    ((row, node),) = changed
    assert a.frame[row] == moved[0, 0] and node == points.features["node"].cat.codes[0]
    assert b.xy[row, node].tolist() == [222.25, 111.5]
    assert [t.name for t in saved.tracks] == ["female", "male"]
    np.testing.assert_array_equal(a.visible, b.visible)
    np.testing.assert_array_equal(a.track, b.track)


def test_missing_video_warns_and_can_be_located(make_napari_viewer, data_dir, tmp_path):
    labels_file = tmp_path / "minimal_instance.slp"
    shutil.copy(data_dir / "sleap/slp_hdf5/minimal_instance.slp", labels_file)
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="centered_pair_low_quality.mp4"):
        viewer.open(str(labels_file), plugin="napari-pose")
    assert not _by_type(viewer, "Image")
    (points,) = _by_type(viewer, "Points")
    assert len(points.data) == 4  # the labels still open

    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    assert "MISSING" in widget.info.value
    assert widget.missing.value.endswith("centered_pair_low_quality.mp4")
    widget.video_file.value = data_dir / "sleap/json_format_v1/centered_pair_low_quality.mp4"
    widget.locate.clicked.emit()
    (image,) = _by_type(viewer, "Image")
    assert image.data.shape[0] == 1100 and viewer.layers.index(image) == 0
    assert "MISSING" not in widget.info.value

    widget.save_path.value = tmp_path / "fixed.slp"
    widget.save.clicked.emit()
    fixed = sio.load_slp(tmp_path / "fixed.slp", open_videos=False)
    assert Path(fixed.videos[0].filename).name == "centered_pair_low_quality.mp4"
    assert Path(fixed.videos[0].filename).exists()


def test_big_file_is_windowed_and_window_follows_frame(make_napari_viewer, data_dir, tmp_path):
    big = tile_as_predictions(data_dir / "sleap/tracks/clip.slp", tmp_path / "big.slp", 6000)
    shutil.copy(data_dir / "sleap/tracks/clip.mp4", tmp_path / "clip.mp4")
    viewer = make_napari_viewer()
    viewer.open(str(big), plugin="napari-pose")
    width = 2 * convert.WINDOW_HALF_WIDTH + 1
    predictions = next(l for l in viewer.layers if l.name == "clip predictions")
    binding = predictions.metadata[POSE_KEY]
    shown = viewer.dims.current_step[0]  # napari opens on a frame of its choosing
    start, stop = binding.window
    assert stop - start == width and start <= shown < stop
    assert start <= predictions.data[:, 0].min() and predictions.data[:, 0].max() < stop
    assert len(predictions.data) <= 26 * width  # a window, not all 6000 frames
    (tracks,) = _by_type(viewer, "Tracks")
    assert tracks.metadata[TRACKS_KEY].window[0] <= shown < tracks.metadata[TRACKS_KEY].window[1]

    viewer.dims.set_current_step(0, 1400)  # the video has 1500 frames
    assert binding.window[0] <= 1400 < binding.window[1]
    assert 1400 in predictions.data[:, 0] and predictions.data[:, 0].min() >= binding.window[0]
    edges = next(l for l in viewer.layers if l.metadata.get(EDGES_KEY) is binding)
    assert (edges.data[:, 0, 0] == 1400).any()
    assert edges.data[:, 0, 0].min() >= binding.window[0]  # the window's edges only
    assert tracks.data[:, 1].max() >= 1400

    # Edits made in one window survive moving away and saving (every frame is written).
    row = int(np.flatnonzero(predictions.data[:, 0] == 1400)[0])
    moved = predictions.data.copy()
    moved[row, 1:] = [5.0, 6.0]
    predictions.data = moved
    viewer.dims.set_current_step(0, 100)
    assert binding.window[0] <= 100
    out = tmp_path / "saved.slp"
    viewer.layers.selection = {predictions}
    viewer.layers.save(str(out), selected=True, plugin="napari-pose")
    saved = labels_to_arrays(sio.load_slp(out, open_videos=False))
    assert len(saved) == 12000 and saved.frame.max() == 5999
    at_1400 = saved.select(saved.frame == 1400)
    assert np.any(np.all(at_1400.xy == [6.0, 5.0], axis=-1))


def test_sample_project_opens(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pose", "synthetic_project")
    (image,) = _by_type(viewer, "Image")
    assert image.data.shape == (200, 256, 256)
    points = next(l for l in viewer.layers if l.name.endswith("labels"))
    assert len(points.data) > 0 and set(points.features["track"]) >= {"animal_0", "animal_1"}
    viewer.open_sample("napari-pose", "synthetic_video")
    assert len(_by_type(viewer, "Image")) == 2


def test_the_frame_axis_is_named(make_napari_viewer, tmp_path, monkeypatch):
    """napari's slider of a video says "frame", and every layer of the video agrees."""
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path))
    viewer = make_napari_viewer()
    viewer.open_sample("napari-pose", "synthetic_project")
    assert {type(layer).__name__ for layer in viewer.layers} == {"Image", "Points", "Vectors",
                                                                 "Tracks"}  # fmt: skip
    for layer in viewer.layers:
        assert layer.axis_labels == ("frame", "y", "x"), layer.name
    assert viewer.dims.axis_labels == ("frame", "y", "x")


@pytest.mark.parametrize("name", ["not_a_video.mp4", "truncated.slp"])
def test_bad_files_give_one_clear_error(make_napari_viewer, data_dir, tmp_path, name):
    bad = tmp_path / name
    if name.endswith(".mp4"):
        bad.write_text("this is a text file, not a video\n")
    else:
        bad.write_bytes((data_dir / "sleap/tracks/clip.slp").read_bytes()[:3000])
    viewer = make_napari_viewer()
    with pytest.raises(Exception) as info:
        viewer.open(str(bad), plugin="napari-pose")
    assert name in str(info.value)
    assert len(viewer.layers) == 0  # nothing half-opened, napari still alive
