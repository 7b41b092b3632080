"""Layout helpers that keep docks small: collapsed sections and status text of fixed height.

A dock that grows with its content pushes napari's window past a laptop screen (1366x768), and
a label whose text changes length at every click resizes the canvas under the cursor. Docks put
rarely used controls in :func:`collapsible` sections and status text in :func:`fixed_lines`.
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


def fixed_lines(label: Label, lines: int) -> None:
    """Wrap ``label``'s text and give it room for ``lines`` lines, whatever the text's length.

    Its width follows the dock instead of the text, and its height never changes, so updating
    the text (at every click) never resizes the dock or the canvas beside it.
    """
    native = label.native
    native.setWordWrap(True)
    native.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
    native.setFixedHeight(native.fontMetrics().lineSpacing() * lines + 4)
