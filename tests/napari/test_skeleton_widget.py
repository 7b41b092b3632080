"""The *Skeleton* dock in a real viewer: its edits are autosaved and guarded like labels."""

from __future__ import annotations

import pytest
from gui import press

from napari_pose.core.io import load_labels

pytestmark = pytest.mark.gui


def test_node_rename_is_autosaved(make_napari_viewer, qtbot, sample_project):
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, labels_widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
    assert not labels_widget.autosaver.dirty

    widget.node.value, widget.node_name.value = "head", "Head"
    press(qtbot, widget.node_buttons["rename"])
    assert labels_widget.autosaver.dirty
    assert labels_widget.autosaver.flush() is None
    names = load_labels(labels_widget.autosaver.path).skeletons[0].node_names
    assert names[0] == "Head" and "head" not in names


def test_refused_delete_is_not_an_edit(make_napari_viewer, qtbot, sample_project):
    viewer = make_napari_viewer()
    viewer.open(str(sample_project), plugin="napari-pose")
    _, labels_widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
    widget.confirm = lambda question: False
    widget.node.value = "left_wing"
    press(qtbot, widget.node_buttons["delete"])
    assert "left_wing" in widget.skeleton.node_names
    assert not labels_widget.autosaver.dirty


def test_dock_without_a_project_keeps_its_name_and_does_nothing(make_napari_viewer):
    """The node-name field is not the widget's own ``name`` (the str magicgui makes its label
    of: the field there made ``label`` raise), and edits with no labels layer do nothing."""
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
    assert isinstance(widget.name, str) and isinstance(widget.label, str)
    assert widget.skeleton is None and widget.session is None
    widget.node_name.value = "head"
    widget.run("add")
    widget.save_skeleton()
    assert widget.skeleton is None and widget.info.value == "no labels layer"
