"""The project session in a real viewer, walked through as a new user would (issue 11).

Each test is a failure a new user met: work overwritten, edits lost, errors hidden, dead ends.
"Kill" tests do edits, let the autosave debounce pass, and then read the autosave as a fresh
process would after napari was killed: nothing of napari's closing runs in between.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from gui import press, same_poses, survives_a_kill

from napari_pose.core.autosave import recovery_for
from napari_pose.core.io import load_labels
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari import session as session_module
from napari_pose.napari._qt import services
from napari_pose.napari._writer import SaveError
from napari_pose.napari.session import projects

pytestmark = pytest.mark.gui

QT_DOCKS = Path(session_module.__file__).parent / "_qt"


@pytest.fixture
def project_copy(tmp_path, sleap_dir, monkeypatch):
    """A copy of clip.slp and its video, with the autosave cache inside ``tmp_path``."""
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    for name in ("clip.slp", "clip.mp4"):
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    return tmp_path / "clip.slp"


# ------------------------------------------------------------------------------ lost edits
@pytest.mark.parametrize("n_edits", [1, 5, 25])
@pytest.mark.parametrize("kind", ["label", "skeleton", "proofread"])
def test_every_edit_comes_back_after_a_kill(
    make_napari_viewer, qtbot, project_copy, monkeypatch, kind, n_edits
):
    monkeypatch.setattr(session_module, "AUTOSAVE_DELAY_S", 0.2)  # the debounce, made short
    viewer = make_napari_viewer()
    viewer.open(str(project_copy), plugin="napari-pose")
    (session,) = projects(viewer).sessions
    if kind == "label":
        _, dock = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
        for i in range(n_edits):
            viewer.dims.set_current_step(0, 1300 + i)  # frames past the labelled ones
            dock.labeller.place((100.0 + i, 200.0 - i))
    elif kind == "skeleton":
        _, dock = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
        dock.node.value, dock.other.value = "head", "abdomen"
        for i in range(n_edits):
            press(qtbot, dock.pair_buttons["add edge" if i % 2 == 0 else "remove edge"])
    elif kind == "proofread":
        _, dock = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
        for i in range(n_edits):
            viewer.dims.set_current_step(0, 100 + 40 * i)
            press(qtbot, dock.swap)
    assert session.dirty
    assert survives_a_kill(qtbot, session)


def test_the_autosave_waits_for_a_pause_of_a_few_seconds(make_napari_viewer, qtbot, project_copy):
    viewer = make_napari_viewer()
    viewer.open(str(project_copy), plugin="napari-pose")
    _, dock = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    viewer.dims.set_current_step(0, 1400)
    dock.labeller.place((120.0, 130.0))
    assert recovery_for(project_copy) is None  # not at once: edits come in bursts
    qtbot.waitUntil(lambda: recovery_for(project_copy) is not None, timeout=5000)


# ------------------------------------------------------------------------------ overwriting
def test_a_new_project_never_replaces_the_previous_projects_file(
    make_napari_viewer, qtbot, project_copy, data_dir, monkeypatch
):
    """Open a project, remove its layers, label another video: Save asks where, and the old
    project's file is replaced only if the user says so."""
    before = project_copy.read_bytes()
    viewer = make_napari_viewer()
    viewer.open(str(project_copy), plugin="napari-pose")
    _, project_dock = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    assert project_dock.save_path.value == project_copy
    (old,) = projects(viewer).sessions
    viewer.layers.clear()
    assert not old.is_open and projects(viewer).sessions == []  # closing its layers closed it

    viewer.open(str(data_dir / "deeplabcut/openfield/videos/m3v1mp4.mp4"), plugin="napari-pose")
    press(qtbot, label.start)
    label.labeller.place((50.0, 60.0))
    assert project_dock.save_path.value is None  # not the old project's file

    asked_where, asked_replace = [], []
    monkeypatch.setattr(
        services, "ask_save_path", lambda s: asked_where.append(s.name) or project_copy
    )
    monkeypatch.setattr(services, "confirm_replace", lambda p: asked_replace.append(p) or False)
    assert project_dock.save_project() is None
    assert asked_where and asked_replace == [project_copy]
    assert project_copy.read_bytes() == before  # the user said no

    new = project_copy.with_name("mouse.slp")
    monkeypatch.setattr(services, "ask_save_path", lambda s: new)
    assert label.save_labels() == new
    assert len(labels_to_arrays(load_labels(new))) == 1
    assert project_copy.read_bytes() == before


