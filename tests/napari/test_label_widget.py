"""Labelling in a real viewer: clicks place nodes, buttons edit, saving writes every label."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import sleap_io as sio
import tifffile
from gui import press
from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

from napari_pose.core.pose_arrays import labels_to_arrays
from tiny_models import train_tiny

pytestmark = pytest.mark.gui


def click(viewer, layer, yx):
    """A left click (press + release, no drag) at data position ``yx`` on the current plane."""
    world = np.array(viewer.dims.point, float)
    world[-2:] = layer.data_to_world([*np.zeros(layer.ndim - 2), *yx])[-2:]
    event = SimpleNamespace(type="mouse_press", position=tuple(world), button=1, modifiers=(),
                            handled=False, dims_displayed=list(viewer.dims.displayed),
                            view_direction=None)  # fmt: skip
    mouse_press_callbacks(layer, event)
    event.type = "mouse_release"
    mouse_release_callbacks(layer, event)


def press_key(layer, key: str) -> None:
    """Run the layer's binding for ``key``, as napari does when the key is pressed on it."""
    from app_model.types import KeyBinding

    layer.keymap[KeyBinding.from_str(key)](layer)


def test_label_video_then_save_and_reopen(make_napari_viewer, qtbot, tmp_path, data_dir):
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.mp4"), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    press(qtbot, widget.start)
    labeller = widget.labeller
    assert labeller is not None and labeller.layer.name == "clip labels"
    layer = labeller.layer

    viewer.dims.set_current_step(0, 100)
    n_nodes = labeller.n_nodes
    clicks = {}
    for inst in range(2):
        if inst:
            press(qtbot, widget.buttons["new_instance"])
        for node in range(n_nodes):
            yx = (100.0 + 300 * inst + 11 * node, 200.0 + 13 * node)
            click(viewer, layer, yx)
            clicks[(inst, node)] = yx
        widget.new_track.value = f"fly{inst}"
        press(qtbot, widget.set_track_button)
    assert len(layer.data) == 2 * n_nodes
    assert "✓" in widget.status.value
    # Occlude node 2 of the second instance (the current one).
    widget.node.value = labeller.node_names[2]
    press(qtbot, widget.buttons["toggle_occluded"])
    # Copy frame 100 to frame 101, then move one copied point.
    viewer.dims.set_current_step(0, 101)
    press(qtbot, widget.buttons["copy_previous_frame"])
    assert (layer.data[:, 0] == 101).sum() == 2 * n_nodes
    # Undo the copy, redo it with the key binding.
    press(qtbot, widget.buttons["undo"])
    assert (layer.data[:, 0] == 101).sum() == 0
    press_key(layer, "c")
    assert (layer.data[:, 0] == 101).sum() == 2 * n_nodes

    out = tmp_path / "clip_labels.slp"
    widget.save_labels(out)
    saved = sio.load_slp(out, open_videos=False)
    arrays = labels_to_arrays(saved)
    assert sorted(set(arrays.frame.tolist())) == [100, 101] and len(arrays) == 4
    assert [t.name for t in saved.tracks] == ["fly0", "fly1"]
    for frame in (100, 101):
        on = arrays.select(arrays.frame == frame)
        for inst in range(2):
            row = on.track.tolist().index(inst)
            expected = np.array([clicks[(inst, n)][::-1] for n in range(n_nodes)])
            np.testing.assert_allclose(on.xy[row], expected)
            visible = np.ones(n_nodes, bool)
            if inst == 1:
                visible[2] = False
            np.testing.assert_array_equal(on.visible[row], visible)
    assert saved.videos[0].filename.endswith("clip.mp4")


def test_label_zstack_planes(make_napari_viewer, qtbot, tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (3, 4, 64, 64), dtype=np.uint8)
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, stack, ome=True, metadata={"axes": "TZYX"})
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    press(qtbot, widget.start)
    layer = widget.labeller.layer
    assert layer.ndim == 4
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 3)
    for node in range(widget.labeller.n_nodes):
        click(viewer, layer, (10.0 + node, 20.0 + node))
    assert np.all(layer.data[:, :2] == [2, 3])
    out = tmp_path / "stack.slp"
    widget.save_labels(out)
    arrays = labels_to_arrays(sio.load_slp(out, open_videos=False))
    assert arrays.frame.tolist() == [2 * 4 + 3]  # plane (t=2, z=3) of a (3, 4) stack
    assert arrays.xy[0, 0].tolist() == [20.0, 10.0]


