"""The *Proofread* dock in a real viewer on the two-fly clip: identity edits reach the file."""

from __future__ import annotations

import numpy as np
import pytest
from gui import press

from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari._qt.proofread_widget import RESCORE_DELAY_MS
from napari_pose.napari.convert import POSE_KEY, TRACKS_KEY
from napari_pose.napari.session import projects

pytestmark = pytest.mark.gui


@pytest.fixture
def opened(make_napari_viewer, sleap_dir, tmp_path):
    """A viewer with a copy of clip.slp open (a windowed labels layer: 2 flies x 1500 frames)
    and the dock; a copy, since edits are autosaved beside the file they came from."""
    for name in ("clip.slp", "clip.mp4"):
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "clip.slp"), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
    return viewer, widget


def project(viewer):
    """The open project as its layers hold it now, every frame."""
    (session,) = projects(viewer).listed().values()
    return session.current()


def tracks_layers(viewer):
    return [layer for layer in viewer.layers if TRACKS_KEY in layer.metadata]


def test_swap_from_a_frame_is_saved_and_undone(opened, qtbot, tmp_path):
    viewer, widget = opened
    points = next(layer for layer in viewer.layers if POSE_KEY in layer.metadata)
    assert widget.layer.value is points and points.metadata[POSE_KEY].window is not None
    assert (widget.track_a.current_choice, widget.track_b.current_choice) == ("female", "male")
    before = labels_to_arrays(project(viewer))
    viewer.dims.set_current_step(0, 700)  # the layer and trajectories now hold frames near 700
    on_700 = points.data[:, 0] == 700
    tracks_700 = dict(zip(points.features["instance"][on_700], points.features["track"][on_700]))
    (tracks,) = tracks_layers(viewer)
    female_at_750 = tracks.data[(tracks.data[:, 0] == 0) & (tracks.data[:, 1] == 750)]
    assert len(female_at_750) == 1

    press(qtbot, widget.swap)
    after = labels_to_arrays(project(viewer))
    late = before.frame >= 700
    np.testing.assert_array_equal(after.track[late], 1 - before.track[late])
    np.testing.assert_array_equal(after.track[~late], before.track[~late])
    np.testing.assert_array_equal(after.xy, before.xy)
    assert "from frame 700" in widget.status.value
    # The layer shows it, and the trajectories follow: the male is now where the female was.
    on_700 = points.data[:, 0] == 700
    swapped = dict(zip(points.features["instance"][on_700], points.features["track"][on_700]))
    other = {"female": "male", "male": "female"}
    assert swapped == {i: other[t] for i, t in tracks_700.items()}
    male_at_750 = tracks.data[(tracks.data[:, 0] == 1) & (tracks.data[:, 1] == 750)]
    np.testing.assert_allclose(male_at_750, female_at_750 + [1, 0, 0, 0])

    save_labels(project(viewer), tmp_path / "swapped.slp")
    reopened = labels_to_arrays(load_labels(tmp_path / "swapped.slp"))
    np.testing.assert_array_equal(reopened.track, after.track)
    assert [t.name for t in reopened.tracks] == ["female", "male"]

    press(qtbot, widget.undo)
    np.testing.assert_array_equal(labels_to_arrays(project(viewer)).track, before.track)


def test_next_suspicious_frame_finds_a_swap_and_the_plot_seeks(opened, qtbot):
    from qtpy.QtCore import QPoint, Qt

    viewer, widget = opened
    viewer.dims.set_current_step(0, 700)
    press(qtbot, widget.swap)  # an identity swap at frame 700, as a tracker would make
    viewer.dims.set_current_step(0, 0)
    press(qtbot, widget.next)
    assert viewer.dims.current_step[0] == 700
    assert "frame 700: suspicious #1" in widget.status.value and "jump" in widget.status.value
    assert widget.plot.current == 700 and widget.plot.values.argmax() == 700
    assert not widget.plot.grab().isNull()  # paints (off screen too)
    press(qtbot, widget.next)  # the next one, less suspicious
    assert viewer.dims.current_step[0] == widget.ranked[1] != 700
    press(qtbot, widget.previous)
    assert viewer.dims.current_step[0] == 700

    press(qtbot, widget.swap)  # fixed: 700 is no longer suspicious
    assert 700 not in widget.ranked

    x = widget.plot.width() // 4
    qtbot.mouseClick(widget.plot, Qt.MouseButton.LeftButton, pos=QPoint(x, 30))
    assert 0 < viewer.dims.current_step[0] == widget.plot.frame_at(x) == widget.plot.current


