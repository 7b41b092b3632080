"""The *Label poses* dock widget: pick a labels layer (or start one on any image) and label.

Thin: every button calls a ``Labeller`` method (``napari/labelling.py``), which calls the pure
table edits of ``core/labelling.py``. The same actions have keyboard shortcuts on the layer.

The dock also guards the project against lost work (autosave, and a question on closing
napari). It learns of edits only through :data:`project_edited`, which docks emit after editing
a project (and ``sync`` for edits made with napari's own point tools), so edits made anywhere
are autosaved and guarded too; and of saves only through :data:`project_saved`, so a save from
any dock ends the guard. A failing autosave is shown once, then kept in the dock's status.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import napari.viewer
import numpy as np
import sleap_io as sio
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    RadioButtons,
    SpinBox,
)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_warning

import napari
from napari_pose.core import suggestions as sg
from napari_pose.core.autosave import Autosaver, recovery_for
from napari_pose.core.io import load_labels
from napari_pose.core.skeleton import TEMPLATES, load_skeleton
from napari_pose.napari.convert import (
    POSE_KEY,
    labels_to_layers,
    new_project_layers,
    palette,
)
from napari_pose.napari.labelling import (
    SHORTCUTS,
    Labeller,
    PlaneFrames,
    current_project,
    go_to_frame,
    project_layers,
    save_project,
    user_label_layers,
)
from napari_pose.napari.sync import project_edited, project_saved

#: Seconds between autosaves of pending edits even when no new edit arrives.
AUTOSAVE_INTERVAL_S = 30


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


def ask_unsaved() -> str:
    """Ask whether to save unsaved labels before closing: "save", "discard" or "cancel"."""
    from qtpy.QtWidgets import QMessageBox

    buttons = (QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
               | QMessageBox.StandardButton.Cancel)  # fmt: skip
    answer = QMessageBox.question(None, "napari-pose", "Save your labels before closing?", buttons)
    return {QMessageBox.StandardButton.Save: "save",
            QMessageBox.StandardButton.Discard: "discard"}.get(answer, "cancel")  # fmt: skip


def color_points_by(layer: napari.layers.Points, feature: str) -> None:
    """Colour point faces by a categorical feature (node, track or instance)."""
    values = layer.features[feature]
    n = len(values.cat.categories) if hasattr(values, "cat") else len(np.unique(values))
    layer.face_color_cycle = palette(max(n, 1))
    layer.face_color = feature
    layer.face_color_mode = "cycle"


class LabelWidget(Container):
    """Label keypoints: nodes in order, instances, occlusion, tracks, copy, undo, save."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self.labeller: Labeller | None = None
        self.autosaver: Autosaver | None = None  # set with the labeller
        self._autosave_error: str | None = None  # the autosave failure shown, until one succeeds

        self.layer = ComboBox(label="labels layer", choices=self._layer_choices)
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.template = ComboBox(label="skeleton", choices=list(TEMPLATES))
        self.skeleton_file = FileEdit(label="or from file", mode="r",
                                      filter="*.json *.slp *.yaml")  # fmt: skip
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
        self.restore = PushButton(label="", text="Restore autosave", visible=False)
        self.color_by = ComboBox(label="colour by", choices=["node", "track", "instance"])
        self.names = CheckBox(label="node names", value=False)
        self.method = ComboBox(label="suggest", choices=["diverse", "random", "strided"])
        self.n_suggestions = SpinBox(label="frames", value=20, min=1, max=10_000)
        self.suggest = PushButton(label="", text="Suggest frames to label")
        self.progress = ProgressBar(label="", value=0, visible=False)
        self.suggested = ComboBox(label="suggested", choices=self._suggestion_choices)
        self.shortcuts = Label(label="keys", value="\n".join(
            f"{key}: {text}" for key, (_, text) in SHORTCUTS.items()))  # fmt: skip
        self.extend([self.layer, self.image, self.template, self.skeleton_file, self.start, self.mode, self.node,
                     self.status, *self.buttons.values(), self.track, self.new_track,
                     self.set_track_button, self.color_by, self.names, self.method,
                     self.n_suggestions, self.suggest, self.progress, self.suggested, self.save,
                     self.restore, self.shortcuts])  # fmt: skip

        self.layer.changed.connect(self._bind)
        self.start.clicked.connect(self._start_on_image)
        self.mode.changed.connect(lambda value: self.labeller and self.labeller.set_mode(value))
        self.node.changed.connect(self._node_picked)
        for name, button in self.buttons.items():
            button.clicked.connect(
                lambda *_, name=name: self.labeller and getattr(self.labeller, name)()
            )
        self.set_track_button.clicked.connect(self._set_track)
        self.save.clicked.connect(self.save_labels)
        self.restore.clicked.connect(self.restore_autosave)
        self.color_by.changed.connect(
            lambda f: self.labeller and color_points_by(self.labeller.layer, f)
        )
        self.names.changed.connect(self._show_names)
        self.suggest.clicked.connect(self.start_suggestions)
        self.suggested.changed.connect(self._go_to_suggestion)
        self._timer = self._autosave_timer()
        project_edited.connect(self._count_edit)  # held weakly: goes with the widget
        project_saved.connect(self._count_save)
        self.confirm_close = ask_unsaved
        from qtpy.QtCore import QTimer

        QTimer.singleShot(0, self._guard_close)  # once docked, watch napari's window close
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

    def _suggestion_choices(self, _=None) -> list[tuple[str, int]]:
        if self.labeller is None:
            return []
        video = self.labeller.binding.labels.videos[self.labeller.binding.video]
        frames = sorted({s.frame_idx for s in self.labeller.binding.labels.suggestions
                         if s.video is video})  # fmt: skip
        return [(f"frame {f}", f) for f in frames]

    def _reset_choices(self, event=None) -> None:
        self.layer.reset_choices()
        self.image.reset_choices()
        if self.layer.value is not None and (
            self.labeller is None or self.labeller.layer is not self.layer.value
        ):
            self._bind()

    # ------------------------------------------------------------------ binding
    def _bind(self, event=None) -> None:
        layer = self.layer.value
        if layer is None or (self.labeller is not None and self.labeller.layer is layer):
            return
        self._flush()
        if self.labeller is not None:
            self.labeller.close()
        self.autosaver = Autosaver(labels_path(layer), self._current_labels)
        self._autosave_error = None
        edited = partial(project_edited.emit, layer.metadata[POSE_KEY].labels)
        self.labeller = Labeller(self._viewer, layer, on_edit=edited)
        self.labeller.changed.connect(self._refresh)
        self._viewer.layers.selection.active = layer
        self.node.reset_choices()
        self.track.reset_choices()
        self.suggested.reset_choices()
        recovery = recovery_for(labels_path(layer))
        self.restore.visible = recovery is not None
        if recovery is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(recovery.stat().st_mtime))
            self.restore.text = f"Restore autosave of {stamp} (newer than the file)"
        self._refresh()

    def _start_on_image(self) -> None:
        chosen = Path(str(self.skeleton_file.value))
        # A SLEAP skeleton JSON, a labels file's skeleton or a DLC config; else the template.
        skeleton = load_skeleton(chosen) if chosen.is_file() else TEMPLATES[self.template.value]()
        layer = start_labels_on_image(self._viewer, self.image.value, skeleton)
        self.layer.reset_choices()
        self.layer.value = layer

    # ------------------------------------------------------------------ actions
    def _node_picked(self, name: str | None) -> None:
        labeller = self.labeller
        known = labeller is not None and name in labeller.node_names
        if known and labeller.node_names.index(name) != labeller.node:
            labeller.set_node(name)

    def _set_track(self) -> None:
        name = self.new_track.value.strip() or self.track.value
        if self.labeller is not None and name:
            self.labeller.set_track(name)
            self.new_track.value = ""
            self.track.reset_choices()
            self.track.value = name

    def _show_names(self, visible: bool) -> None:
        if self.labeller is not None:
            layer = self.labeller.layer
            layer.text = {"string": "{node}", "size": 9, "color": "white",
                          "anchor": "upper_left", "translation": [0, -2, 2][-layer.ndim:]}  # fmt: skip
            layer.text.visible = visible

    def _image_of(self, layer: napari.layers.Points) -> napari.layers.Image | None:
        """The image layer a labels layer annotates: same video name, or the only image."""
        images = [l for l in self._viewer.layers if isinstance(l, napari.layers.Image)]
        named = [l for l in images if layer.name.startswith(l.name + " ")]
        return (named or images or [None])[0]

    def start_suggestions(self):
        """Compute frame suggestions in a worker thread; progress shows in the dock."""
        labeller = self.labeller
        binding = labeller.binding
        image = self._image_of(labeller.layer)
        n_frames = int(np.prod(binding.plane_shape))
        done = binding.merged(labeller.layer.data, labeller.layer.features).frame
        k, method = int(self.n_suggestions.value), self.method.value

        @thread_worker
        def work():
            if method == "diverse":
                frames = yield from sg.iter_diverse_frames(
                    PlaneFrames(image, binding.plane_shape), k, exclude=done
                )
                return frames
            picker = sg.random_frames if method == "random" else sg.strided_frames
            return picker(n_frames, k, exclude=done)

        worker = work()
        self.progress.visible = True
        worker.yielded.connect(self._progressed)
        worker.returned.connect(self._suggested)
        worker.start()
        return worker

    def _progressed(self, progress: tuple[int, int]) -> None:
        self.progress.max, self.progress.value = progress[1], progress[0]

    def _suggested(self, frames: np.ndarray) -> None:
        binding = self.labeller.binding
        video = binding.labels.videos[binding.video]
        sg.merge_suggestions(binding.labels, sg.to_suggestions(frames, video))
        self.progress.visible = False
        self.suggested.reset_choices()
        project_edited.emit(binding.labels)

    def _go_to_suggestion(self, frame: int | None) -> None:
        if self.labeller is not None and frame is not None:
            go_to_frame(self._viewer, self.labeller.layer, frame)

    def _count_edit(self, labels: sio.Labels) -> None:
        """Count an edit for autosave if it is of the bound layer's project, the only one the
        autosaver saves (another project open in napari has no autosave)."""
        if self.labeller is not None and labels is self.labeller.binding.labels:
            self.autosaver.edited()
            self._report_autosave()

    def _count_save(self, labels: sio.Labels, path: Path) -> None:
        """The bound project was saved to ``path`` (by this dock or another): its edits are safe."""
        if self.labeller is not None and labels is self.labeller.binding.labels:
            self.autosaver.saved(path)
            self._report_autosave()

    def _flush(self) -> None:
        """Autosave pending edits now (the timer, or before binding another project)."""
        if self.autosaver is not None:
            self.autosaver.flush()
            self._report_autosave()

    def _report_autosave(self) -> None:
        """Warn once about a new autosave failure, and keep it in the status until one succeeds.

        A failing disk fails again at every retry (every few edits and every timer tick):
        warning each time would bury labelling under pop-ups, but saying nothing would let the
        user label on believing the work is protected.
        """
        error = self.autosaver.last_error
        if error == self._autosave_error:
            return
        if error is not None:
            show_warning(error)
        self._autosave_error = error
        self._refresh()

    def _autosave_timer(self):
        """Flush pending edits to the autosave every ``AUTOSAVE_INTERVAL_S`` seconds."""
        from qtpy.QtCore import QTimer

        timer = QTimer(self.native)
        timer.timeout.connect(self._flush)
        timer.start(AUTOSAVE_INTERVAL_S * 1000)
        return timer

    def _guard_close(self) -> None:
        from qtpy.QtCore import QEvent, QObject

        widget = self

        class CloseGuard(QObject):
            def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
                if event.type() == QEvent.Type.Close and not widget.close_allowed():
                    event.ignore()
                    return True
                return False

        self._close_guard = CloseGuard(self.native)
        self.native.window().installEventFilter(self._close_guard)

    def close_allowed(self) -> bool:
        """Whether napari may close: asks first when labels are not saved yet."""
        if self.autosaver is None or not self.autosaver.dirty:
            return True
        answer = self.confirm_close()
        if answer == "save":
            self.save_labels()
        return answer != "cancel"

    def restore_autosave(self) -> None:
        """Replace the project's layers by the newer autosave; saving then writes the file."""
        layer = self.labeller.layer
        original, binding = labels_path(layer), layer.metadata[POSE_KEY]
        labels = load_labels(recovery_for(original), lazy=False)
        labels.provenance["filename"] = str(original)
        self.labeller.close()
        self.labeller, self.autosaver = None, None
        for old in project_layers(self._viewer, binding.labels):
            self._viewer.layers.remove(old)
        for data, kwargs, kind in labels_to_layers(labels, plane_shapes={0: binding.plane_shape}):
            getattr(self._viewer, f"add_{kind}")(data, **kwargs)
        project_edited.emit(labels)  # the restored labels are not in the file yet
        self.restore.visible = False

    def _current_labels(self) -> sio.Labels:
        """The project of the bound layer, all its layers merged (for saving and autosave)."""
        return current_project(self._viewer, self.labeller.binding.labels)

    def save_labels(self, path: str | Path | None = None) -> Path:
        """Save the project atomically to ``path`` (default: the file it came from)."""
        target = Path(path) if path else labels_path(self.labeller.layer)
        if target is None:
            raise ValueError("this project has no file yet: give a path to save to")
        save_project(self._viewer, self.labeller.binding.labels, target)
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
        status = f"#{labeller.instance}: {len(placed)}/{labeller.n_nodes} placed\n{marks}"
        self.status.value = status + (f"\n{self._autosave_error}" if self._autosave_error else "")
