"""The *Pose project* dock in a real viewer: saving ends the close guard, never replaces
another project's file without asking, and follows the project that is chosen."""

from __future__ import annotations

import numpy as np
import pytest
from gui import press

from napari_pose.core.autosave import recovery_for
from napari_pose.core.io import load_labels
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari._qt import services
from napari_pose.napari.session import projects

pytestmark = pytest.mark.gui


@pytest.fixture
def docks(make_napari_viewer, sample_project):
    """The sample project open with the *Label poses* and *Pose project* docks, and one new
    point (frame 7, y=33, x=44) labelled and autosaved but not saved."""
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    _, project = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    viewer.dims.set_current_step(0, 7)
    label.labeller.new_instance()
    label.labeller.place((33.0, 44.0))
    assert label.autosaver.flush() is None and recovery_for(sample_project) is not None
    return viewer, label, project


def close_asks(viewer, monkeypatch) -> list:
    """Whether napari's close guard asks (answering "discard"), without closing napari."""
    asked = []
    monkeypatch.setattr(services, "ask_unsaved", lambda names: asked.append(names) or "discard")
    assert services.close_allowed(projects(viewer))
    return asked


def holds_new_point(path) -> bool:
    arrays = labels_to_arrays(load_labels(path))
    return bool(np.isclose(arrays.xy[arrays.frame == 7], [44.0, 33.0]).all(axis=-1).any())


def test_saving_the_project_file_ends_the_guard(docks, qtbot, sample_project, monkeypatch):
    viewer, label, project = docks
    assert project.save_path.value == sample_project
    press(qtbot, project.save)
    assert holds_new_point(sample_project)
    assert not label.autosaver.dirty
    assert recovery_for(sample_project) is None and not label.autosaver.path.exists()
    assert not close_asks(viewer, monkeypatch)


def test_save_as_moves_the_project_but_an_analysis_export_does_not(
    docks, qtbot, tmp_path, monkeypatch
):
    viewer, label, project = docks
    moved = tmp_path / "moved.slp"
    project.save_path.value = moved
    press(qtbot, project.save)
    assert holds_new_point(moved)
    assert project.project.value == "moved.slp"  # the project is known by its new file
    assert label.autosaver.labels_path == moved and not label.autosaver.dirty
    assert label.save_labels() == moved  # later saves go to the new file

    label.labeller.place((35.0, 46.0))
    project.save_path.value = tmp_path / "moved.analysis.h5"
    press(qtbot, project.save)
    assert (tmp_path / "moved.analysis.h5").is_file()
    assert label.autosaver.dirty  # an analysis file reads labels back as predictions
    assert project.project.value == "moved.slp"
    assert close_asks(viewer, monkeypatch) == [["moved.slp"]]


def test_a_deeplabcut_csv_with_its_images_opens_in_the_project_dock(
    make_napari_viewer, openfield, tmp_path
):
    """A CollectedData CSV whose video is its list of images (DeepLabCut, lightning-pose)
    crashed the dock (unhashable list); a missing image shows that video as MISSING."""
    import shutil

    folder = tmp_path / "labeled-data" / "m4s1"
    shutil.copytree(openfield / "labeled-data" / "m4s1", folder)
    viewer = make_napari_viewer()
    viewer.open(str(folder / "CollectedData_Pranav.csv"), plugin="napari-pose")
    _, project = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    assert "116 labelled frames" in project.info.value and "MISSING" not in project.info.value
    (folder / "img0005.png").unlink()
    project._update()
    assert "MISSING" in project.info.value and not project.missing.native.isHidden()
