"""Layout helpers that keep docks small: collapsed sections and status text of fixed height.

A dock that grows with its content pushes napari's window past a laptop screen (1366x768), and
a label whose text changes length at every click resizes the canvas under the cursor. Docks put
rarely used controls in :func:`collapsible` sections and status text in :func:`fixed_lines`;
docks too tall for a small screen put their widgets in :func:`scrolling` bodies.
"""

from __future__ import annotations

from magicgui.widgets import Container, Label
from qtpy.QtWidgets import QSizePolicy
from superqt import QCollapsible


def collapsible(dock: Container, title: str, content: Container, expanded: bool = False):
    """Add ``content`` to ``dock`` under a header that shows or hides it (collapsed by default)."""
    section = QCollapsible(title)
    section.setContentsMargins(0, 0, 0, 0)
    section.addWidget(content.native)
    if expanded:
        section.expand(animate=False)
    else:
        section.collapse(animate=False)
    dock.native.layout().addWidget(section)
    return section


def scrolling(dock: Container) -> Container:
    """A body for ``dock``'s widgets that scrolls when the dock is shorter than they are.

    napari docks a magicgui widget's ``native`` (the widget holding its layout), not its
    ``root_native_widget``, so a ``Container(scrollable=True)`` docked in napari loses its scroll
    area and still forces the window taller than the screen (magicgui #431). The body's scroll
    area is put in the dock's own layout instead, where napari shows it.
    """
    body: Container = Container(scrollable=True)
    body.margins = (0, 0, 0, 0)
    dock.margins = (0, 0, 0, 0)
    dock.native.layout().addWidget(body.root_native_widget)
    return body


def fixed_lines(label: Label, lines: int) -> None:
    """Wrap ``label``'s text and give it room for ``lines`` lines, whatever the text's length.

    Its width follows the dock instead of the text, and its height never changes, so updating
    the text (at every click) never resizes the dock or the canvas beside it.
    """
    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    native.setFixedHeight(native.fontMetrics().lineSpacing() * lines + 4)


class ScrollingDock(Container):
    """A dock whose widgets go in :attr:`body`, which scrolls (see :func:`scrolling`).

    napari resets a dock's choices when layers change; the dock passes that on to its body,
    where its combo boxes are.
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = scrolling(self)

    def reset_choices(self, *_: object) -> None:
        super().reset_choices()
        self.body.reset_choices()