def test_set_rename_merge_and_delete_act_on_the_layers(opened, qtbot):
    viewer, widget = opened
    points = next(layer for layer in viewer.layers if POSE_KEY in layer.metadata)
    before = labels_to_arrays(project(viewer))

    # One instance to track A: the other fly of that frame takes its old track.
    viewer.dims.set_current_step(0, 300)
    male = np.flatnonzero((points.data[:, 0] == 300) & (points.features["track"] == "male"))
    points.selected_data = set(male.tolist())
    press(qtbot, widget.set_a)
    after = labels_to_arrays(project(viewer))
    changed = np.flatnonzero(after.track != before.track)
    assert set(before.frame[changed]) == {300} and len(changed) == 2
    press(qtbot, widget.undo)
    np.testing.assert_array_equal(labels_to_arrays(project(viewer)).track, before.track)

    widget.new_name.value = "fly A"
    press(qtbot, widget.rename)
    shown = set(points.features["track"])
    assert "fly A" in shown and "female" not in shown
    assert [t.name for t in project(viewer).tracks] == ["fly A", "male"]
    assert widget.track_a.current_choice == "fly A"

    press(qtbot, widget.merge)  # both flies are on every frame: refused, nothing changes
    assert "1500 frame(s)" in widget.status.value
    assert [t.name for t in project(viewer).tracks] == ["fly A", "male"]
    np.testing.assert_array_equal(labels_to_arrays(project(viewer)).track, before.track)

    press(qtbot, widget.delete)
    deleted = labels_to_arrays(project(viewer))
    assert [t.name for t in deleted.tracks] == ["male"]
    assert (deleted.track == -1).sum() == 1500 and len(deleted) == len(before)
    assert set(points.features["track"]) == {"male", ""}
    (tracks,) = tracks_layers(viewer)
    assert set(tracks.data[:, 0]) == {0}
    press(qtbot, widget.delete)  # nothing tracked any more: no trajectories to draw
    assert not tracks_layers(viewer) and widget.track_a.value is None
    press(qtbot, widget.undo)
    (tracks,) = tracks_layers(viewer)
    assert [t.name for t in project(viewer).tracks] == ["male"] and set(tracks.data[:, 0]) == {0}


def test_evaluation_compares_predictions_with_the_labels(opened, qtbot, sleap_dir):
    viewer, widget = opened
    viewer.open(str(sleap_dir / "tracks" / "clip.predictions.slp"), plugin="napari-pose")
    assert widget.truth.choices == ("clip.slp", "clip.predictions.slp")
    assert widget.evaluated.value.metadata[POSE_KEY].predicted
    widget.truth.value = "clip.slp"
    press(qtbot, widget.evaluate_button)
    assert "OKS mAP" in widget.results.value and "instances matched" in widget.results.value
    assert "PCK@2/5/10px" in widget.results.value and "visibility precision" in widget.results.value
    assert widget.node_errors.names == ["head", "thorax"]  # the nodes both files have
    assert np.isfinite(widget.node_errors.values).all()
    widget.node_errors.grab()  # paints the bars without raising
    frames = list(widget.worst.choices)
    assert 0 < len(frames) <= 20
    widget.worst.value = frames[-1]
    assert viewer.dims.current_step[0] == frames[-1]


@pytest.fixture
def labelling(make_napari_viewer, sleap_dir, tmp_path, monkeypatch):
    """A copy of clip.slp (and its video) open with both docks: the *Label poses* dock binds its
    labels layer, so its autosaver writes ``clip.autosave.slp`` beside the copy."""
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    for name in ("clip.slp", "clip.mp4"):
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "clip.slp"), plugin="napari-pose")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    _, proofread = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
    assert label.autosaver is not None and not label.autosaver.dirty
    return viewer, label, proofread, tmp_path / "clip.slp"