def test_save_labels_on_a_new_project_asks_where(make_napari_viewer, qtbot, data_dir, monkeypatch):
    shown = []
    monkeypatch.setattr(services, "show_error", shown.append)
    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.mp4"), plugin="napari-pose")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    press(qtbot, label.start)
    label.labeller.place((40.0, 50.0))
    asked = []
    monkeypatch.setattr(services, "ask_save_path", lambda s: asked.append(s.name))  # "cancel"
    press(qtbot, label.save)
    assert asked and shown == [] and label.session.dirty  # nothing written, nothing shown red


# ------------------------------------------------------------------------------ errors
def test_file_save_errors_name_the_file_and_the_cause(make_napari_viewer, tmp_path, project_copy):
    viewer = make_napari_viewer()
    viewer.open(str(project_copy), plugin="napari-pose")
    target = tmp_path / "no such folder" / "out.slp"
    with pytest.raises(SaveError, match="no such folder"):
        viewer.layers.save(str(target), plugin="napari-pose")


def test_file_save_saves_the_whole_project_and_ends_the_guard(
    make_napari_viewer, qtbot, project_copy
):
    viewer = make_napari_viewer()
    viewer.open(str(project_copy), plugin="napari-pose")
    _, dock = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
    dock.new_name.value = "fly A"
    press(qtbot, dock.rename)
    (session,) = projects(viewer).sessions
    assert session.dirty
    out = project_copy.with_name("saved.slp")
    viewer.layers.selection = {viewer.layers["clip labels"]}  # only one layer selected
    viewer.layers.save(str(out), selected=True, plugin="napari-pose")
    assert same_poses(load_labels(out), session.current())  # every layer of the project
    assert not session.dirty and session.path == out


# ------------------------------------------------------------------------------ dead ends
def test_the_first_click_after_start_places_a_node(make_napari_viewer, qtbot, data_dir):
    from test_label_widget import click

    viewer = make_napari_viewer()
    viewer.open(str(data_dir / "sleap/tracks/clip.mp4"), plugin="napari-pose")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    press(qtbot, label.start)
    active = viewer.layers.selection.active
    assert active is label.labeller.layer and label.labeller.mode == "label"
    click(viewer, active, (40.0, 50.0))  # napari sends clicks to the active layer
    assert len(active.data) == 1


def test_the_label_dock_fits_and_its_status_never_resizes_it(
    make_napari_viewer, qtbot, project_copy
):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1366, 768)
    viewer.open(str(project_copy), plugin="napari-pose")
    dock, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    qtbot.wait(50)
    assert isinstance(dock, QDockWidget)
    size = dock.size()
    window = viewer.window._qt_window.size()
    assert window.width() <= 1366 and window.height() <= 768  # the dock did not grow napari
    assert label.native.sizeHint().height() < 650 and size.width() < 450
    viewer.dims.set_current_step(0, 1400)
    for i in range(5):
        label.labeller.place((100.0 + i, 100.0))
        qtbot.wait(10)
        assert dock.size() == size


def test_docks_never_import_each_other():
    docks = {p.stem for p in QT_DOCKS.glob("*_widget.py")}
    for path in QT_DOCKS.glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {
            name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            for name in [node.module.rsplit(".", 1)[-1], *(a.name for a in node.names)]
        }
        assert not (imported & docks) - {path.stem}, f"{path.name} imports a dock"
