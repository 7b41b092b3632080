"""Docks fit a laptop screen: napari's window never grows past it, and what does not fit scrolls."""

from __future__ import annotations

import pytest
from qtpy.QtWidgets import QScrollArea

pytestmark = pytest.mark.gui


def _scroll_area(widget) -> QScrollArea | None:
    """The scroll area that ``widget`` (a Qt widget) is shown in, if any."""
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QScrollArea):
        parent = parent.parentWidget()
    return parent


@pytest.mark.parametrize(
    ("screen", "docks"),
    [((1366, 768), ["Predict", "Proofread"]),
     ((1366, 768), ["Label poses", "Train model", "Pose project", "Skeleton"]),
     ((1920, 1080), ["Predict", "Proofread", "Train model"])],
)  # fmt: skip
def test_docks_fit_the_screen_and_scroll(make_napari_viewer, qtbot, sleap_dir, screen, docks):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(*screen)
    viewer.open(str(sleap_dir / "tracks" / "clip.slp"), plugin="napari-pose")
    widgets = [viewer.window.add_plugin_dock_widget("napari-pose", name)[1] for name in docks]
    qtbot.wait(100)
    assert window.width() <= screen[0] and window.height() <= screen[1]

    # Nothing is cut off: the last control of each of these docks scrolls into view.
    last_controls = {"Predict": "maps_button", "Proofread": "worst", "Label poses": "save",
                     "Train model": "predict_button", "Pose project": "save", "Skeleton": "save"}  # fmt: skip
    for name, widget in zip(docks, widgets):
        button = getattr(widget, last_controls[name]).native
        area = _scroll_area(button)
        assert area is not None and area.window() is window
        area.ensureWidgetVisible(button)
        qtbot.wait(10)
        assert not button.visibleRegion().isEmpty()


def test_long_messages_wrap_rather_than_widen_the_docks(make_napari_viewer, qtbot, sleap_dir):
    viewer = make_napari_viewer(show=True)
    window = viewer.window._qt_window
    window.resize(1366, 768)
    viewer.open(str(sleap_dir / "tracks" / "clip.slp"), plugin="napari-pose")
    _, predict = viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
    _, proofread = viewer.window.add_plugin_dock_widget("napari-pose", "Proofread")
    qtbot.wait(100)
    docks = [predict.native.parentWidget(), proofread.native.parentWidget()]
    widths = [dock.width() for dock in docks]
    message = "a problem described at length, " * 12
    for label in (predict.status, proofread.status, proofread.results):
        label.value = message
    qtbot.wait(100)
    assert [dock.width() for dock in docks] == widths and window.width() <= 1366
