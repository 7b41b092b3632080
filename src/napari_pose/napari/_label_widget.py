"""The *Label poses* dock widget: pick a labels layer (or start one on any image) and label.

Thin: every button calls a ``Labeller`` method (``napari/labelling.py``), which calls the pure
table edits of ``core/labelling.py``. The same actions have keyboard shortcuts on the layer.
"""

from __future__ import annotations

from pathlib import Path

import napari
import napari.viewer
import numpy as np
import sleap_io as sio
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton, RadioButtons

from napari_pose.core.autosave import Autosaver
from napari_pose.core.skeleton import TEMPLATES
from napari_pose.napari.convert import POSE_KEY, layers_to_labels, new_project_layers
from napari_pose.napari.labelling import SHORTCUTS, Labeller


def user_label_layers(viewer: napari.Viewer) -> list[napari.layers.Points]:
    """Points layers of ``viewer`` holding user labels of a pose project."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, napari.layers.Points)
        and layer.metadata.get(POSE_KEY) is not None
        and not layer.metadata[POSE_KEY].predicted
    ]


def start_labels_on_image(viewer: napari.Viewer, image: napari.layers.Image,
                          skeleton: sio.Skeleton) -> napari.layers.Points:  # fmt: skip
    """Add an empty labels layer (and its skeleton layer) aligned with ``image``."""
    n_lead = image.ndim - 2
    source = image.source.path or image.name
    video = sio.Video(filename=str(source), open_backend=False)
    added = []
    for data, kwargs, kind in new_project_layers(video, skeleton, tuple(image.data.shape[:n_lead])):
        kwargs.update(scale=image.scale[: n_lead + 2], translate=image.translate[: n_lead + 2])
        kwargs["name"] = f"{image.name} {kwargs['name'].split(' ', 1)[1]}"
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    return added[0]


def labels_path(layer: napari.layers.Points) -> Path | None:
    """The file a labels layer was opened from, if any."""
    filename = layer.metadata[POSE_KEY].labels.provenance.get("filename")
    return Path(str(filename)) if filename else None


class LabelWidget(Container):
    """Label keypoints: nodes in order, instances, occlusion, tracks, copy, undo, save."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self.labeller: Labeller | None = None
        self.autosaver: Autosaver | None = None  # set with the labeller

        self.layer = ComboBox(label="labels layer", choices=self._layer_choices)
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.template = ComboBox(label="skeleton", choices=list(TEMPLATES))
        self.start = PushButton(label="", text="Start labelling this image")
        self.mode = RadioButtons(label="mode", choices=["label", "move"], value="label",
                                 orientation="horizontal")  # fmt: skip
        self.node = ComboBox(label="next node", choices=self._node_choices)
        self.status = Label(label="instance", value="")
        self.track = ComboBox(label="track", choices=self._track_choices)
        self.new_track = LineEdit(label="new track")
        buttons = {
            "new_instance": "New instance (n)", "delete_instance": "Delete instance (x)",
            "toggle_occluded": "Occluded (o)", "copy_previous_frame": "Copy previous frame (c)",
            "use_prediction": "Prediction -> label (u)", "undo": "Undo (Ctrl+Z)",
        }  # fmt: skip
        self.buttons = {name: PushButton(label="", text=text) for name, text in buttons.items()}
        self.set_track_button = PushButton(label="", text="Set track of instance")
        self.save = PushButton(label="", text="Save labels")
        self.shortcuts = Label(label="keys", value="\n".join(
            f"{key}: {text}" for key, (_, text) in SHORTCUTS.items()))  # fmt: skip
        self.extend([self.layer, self.image, self.template, self.start, self.mode, self.node,
                     self.status, *self.buttons.values(), self.track, self.new_track,
                     self.set_track_button, self.save, self.shortcuts])  # fmt: skip

        self.layer.changed.connect(self._bind)
        self.start.clicked.connect(self._start_on_image)
        self.mode.changed.connect(lambda value: self.labeller and self.labeller.set_mode(value))
        self.node.changed.connect(self._node_picked)
        for name, button in self.buttons.items():
            button.clicked.connect(lambda *_, name=name: self.labeller and getattr(self.labeller, name)())
        self.set_track_button.clicked.connect(self._set_track)
        self.save.clicked.connect(self.save_labels)
        viewer.layers.events.inserted.connect(self._reset_choices)
        viewer.layers.events.removed.connect(self._reset_choices)
        viewer.dims.events.current_step.connect(self._refresh)
        self._reset_choices()

    # ------------------------------------------------------------------ choices
    def _layer_choices(self, _=None) -> list[tuple[str, napari.layers.Points]]:
        return [(layer.name, layer) for layer in user_label_layers(self._viewer)]

    def _image_choices(self, _=None) -> list[tuple[str, napari.layers.Image]]:
        return [(l.name, l) for l in self._viewer.layers if isinstance(l, napari.layers.Image)]

    def _node_choices(self, _=None) -> list[str]:
        return self.labeller.node_names if self.labeller else []

    def _track_choices(self, _=None) -> list[str]:
        if self.labeller is None:
            return []
        return list(self.labeller.layer.features["track"].cat.categories)

    def _reset_choices(self, event=None) -> None:
        self.layer.reset_choices()
        self.image.reset_choices()
        if self.layer.value is not None and (self.labeller is None or self.labeller.layer is not self.layer.value):
            self._bind()

    # ------------------------------------------------------------------ binding
    def _bind(self, event=None) -> None:
        layer = self.layer.value
        if layer is None or (self.labeller is not None and self.labeller.layer is layer):
            return
        if self.autosaver is not None:
            self.autosaver.flush()
        self.autosaver = Autosaver(labels_path(layer), self._current_labels)
        self.labeller = Labeller(self._viewer, layer, on_edit=self.autosaver.edited)
        self.labeller.changed.connect(self._refresh)
        self._viewer.layers.selection.active = layer
        self.node.reset_choices()
        self.track.reset_choices()
        self._refresh()

    def _start_on_image(self) -> None:
        skeleton = TEMPLATES[self.template.value]()
        layer = start_labels_on_image(self._viewer, self.image.value, skeleton)
        self.layer.reset_choices()
        self.layer.value = layer

    # ------------------------------------------------------------------ actions
    def _node_picked(self, name: str | None) -> None:
        if self.labeller is not None and name is not None and name in self.labeller.node_names:
            if self.labeller.node_names.index(name) != self.labeller.node:
                self.labeller.set_node(name)

    def _set_track(self) -> None:
        name = self.new_track.value.strip() or self.track.value
        if self.labeller is not None and name:
            self.labeller.set_track(name)
            self.new_track.value = ""
            self.track.reset_choices()
            self.track.value = name

    def _current_labels(self) -> sio.Labels:
        """The project of the bound layer, all its layers merged (for saving and autosave)."""
        binding = self.labeller.binding
        layers = [l for l in self._viewer.layers if isinstance(l, napari.layers.Points)
                  and l.metadata.get(POSE_KEY) is not None
                  and l.metadata[POSE_KEY].labels is binding.labels]  # fmt: skip
        return layers_to_labels([(l.data, {"metadata": l.metadata, "features": l.features})
                                 for l in layers])  # fmt: skip

    def save_labels(self, path: str | Path | None = None) -> Path:
        """Save the project atomically to ``path`` (default: the file it came from)."""
        from napari_pose.core.io import save_labels

        target = Path(path) if path else labels_path(self.labeller.layer)
        if target is None:
            raise ValueError("this project has no file yet: give a path to save to")
        save_labels(self._current_labels(), target)
        self.labeller.binding.labels.provenance["filename"] = str(target)
        self.autosaver.saved(target)
        return target

    def _refresh(self, event=None) -> None:
        labeller = self.labeller
        if labeller is None:
            self.status.value = "no labels layer: open a project or start one on an image"
            return
        self.mode.value = labeller.mode
        self.node.reset_choices()
        self.node.value = labeller.node_names[labeller.node]
        placed = set(labeller.placed())
        marks = " ".join(("✓" if i in placed else "·") + name
                         for i, name in enumerate(labeller.node_names))  # fmt: skip
        self.status.value = f"#{labeller.instance}: {len(placed)}/{labeller.n_nodes} placed\n{marks}"
