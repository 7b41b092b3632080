"""Helpers GUI tests share: clicking a widget's button as a user does, and idle docks."""

from __future__ import annotations

import numpy as np

from napari_pose.core.autosave import recovery_for
from napari_pose.core.io import load_labels
from napari_pose.core.pose_arrays import labels_to_arrays


def press(qtbot, button) -> None:
    """A left click on a magicgui button's Qt widget."""
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def idle(widget) -> bool:
    """A dock with Start/Cancel and a worker has nothing running, and its buttons say so."""
    buttons = widget.start_button.enabled and not widget.cancel_button.enabled
    return widget.worker is None and buttons


def same_poses(a, b) -> bool:
    """Whether two projects hold the same instances (points, frames, tracks, nodes)."""
    a, b = labels_to_arrays(a).sorted(), labels_to_arrays(b).sorted()
    return (
        len(a) == len(b)
        and a.skeleton.node_names == b.skeleton.node_names
        and [t.name for t in a.tracks] == [t.name for t in b.tracks]
        and np.array_equal(a.frame, b.frame)
        and np.array_equal(a.track, b.track)
        and np.allclose(a.xy, b.xy, equal_nan=True)
    )


def survives_a_kill(qtbot, session) -> bool:
    """Wait for the debounced autosave, then read it as the next napari would after a kill
    (nothing of napari's closing runs in between): it must hold every edit."""
    qtbot.waitUntil(lambda: not session.autosaver.pending, timeout=10_000)
    sidecar = recovery_for(session.path)
    return sidecar is not None and same_poses(load_labels(sidecar), session.current())