def test_skeleton_edits_follow_into_every_instance(make_napari_viewer, qtbot, data_dir, tmp_path,
                                                   clip_copy):  # fmt: skip
    """Rename, reorder, delete (with confirmation) and edges on clip.slp's 13-node project (a
    copy: edits are autosaved beside the file)."""
    viewer = make_napari_viewer()
    viewer.open(str(clip_copy), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
    _, labels_widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.layer.value
    before = layer.metadata["napari_pose"].merged(layer.data, layer.features)
    head = before.xy[:, 0].copy()

    widget.node.value, widget.node_name.value = "head", "Head"
    press(qtbot, widget.node_buttons["rename"])
    widget.node.value = "thorax"
    press(qtbot, widget.node_buttons["move up"])  # thorax now first, Head second
    assert widget.skeleton.node_names[:2] == ["thorax", "Head"]
    assert "Head" in labels_widget.node.choices

    asked = []
    widget.confirm = lambda question: asked.append(question) or False
    widget.node.value = "wingL"
    press(qtbot, widget.node_buttons["delete"])  # refused: nothing changes
    assert "wingL" in widget.skeleton.node_names and "points" in asked[0]
    widget.confirm = lambda question: True
    press(qtbot, widget.node_buttons["delete"])
    assert "wingL" not in widget.skeleton.node_names
    assert "wingL" not in set(layer.features["node"])

    widget.node.value, widget.other.value = "Head", "eyeL"
    press(qtbot, widget.pair_buttons["add edge"])
    out = tmp_path / "edited.slp"
    labels_widget.save_labels(out)
    saved = sio.load_slp(out, open_videos=False)
    skeleton = saved.skeletons[0]
    assert skeleton.node_names[:2] == ["thorax", "Head"] and len(skeleton.nodes) == 12
    assert ("Head", "eyeL") in [(a.name, b.name) for a, b in skeleton.edges]
    after = labels_to_arrays(saved)
    np.testing.assert_array_equal(after.xy[:, 1], head)  # Head's points moved with it


def test_suggestions_colours_and_names(make_napari_viewer, qtbot, sample_project):
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.labeller.layer
    labels = layer.metadata["napari_pose"].labels
    # The sample labels every frame: delete frame 5's instances so there is something to suggest.
    viewer.dims.set_current_step(0, 5)
    for inst in set(layer.features["instance"][layer.data[:, 0] == 5]):
        widget.labeller.select(inst)
        press(qtbot, widget.buttons["delete_instance"])
    assert not (layer.data[:, 0] == 5).any()
    before = {s.frame_idx for s in labels.suggestions}

    widget.method.value, widget.n_suggestions.value = "diverse", 3
    worker = widget.start_suggestions()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    new = {s.frame_idx for s in labels.suggestions} - before
    assert new == {5}  # the only unlabelled frame
    assert 5 in widget.suggested.choices
    viewer.dims.set_current_step(0, 100)
    widget.labeller.next_suggestion()
    after_100 = sorted(f for f in {s.frame_idx for s in labels.suggestions} if f > 100)
    assert viewer.dims.current_step[0] == (after_100[0] if after_100 else min(before | new))

    widget.color_by.value = "track"
    assert layer.face_color_mode == "cycle"
    colours = {tuple(c) for c in layer.face_color}
    assert len(colours) == len(set(layer.features["track"]))
    widget.names.value = True
    assert layer.text.visible and "head" in set(layer.text.values)


def test_autosave_restore_and_close_guard(make_napari_viewer, qtbot, sample_project, monkeypatch):
    from qtpy.QtGui import QCloseEvent
    from qtpy.QtWidgets import QApplication

    from napari_pose.core.autosave import recovery_for
    from napari_pose.napari._qt import services

    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    assert widget.restore.native.isHidden()
    layer = widget.labeller.layer
    viewer.dims.set_current_step(0, 7)
    widget.labeller.new_instance()
    click(viewer, layer, (33.0, 44.0))
    assert widget.autosaver.dirty
    widget.autosaver.flush()
    assert recovery_for(sample_project) is not None

    # Closing with unsaved labels asks; "cancel" keeps napari open.
    qtbot.wait(10)  # let the widget find its window
    asked = []
    monkeypatch.setattr(services, "ask_unsaved", lambda names: asked.append(names) or "cancel")
    event = QCloseEvent()
    QApplication.sendEvent(widget.native.window(), event)
    assert not event.isAccepted() and asked == [[sample_project.name]]
    monkeypatch.setattr(services, "ask_unsaved", lambda names: "discard")

    # The project leaves this viewer with its edits in the autosave; a new session (as after a
    # crash) offers them and restores them.
    viewer.layers.clear()
    viewer2 = make_napari_viewer()
    viewer2.open(str(sample_project), plugin="napari-pose")
    _, widget2 = viewer2.window.add_plugin_dock_widget("napari-pose", "Label poses")
    assert not widget2.restore.native.isHidden() and "Restore autosave" in widget2.restore.text
    press(qtbot, widget2.restore)
    restored = widget2.labeller.layer
    assert any(np.allclose(row, [7, 33.0, 44.0]) for row in restored.data)
    widget2.save_labels()
    saved = labels_to_arrays(sio.load_slp(sample_project, open_videos=False))
    assert np.any(np.all(np.isclose(saved.xy[saved.frame == 7], [44.0, 33.0]), axis=-1))
    assert recovery_for(sample_project) is None  # saving removed the autosave


def test_start_from_skeleton_file_and_double_click_prediction(make_napari_viewer, qtbot, data_dir,
                                                              clip_copy):  # fmt: skip
    """A skeleton from a DLC config; a double click turns a prediction into a user instance."""
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.mp4"), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    widget.skeleton_file.value = data_dir / "deeplabcut/openfield/config.yaml"
    press(qtbot, widget.start)
    assert widget.labeller.node_names == ["snout", "leftear", "rightear", "tailbase"]

    viewer2 = make_napari_viewer()
    viewer2.open(str(clip_copy), plugin="napari-pose")  # a copy: the double click is an edit
    _, widget2 = viewer2.window.add_plugin_dock_widget("napari-pose", "Label poses")
    labeller = widget2.labeller
    viewer2.dims.set_current_step(0, 10)
    # A predictions layer holding copies of frame 10's instances (as after running a model).
    layer = labeller.layer
    on10 = layer.data[:, 0] == 10
    target = layer.data[on10][0, 1:]
    before = len(layer.data)
    from napari.utils.interactions import mouse_double_click_callbacks

    pred_layer = viewer2.add_points(
        layer.data[on10],
        features=layer.features[on10].assign(predicted=True, score=0.9),
        metadata={
            "napari_pose": type(labeller.binding)(
                labeller.binding.labels,
                labeller.binding.arrays.select(labeller.binding.arrays.frame < 0),
                labeller.binding.video,
                True,
                labeller.binding.plane_shape,
            )
        },
        name="clip predictions",
    )
    assert labeller._predictions_layer() is pred_layer
    world = np.array(viewer2.dims.point, float)
    world[-2:] = target
    event = SimpleNamespace(
        type="mouse_double_click",
        position=tuple(world),
        button=1,
        modifiers=(),
        handled=False,
        dims_displayed=[1, 2],
        view_direction=None,
    )
    mouse_double_click_callbacks(layer, event)
    added = layer.data[before:]
    assert len(added) > 0 and np.all(added[:, 0] == 10)
    assert set(layer.features["from_predicted"][before:]) <= set(pred_layer.features["instance"])
    assert not layer.features["predicted"][before:].any()


def test_rebinding_detaches_the_previous_layer(make_napari_viewer, qtbot, data_dir):
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.mp4"), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    press(qtbot, widget.start)
    first = widget.labeller.layer
    widget.template.value = "mouse"
    press(qtbot, widget.start)  # a second labels layer on the same image
    second = widget.labeller.layer
    assert second is not first
    n = len(first.data)
    click(viewer, first, (50.0, 50.0))  # the old layer no longer labels
    assert len(first.data) == n
    click(viewer, second, (50.0, 50.0))
    assert len(second.data) == 1


def test_autosaver_counts_edits_of_its_project_only(make_napari_viewer, qtbot, sample_project):
    """Edits reach the session of their own project; a restored autosave counts as one."""
    from napari_pose.napari.session import projects

    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    viewer.open_sample("napari-pose", "synthetic_project")  # a second project
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    other = next(s for s in projects(viewer).sessions if s is not widget.session)
    other.mark_edited()  # another project's edit: not this autosaver's
    assert not widget.autosaver.dirty and other.dirty
    widget.session.mark_edited()
    assert widget.autosaver.dirty
    assert widget.autosaver.flush() is None

    viewer.layers.clear()  # the project leaves, its edits in the autosave (as after a crash)
    viewer2 = make_napari_viewer()
    viewer2.open(str(sample_project), plugin="napari-pose")
    _, widget2 = viewer2.window.add_plugin_dock_widget("napari-pose", "Label poses")
    assert not widget2.autosaver.dirty and not widget2.restore.native.isHidden()
    press(qtbot, widget2.restore)
    assert widget2.autosaver.dirty  # the restored labels are not in the file yet


def gesture(viewer, layer, *path) -> None:
    """A left-button press at the first data position (y, x) of ``path`` on the current plane,
    moves with the button down through the others, and a release at the last, delivered to the
    layer's mouse callbacks as napari delivers them (one event object, updated in place)."""
    from napari.utils.interactions import mouse_move_callbacks

    def world(yx):
        point = np.array(viewer.dims.point, float)
        point[-2:] = layer.data_to_world([*np.zeros(layer.ndim - 2), *yx])[-2:]
        return tuple(point)

    event = SimpleNamespace(type="mouse_press", position=world(path[0]), pos=np.zeros(2),
                            button=1, modifiers=(), handled=False, is_dragging=False,
                            dims_displayed=list(viewer.dims.displayed),
                            view_direction=None)  # fmt: skip
    mouse_press_callbacks(layer, event)
    event.type, event.is_dragging = "mouse_move", True
    for yx in path[1:]:
        event.position = world(yx)
        mouse_move_callbacks(layer, event)
    event.type, event.is_dragging = "mouse_release", False
    mouse_release_callbacks(layer, event)


def sidecar_points(widget, frame: int) -> np.ndarray:
    """The (x, y) of every node of every instance on ``frame`` in the dock's autosave."""
    from napari_pose.core.io import load_labels

    arrays = labels_to_arrays(load_labels(widget.autosaver.path))
    return arrays.xy[arrays.frame == frame].reshape(-1, 2)


def holds(points: np.ndarray, xy) -> bool:
    return bool(np.isclose(points, xy).all(axis=1).any())


def test_edits_with_napari_point_tools_are_autosaved(make_napari_viewer, qtbot, sample_project):
    """A drag in move mode, and napari's own add and delete, reach the autosave and the guard."""
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.labeller.layer
    viewer.dims.set_current_step(0, 7)
    widget.mode.value = "move"
    row = int(np.flatnonzero(layer.data[:, 0] == 7)[0])
    start = layer.data[row, 1:].copy()
    end = start + [6.0, -4.0]
    gesture(viewer, layer, start, start + [3.0, -2.0], end)
    np.testing.assert_allclose(layer.data[row, 1:], end)
    assert widget.autosaver.dirty
    assert widget.autosaver.flush() is None
    assert holds(sidecar_points(widget, 7), end[::-1])
    assert not holds(sidecar_points(widget, 7), start[::-1])

    layer.selected_data = {row}
    layer.remove_selected()  # napari's Delete key
    assert widget.autosaver.flush() is None
    assert not holds(sidecar_points(widget, 7), end[::-1])

    layer.mode = "add"  # the defaults napari copied from the dragged point do not carry over:
    gesture(viewer, layer, (20.0, 30.0))
    assert np.allclose(layer.data[-1], [7, 20.0, 30.0])
    assert layer.features["instance"].iloc[-1] == -1  # a new instance when saved
    assert layer.features["node"].dtype == "category"
    assert widget.autosaver.flush() is None
    assert holds(sidecar_points(widget, 7), [30.0, 20.0])


@pytest.fixture
def clip_copy(tmp_path, monkeypatch, sleap_dir):
    """A writable copy of the two-fly clip (1500 frames: its labels layer holds a frame window)."""
    import shutil

    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "clip"
    folder.mkdir()
    for name in ("clip.slp", "clip.mp4"):
        shutil.copyfile(sleap_dir / "tracks" / name, folder / name)
    return folder / "clip.slp"


def test_frame_windows_are_not_edits_but_drags_in_them_are_kept(make_napari_viewer, qtbot,
                                                                clip_copy):  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(str(clip_copy), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.labeller.layer
    binding = layer.metadata["napari_pose"]
    first = binding.window
    assert first is not None
    for frame in (300, 800, 1400):
        viewer.dims.set_current_step(0, frame)
    assert binding.window != first and binding.window[0] <= 1400 < binding.window[1]
    assert not widget.autosaver.dirty  # moving the window rewrote the layer: not an edit

    widget.mode.value = "move"
    row = int(np.flatnonzero(layer.data[:, 0] == 1400)[0])
    start = layer.data[row, 1:].copy()
    end = start + [5.0, 5.0]
    gesture(viewer, layer, start, end)
    assert widget.autosaver.dirty
    viewer.dims.set_current_step(0, 0)  # the window leaves frame 1400, taking the drag along
    assert not (layer.data[:, 0] == 1400).any()
    assert widget.autosaver.flush() is None
    assert holds(sidecar_points(widget, 1400), end[::-1])
    assert not holds(sidecar_points(widget, 1400), start[::-1])


def test_a_failing_autosave_is_shown_once(make_napari_viewer, qtbot, sample_project, monkeypatch):
    from napari_pose.core import autosave
    from napari_pose.napari._qt import services

    shown = []
    monkeypatch.setattr(services, "show_warning", shown.append)
    writer = autosave.save_labels

    def full_disk(labels, path, format=None):
        raise OSError("No space left on device")

    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    widget.autosaver.every_edits = 1  # every edit autosaves
    viewer.dims.set_current_step(0, 7)
    widget.labeller.new_instance()
    monkeypatch.setattr(autosave, "save_labels", full_disk)
    for x in (30.0, 31.0, 32.0):
        click(viewer, widget.labeller.layer, (x, 40.0))
    assert len(shown) == 1 and "No space left" in shown[0]
    assert "No space left" in widget.status.value

    monkeypatch.setattr(autosave, "save_labels", writer)  # the disk has room again
    click(viewer, widget.labeller.layer, (33.0, 40.0))
    assert "No space left" not in widget.status.value and len(shown) == 1
    monkeypatch.setattr(autosave, "save_labels", full_disk)  # a new failure is shown again
    click(viewer, widget.labeller.layer, (34.0, 40.0))
    assert len(shown) == 2


def test_check_labels_lists_a_planted_mistake_and_goes_to_it(make_napari_viewer, qtbot,
                                                              sample_project):  # fmt: skip
    """An unsaved edit (a head dragged 50 px past the image's right edge) is checked, listed
    and visited: clicking its item shows its frame and selects its instance's points."""
    from qtpy.QtCore import Qt

    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.labeller.layer
    press(qtbot, widget.check)
    assert widget.flags == [] and widget.flag_list.count() == 0
    assert widget.check_summary.value == "no likely mistakes found"

    features = layer.features
    row = int(np.flatnonzero((layer.data[:, 0] == 42) & (features["node"] == "head"))[0])
    instance = int(features["instance"].iloc[row])
    data = layer.data.copy()
    data[row, 2] = 256 + 50  # x, in a 256 x 256 frame
    layer.data = data
    widget.sections["check"].expand(animate=False)
    width = widget.native.width()
    press(qtbot, widget.check)
    assert widget.native.width() == width  # long reasons wrap
    assert widget.flag_list.count() >= 1
    assert {(f.kind, f.frame, f.instance_id) for f in widget.flags} >= {("outside", 42, instance)}
    texts = [widget.flag_list.item(i).text() for i in range(widget.flag_list.count())]
    assert all(text.startswith("frame 42, instance ") for text in texts)  # nothing else
    assert any("outside the 256 x 256 image" in text for text in texts)
    first = widget.flag_list.item(0)
    assert "1 outside" in widget.check_summary.value

    viewer.dims.set_current_step(0, 0)
    widget.flag_list.scrollToItem(first)
    qtbot.mouseClick(widget.flag_list.viewport(), Qt.MouseButton.LeftButton,
                     pos=widget.flag_list.visualItemRect(first).center())  # fmt: skip
    assert viewer.dims.current_step[0] == 42
    assert widget.labeller.instance == instance
    selected = sorted(layer.selected_data)
    assert selected and set(layer.features["instance"].iloc[selected]) == {instance}
    assert np.all(layer.data[selected, 0] == 42)


@pytest.fixture
def clip_with_gap(tmp_path, monkeypatch, sleap_dir):
    """A copy of the two-fly clip with frames 1051-1055 unlabelled (the flies walk there); the
    shared clip.slp, which labels every frame, is their ground truth."""
    import shutil

    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "clip"
    folder.mkdir()
    shutil.copyfile(sleap_dir / "tracks/clip.mp4", folder / "clip.mp4")
    labels = sio.load_slp(sleap_dir / "tracks/clip.slp", open_videos=False)
    labels.labeled_frames = [lf for lf in labels.labeled_frames
                             if not 1051 <= lf.frame_idx <= 1055]  # fmt: skip
    labels.videos[0].replace_filename(str(folder / "clip.mp4"), open=False)
    sio.save_slp(labels, folder / "clip.slp")
    return folder / "clip.slp"


def test_propagate_accept_edit_and_save(make_napari_viewer, qtbot, tmp_path, sleap_dir,
                                        clip_with_gap):  # fmt: skip
    """Issue 13 item 7: a propagated, accepted and edited instance saves as a user instance."""
    truth = labels_to_arrays(sio.load_slp(sleap_dir / "tracks/clip.slp", open_videos=False))
    viewer = make_napari_viewer()
    viewer.open(str(clip_with_gap), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    labeller = widget.labeller
    layer = labeller.layer
    assert labeller._predictions_layer() is None  # clip.slp holds no predictions
    viewer.dims.set_current_step(0, 1050)
    n_user = len(layer.data)
    assert widget.propagate_frames.value == 5
    press(qtbot, widget.propagate_buttons[1])
    predictions = labeller._predictions_layer()
    assert predictions is not None
    assert len(layer.data) == n_user  # user labels untouched
    proposed = predictions.metadata["napari_pose"].arrays
    # One proposal per fly on each unlabelled frame, none on labelled ones.
    assert sorted(proposed.frame.tolist()) == sorted([1051, 1052, 1053, 1054, 1055] * 2)
    assert proposed.predicted.all()
    names = [t.name for t in proposed.tracks]
    for frame in range(1051, 1056):
        on, true = proposed.select(proposed.frame == frame), truth.select(truth.frame == frame)
        assert sorted(names[t] for t in on.track) == ["female", "male"]
        for row in range(len(on)):
            match = true.select(true.track == on.track[row])
            seen = on.visible[row] & match.visible[0]
            error = np.linalg.norm(on.xy[row][seen] - match.xy[0][seen], axis=-1)
            assert np.median(error) < 3.0
            scores = on.point_score[row][on.visible[row]]
            assert np.all((scores >= 0) & (scores <= 1))

    # Accept the male's proposal on frame 1052 with the 'use prediction' key, then move its head.
    viewer.dims.set_current_step(0, 1052)
    on = proposed.select((proposed.frame == 1052) & (proposed.track == names.index("male")))
    head = on.xy[0, 0]
    viewer.cursor.position = (1052, head[1], head[0])
    press_key(layer, "u")
    accepted = labeller.instance
    mine = layer.features["instance"].to_numpy() == accepted
    assert mine.sum() > 0 and np.all(layer.data[mine, 0] == 1052)
    assert set(layer.features["track"][mine]) == {"male"}
    labeller.set_node("head")
    click(viewer, layer, (head[1] + 4.0, head[0] - 3.0))

    out = tmp_path / "propagated.slp"
    widget.save_labels(out)
    saved = labels_to_arrays(sio.load_slp(out, open_videos=False))
    user = saved.select((saved.frame == 1052) & ~saved.predicted)
    assert len(user) == 1 and saved.tracks[user.track[0]].name == "male"
    np.testing.assert_allclose(user.xy[0, 0], [head[0] - 3.0, head[1] + 4.0])
    assert user.from_predicted[0] >= 0
    assert len(saved.select((saved.frame == 1052) & saved.predicted)) == 2

    # Propagating again (the 'k' key) redoes the proposals, except the male's on frame 1052,
    # which now has a user instance: its old proposal (the accepted one) stays as it was.
    viewer.dims.set_current_step(0, 1050)
    before = predictions.metadata["napari_pose"].arrays
    press_key(layer, "k")
    again = predictions.metadata["napari_pose"].arrays
    assert len(again) == 10 and not np.isin(again.instance_id, before.instance_id).all()
    kept = again.select((again.frame == 1052) & (again.track == names.index("male")))
    assert len(kept) == 1 and np.isin(kept.instance_id, before.instance_id).all()
    np.testing.assert_allclose(kept.xy[0, 0], head)


def _tiny_model(folder):
    """A tiny single-instance package trained two steps on synthetic bugs (the sample's
    skeleton): ranking runs through a real model, whatever it learned."""

    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video

    data = make_synthetic(n_frames=8, size=64, n_animals=1, seed=1)
    write_video(data.frames, folder / "v.mp4")
    labels = to_labels(data, str(folder / "v.mp4"))
    train_tiny(labels, folder / "model")
    return folder / "model"


def test_model_suggestions_come_with_their_reasons(make_napari_viewer, qtbot, sample_project,
                                                   tmp_path):  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    layer = widget.labeller.layer
    labels = layer.metadata["napari_pose"].labels
    for frame in (5, 120):  # every frame is labelled: leave two for the model
        viewer.dims.set_current_step(0, frame)
        for inst in set(layer.features["instance"][layer.data[:, 0] == frame]):
            widget.labeller.select(inst)
            press(qtbot, widget.buttons["delete_instance"])
    before = {s.frame_idx for s in labels.suggestions}

    def shown(name: str) -> bool:  # (the viewer is not on screen: ``visible`` is False)
        return not getattr(widget, name).native.isHidden()

    assert not shown("suggest_model")
    widget.method.value = "model"
    assert shown("suggest_model")
    widget.suggest_model.value = tmp_path  # no model package there
    assert widget.start_suggestions() is None
    assert shown("suggest_message")
    assert widget.suggest_message.value.startswith("not a model package")

    widget.suggest_model.value = _tiny_model(tmp_path)
    widget.n_suggestions.value = 2
    worker = widget.start_suggestions()
    assert worker is not None and not shown("suggest_message")
    qtbot.waitUntil(lambda: widget.progress.native.isHidden(), timeout=60_000)
    assert {s.frame_idx for s in labels.suggestions} - before == {5, 120}
    texts = {value: text for text, value in
             ((widget.suggested.native.itemText(i), widget.suggested.native.itemData(i))
              for i in range(widget.suggested.native.count()))}  # fmt: skip
    for frame in (5, 120):
        assert texts[frame].startswith(f"frame {frame}: ") and len(texts[frame]) > 12
    assert "least sure of" in widget.suggest_message.value


def test_propose_from_model_follows_the_projects_model_only_from_its_previous_one(
    make_napari_viewer, sample_project, tmp_path
):
    """The project's model changes (the Train dock finished one): an empty field stays empty
    (proposals off), a field holding the previous model follows and the status says so, a
    folder the user chose otherwise is kept."""
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    session = widget.session
    first, second, third, mine = (tmp_path / n for n in ("first", "second", "third", "mine"))
    session.set_model(first)
    assert str(widget.propose_model.value) in ("", ".")
    assert widget.labeller.proposer.folder is None and "proposals" not in widget.status.value

    widget.propose_model.value = first
    session.set_model(second)
    assert widget.propose_model.value == second
    assert widget.status.value.splitlines()[-1] == "proposals now from second"
    widget.propose_model.value = mine  # the user's own choice: the note is stale now
    assert "proposals now" not in widget.status.value
    session.set_model(third)
    assert widget.propose_model.value == mine and "proposals now" not in widget.status.value
