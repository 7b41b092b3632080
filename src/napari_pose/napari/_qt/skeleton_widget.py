"""The *Skeleton* dock widget: edit the nodes, edges and symmetries of a project's skeleton.

Node edits (add, rename, delete, reorder) change every labelled and predicted instance of the
project through ``labelling.change_nodes``; deleting a node that has points asks first. Every
edit, edges and symmetries included (the file keeps the skeleton), is an edit of the project's
session, so that it is autosaved and guarded like a label.
"""

from __future__ import annotations

from pathlib import Path

import napari
import napari.viewer
import sleap_io as sio
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, Label, LineEdit, PushButton

from napari_pose.core import skeleton as sk
from napari_pose.napari._qt.layout import ScrollingDock
from napari_pose.napari.convert import POSE_KEY
from napari_pose.napari.labelling import change_nodes, user_label_layers
from napari_pose.napari.session import ProjectSession, projects


def ask(question: str) -> bool:
    """Ask the user a yes/no question in a dialog (tests replace this)."""
    from qtpy.QtWidgets import QMessageBox

    answer = QMessageBox.question(None, "napari-pose", question)
    return answer == QMessageBox.StandardButton.Yes


class SkeletonWidget(ScrollingDock):
    """Nodes, edges and symmetric pairs of the skeleton of the chosen labels layer's project."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._projects = projects(viewer)
        self.confirm = ask
        self.layer = ComboBox(label="labels layer", choices=self._layers)
        self.node = ComboBox(label="node", choices=self._nodes)
        # Not ``self.name``: that is the magicgui widget's own name (a str its label is made of).
        self.node_name = LineEdit(label="name")
        node_actions = ("add", "rename", "delete", "move up", "move down")
        self.node_buttons = {
            a: PushButton(label="", text=f"{a.capitalize()} node") for a in node_actions
        }
        self.other = ComboBox(label="other node", choices=self._nodes)
        pair_actions = ("add edge", "remove edge", "set symmetric", "remove symmetry")
        self.pair_buttons = {a: PushButton(label="", text=a.capitalize()) for a in pair_actions}
        self.info = Label(label="skeleton", value="")
        self.file = FileEdit(
            label="skeleton file", mode=FileDialogMode.OPTIONAL_FILE, filter="*.json"
        )
        self.save = PushButton(label="", text="Save skeleton (JSON)")
        self.body.extend([self.layer, self.node, self.node_name, *self.node_buttons.values(),
                           self.other, *self.pair_buttons.values(), self.info, self.file,
                           self.save])  # fmt: skip
        for action, button in {**self.node_buttons, **self.pair_buttons}.items():
            button.clicked.connect(lambda *_, action=action: self.run(action))
        self.save.clicked.connect(self.save_skeleton)
        self.layer.changed.connect(self._refresh)
        viewer.layers.events.inserted.connect(self._refresh)
        viewer.layers.events.removed.connect(self._refresh)
        self._refresh()

    @property
    def session(self) -> ProjectSession | None:
        """The project of the chosen labels layer."""
        return self._projects.of_layer(self.layer.value) if self.layer.value else None

    @property
    def skeleton(self) -> sio.Skeleton | None:
        """The skeleton of the chosen labels layer's project."""
        layer = self.layer.value
        return layer.metadata[POSE_KEY].arrays.skeleton if layer is not None else None

    def _layers(self, _=None):
        return [(layer.name, layer) for layer in user_label_layers(self._viewer)]

    def _nodes(self, _=None) -> list[str]:
        return self.skeleton.node_names if self.skeleton is not None else []

    def _refresh(self, event=None) -> None:
        self.layer.reset_choices()
        self.node.reset_choices()
        self.other.reset_choices()
        skeleton = self.skeleton
        if skeleton is None:
            self.info.value = "no labels layer"
            return
        edges = ", ".join(f"{a.name}-{b.name}" for a, b in skeleton.edges) or "none"
        pairs = ", ".join(f"{a.name}/{b.name}" for a, b in skeleton.symmetries) or "none"
        self.info.value = (
            f"nodes: {', '.join(skeleton.node_names)}\nedges: {edges}\nsymmetric: {pairs}"
        )

    def save_skeleton(self) -> None:
        """Write the skeleton to the chosen file as SLEAP skeleton JSON."""
        skeleton, path = self.skeleton, self.file.value
        if skeleton is None or not isinstance(path, Path):  # no labels layer; mode "w": one file
            return
        sk.save_skeleton(skeleton, path)

    def run(self, action: str) -> None:
        """Carry out one editing action on the current node(s)."""
        session, skeleton, node, other, name = (
            self.session,
            self.skeleton,
            self.node.value,
            self.other.value,
            self.node_name.value.strip(),
        )
        if session is None or skeleton is None:  # no labels layer: nothing to edit
            return
        names = skeleton.node_names
        if action == "add":
            change_nodes(session, lambda arrays: sk.with_node(arrays, name))
        elif action == "rename":
            sk.rename_node(skeleton, node, name)
            change_nodes(session, lambda arrays: arrays)
        elif action == "delete":
            lost = sum(sk.points_lost(l.metadata[POSE_KEY].merged(l.data, l.features), node)
                       for l in session.points_layers())  # fmt: skip
            if lost and not self.confirm(f"Delete node '{node}' and its {lost} points?"):
                return
            change_nodes(session, lambda arrays: sk.delete_node(arrays, node))
        elif action in ("move up", "move down"):
            i = names.index(node)
            j = max(0, i - 1) if action == "move up" else min(len(names) - 1, i + 1)
            names[i], names[j] = names[j], names[i]
            change_nodes(session, lambda arrays: sk.reorder_nodes(arrays, names))
        else:
            edit = {"add edge": sk.add_edge, "remove edge": sk.remove_edge,
                    "set symmetric": sk.set_symmetry, "remove symmetry": sk.remove_symmetry}[action]  # fmt: skip
            edit(skeleton, node, other)
            change_nodes(session, lambda arrays: arrays)
        session.mark_edited()
        self._refresh()
        if action in ("add", "rename"):
            self.node.value = name