def test_proofreading_edits_are_autosaved(labelling, qtbot):
    viewer, label, proofread, path = labelling
    before = labels_to_arrays(project(viewer))
    viewer.dims.set_current_step(0, 700)
    press(qtbot, proofread.swap)
    assert label.autosaver.dirty

    assert label.autosaver.flush() is None  # what the Label dock's timer does when idle
    sidecar = labels_to_arrays(load_labels(path.with_name("clip.autosave.slp")))
    names = [t.name for t in sidecar.tracks]
    assert names == ["female", "male"]
    on_700 = before.frame == 700
    assert {names[t] for t in sidecar.track[on_700]} == {"female", "male"}
    np.testing.assert_array_equal(sidecar.track[on_700], 1 - before.track[on_700])
    np.testing.assert_array_equal(sidecar.track, labels_to_arrays(project(viewer)).track)

    press(qtbot, proofread.undo)  # undoing is an edit too: the autosave must follow it
    assert label.autosaver.flush() is None
    undone = labels_to_arrays(load_labels(path.with_name("clip.autosave.slp")))
    np.testing.assert_array_equal(undone.track, before.track)


def test_close_guard_asks_about_unsaved_proofreading_without_the_label_dock(
    make_napari_viewer, qtbot, sleap_dir, tmp_path, monkeypatch
):
    """Proofread alone (no Label dock): the rename is autosaved and napari asks on closing."""
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    from napari_pose.napari._qt import services
    from napari_pose.napari.session import projects

    for name in ("clip.slp", "clip.mp4"):
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    path = tmp_path / "clip.slp"
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pose")
    _, proofread = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
    proofread.new_name.value = "fly A"
    press(qtbot, proofread.rename)
    (session,) = projects(viewer).sessions
    qtbot.waitUntil(lambda: path.with_name("clip.autosave.slp").exists(), timeout=5000)
    sidecar = load_labels(path.with_name("clip.autosave.slp"))
    assert [t.name for t in sidecar.tracks] == ["fly A", "male"]  # debounced autosave

    asked = []
    monkeypatch.setattr(services, "ask_unsaved", lambda names: asked.append(names) or "cancel")
    event = QCloseEvent()
    QApplication.sendEvent(proofread.native.window(), event)
    assert asked == [["clip.slp"]] and not event.isAccepted()  # napari stays open

    monkeypatch.setattr(services, "ask_unsaved", lambda names: "save")
    assert services.close_allowed(projects(viewer))
    assert [t.name for t in load_labels(path).tracks] == ["fly A", "male"]
    assert not session.dirty


def test_a_and_b_start_apart_and_a_track_is_never_swapped_or_merged_with_itself(
    make_napari_viewer, qtbot, sleap_dir, tmp_path
):
    for name in ("clip.slp", "clip.mp4"):  # a copy: a swap would be autosaved beside the file
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")  # docked first
    viewer.open(str(tmp_path / "clip.slp"), plugin="napari-pose")
    assert (widget.track_a.current_choice, widget.track_b.current_choice) == ("female", "male")
    before = labels_to_arrays(project(viewer))

    widget.track_b.value = widget.track_a.value  # the user picks the same track twice
    viewer.dims.set_current_step(0, 1400)  # the layer's window moves: the dock reads it again
    qtbot.wait(RESCORE_DELAY_MS + 200)
    assert widget.track_b.current_choice == "female"  # the user's choice, not changed under them
    press(qtbot, widget.swap)
    assert "'female' cannot be swapped with itself" in widget.status.value
    press(qtbot, widget.merge)
    assert "'female' cannot be merged into itself" in widget.status.value
    after = labels_to_arrays(project(viewer))
    np.testing.assert_array_equal(after.track, before.track)
    assert [t.name for t in after.tracks] == ["female", "male"]
    press(qtbot, widget.undo)  # refusals are not edits
    assert widget.status.value == "nothing to undo"


def test_the_worst_frames_are_listed_when_the_predictions_video_lies_elsewhere(
    opened, qtbot, sleap_dir, tmp_path
):
    """Predictions of a copy of the video: frames are matched by file name and frame count."""
    viewer, widget = opened
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("clip.predictions.slp", "clip.mp4"):
        (elsewhere / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    viewer.open(str(elsewhere / "clip.predictions.slp"), plugin="napari-pose")
    widget.truth.value = "clip.slp"
    press(qtbot, widget.evaluate_button)
    assert "OKS mAP" in widget.results.value and 0 < len(widget.worst.choices) <= 20
