"""Helpers GUI tests share: clicking a widget's button as a user does, and idle docks."""

from __future__ import annotations


def press(qtbot, button) -> None:
    """A left click on a magicgui button's Qt widget."""
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def idle(widget) -> bool:
    """A dock with Start/Cancel and a worker has nothing running, and its buttons say so."""
    buttons = widget.start_button.enabled and not widget.cancel_button.enabled
    return widget.worker is None and buttons
