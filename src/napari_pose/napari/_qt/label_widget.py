"""The *Label poses* dock widget: pick a labels layer (or start one on any image) and label.

Thin: every button calls a ``Labeller`` method (``napari/labelling.py``), which calls the pure
table edits of ``core/labelling.py``. The same actions have keyboard shortcuts on the layer.

Edits go to the bound project's session (``napari/session.py``), which autosaves them and
which napari's close guard asks about, whichever docks are open; the dock shows the session's
state (unsaved, autosave failures) and offers a newer autosave when there is one. When the
project's model changes (``ProjectSession.model_changed``: the *Train model* dock trained a new
one), a "propose from model" field holding the previous model follows it; one left empty
(proposals off) or holding another folder the user chose is left alone. Rarely used
controls sit in collapsed sections, so the dock fits a laptop screen, and the status has a fixed
height, so it never resizes the canvas under the cursor.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import napari
import napari.viewer
import numpy as np
import sleap_io as sio
from magicgui.types import FileDialogMode
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
    Widget,
)
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_warning
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QListView, QListWidget, QListWidgetItem, QSizePolicy

from napari_pose.core import suggestions as sg
from napari_pose.core.io import load_labels
from napari_pose.core.pose_arrays import concat
from napari_pose.core.quality import Flag, check_arrays, counts
from napari_pose.core.skeleton import TEMPLATES, load_skeleton
from napari_pose.napari._qt.layout import ScrollingDock, collapsible, fixed_lines
from napari_pose.napari._qt.services import save_session
from napari_pose.napari.convert import (
    POSE_KEY,
    PoseBinding,
    labels_to_layers,
    new_project_layers,
)
from napari_pose.napari.labelling import (
    SHORTCUTS,
    Labeller,
    Mode,
    PlaneFrames,
    go_to_frame,
    image_of,
    user_label_layers,
)
from napari_pose.napari.session import ProjectSession, projects, same_path
from napari_pose.napari.styles import node_colors


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


def color_points_by(layer: napari.layers.Points, feature: str) -> None:
    """Colour point faces by a categorical feature (node, track or instance)."""
    values = layer.features[feature]
    n = len(values.cat.categories) if hasattr(values, "cat") else len(np.unique(values))
    layer.face_color_cycle = node_colors(max(n, 1), layer.metadata[POSE_KEY].predicted)
    layer.face_color = feature
    layer.face_color_mode = "cycle"


class LabelWidget(ScrollingDock):
    """Label keypoints: nodes in order, instances, occlusion, tracks, copy, undo, save."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self.labeller: Labeller | None = None
        self.session: ProjectSession | None = None  # the bound layer's project

        self.layer = ComboBox(label="labels layer", choices=self._layer_choices)
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.template = ComboBox(label="skeleton", choices=list(TEMPLATES))
        self.skeleton_file = FileEdit(label="or from file", mode=FileDialogMode.EXISTING_FILE,
                                      filter="*.json *.slp *.yaml")  # fmt: skip
        self.start = PushButton(label="", text="Start labelling this image")
        self.mode = RadioButtons(label="mode", choices=["label", "move"], orientation="horizontal")
        self.mode.value = "label"  # (RadioButtons' typed keywords leave ``value`` out)
        self.node = ComboBox(label="next node", choices=self._node_choices)
        self.status = Label(label="instance", value="")
        self.track = ComboBox(label="track", choices=self._track_choices)
        self.new_track = LineEdit(label="new track")
        buttons = {
            "new_instance": "New instance (n)", "delete_instance": "Delete instance (x)",
            "toggle_occluded": "Occluded (o)", "copy_previous_frame": "Copy previous frame (c)",
            "use_prediction": "Prediction -> label (u)",
            "accept_proposals": "Accept all predictions (Shift+U)", "undo": "Undo (Ctrl+Z)",
        }  # fmt: skip
        self.buttons = {name: PushButton(label="", text=text) for name, text in buttons.items()}
        self.set_track_button = PushButton(label="", text="Set track of instance")
        self.propagate_frames = SpinBox(label="propagate", value=5, min=1, max=100,
                                        tooltip="frames to carry this frame's instances")  # fmt: skip
        self.propagate_buttons = {
            1: PushButton(
                label="",
                text="Forward (k)",
                tooltip="carry this frame's instances to the next frames",
            ),
            -1: PushButton(
                label="",
                text="Back (K)",
                tooltip="carry this frame's instances to the previous frames (Shift+K)",
            ),
        }
        self.propose_model = FileEdit(
            label="propose from model", mode=FileDialogMode.EXISTING_DIRECTORY,
            tooltip="a model package: its instances appear on each unlabelled frame you step to, "
                    "as predictions to accept (Shift+U all, u or double click one); empty: off",
        )  # fmt: skip
        self.propose_message = Label(label="", value="", visible=False)
        self.propose_message.native.setWordWrap(True)
        self._propose_problem = ""  # why the chosen folder is no model package, or nothing
        self._propose_note = ""  # the status line's note that proposals followed a new model
        self.save = PushButton(label="", text="Save labels")
        self.restore = PushButton(label="", text="Restore autosave", visible=False)
        self.color_by = ComboBox(label="colour by", choices=["node", "track", "instance"])
        self.names = CheckBox(label="node names", value=False)
        self.method = ComboBox(label="suggest", choices=["diverse", "random", "strided", "model"],
                               tooltip="model: the frames a trained model is least sure of")  # fmt: skip
        self.suggest_model = FileEdit(label="model folder", mode=FileDialogMode.EXISTING_DIRECTORY,
                                      visible=False)  # fmt: skip
        self.suggest_message = Label(label="", value="", visible=False)
        # Why the model suggested each frame, by (video, frame): shown in the 'suggested' list.
        self.suggestion_reasons: dict[tuple[int, int], str] = {}
        self.n_suggestions = SpinBox(label="frames", value=20, min=1, max=10_000)
        self.suggest = PushButton(label="", text="Suggest frames to label")
        self.progress = ProgressBar(label="", value=0, visible=False)
        self.suggested = ComboBox(label="suggested", choices=self._suggestion_choices)
        # Items carry the model's reasons: long ones elide instead of widening the dock.
        self.suggested.native.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.suggested.native.setMinimumContentsLength(12)
        self.check = PushButton(label="", text="Check labels")
        self.check_summary = Label(label="", value="")
        self.flag_list = QListWidget()
        # Long reasons wrap to the dock's width instead of widening it (and the window).
        self.flag_list.setWordWrap(True)
        self.flag_list.setResizeMode(QListView.ResizeMode.Adjust)
        self.flag_list.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.flag_list.setMinimumHeight(self.flag_list.fontMetrics().lineSpacing() * 8)
        self.flag_list.setToolTip("likely mistakes, most suspicious first: click one to go there")
        self.flags: list[Flag] = []
        self.shortcuts = Label(label="keys", value="\n".join(
            f"{key}: {text}" for key, (_, text) in SHORTCUTS.items()))  # fmt: skip
        start = Container(widgets=[self.image, self.template, self.skeleton_file, self.start])
        tracks = Container(widgets=[self.track, self.new_track, self.set_track_button])
        suggest = Container(widgets=[self.method, self.suggest_model, self.n_suggestions,
                                     self.suggest, self.progress, self.suggest_message])  # fmt: skip
        self.suggest_message.native.setWordWrap(True)
        propose_section = Container(widgets=[self.propose_model, self.propose_message])
        display = Container(widgets=[self.color_by, self.names])
        check: Container[Widget] = Container(widgets=[self.check, self.check_summary])
        check.native.layout().addWidget(self.flag_list)
        action_buttons = list(self.buttons.values())
        rows = [Container(layout="horizontal", widgets=action_buttons[i : i + 2], labels=False)
                for i in range(0, len(action_buttons), 2)]  # fmt: skip
        propagate: Container[Widget] = Container(layout="horizontal", labels=False, widgets=[
            Label(value="Propagate"), self.propagate_frames, *self.propagate_buttons.values()])  # fmt: skip
        propagate.margins = (0, 0, 0, 0)
        for row in rows:
            row.margins = (0, 0, 0, 0)
        body = self.body
        body.extend([self.layer, self.mode, self.node, self.status, *rows, propagate,
                     self.suggested, self.save, self.restore])  # fmt: skip
        self.sections = {
            "start": collapsible(body, "Start labelling an image", start),
            "tracks": collapsible(body, "Tracks", tracks),
            "propose": collapsible(body, "Propose from a model", propose_section),
            "suggest": collapsible(body, "Suggest frames to label", suggest),
            "check": collapsible(body, "Check labels", check),
            "display": collapsible(body, "Display", display),
            "keys": collapsible(body, "Keys", Container(widgets=[self.shortcuts])),
        }
        fixed_lines(self.status, 4)
        fixed_lines(self.check_summary, 2)

        self.layer.changed.connect(self._bind)
        self.start.clicked.connect(self._start_on_image)
        self.mode.changed.connect(self._mode_picked)
        self.node.changed.connect(self._node_picked)
        for name, button in self.buttons.items():
            button.clicked.connect(lambda *_, name=name: self._act(name))
        self.set_track_button.clicked.connect(self._set_track)
        self.propagate_frames.changed.connect(self._propagate_frames_picked)
        self.propose_model.changed.connect(self._propose_model_picked)
        for direction, button in self.propagate_buttons.items():
            button.clicked.connect(lambda *_, d=direction: self.propagate(d))
        self.save.clicked.connect(lambda: self.save_labels())  # not with the button state
        self.restore.clicked.connect(self.restore_autosave)
        self.color_by.changed.connect(self._color_by)
        self.names.changed.connect(self._show_names)
        self.suggest.clicked.connect(self.start_suggestions)
        self.method.changed.connect(self._method_picked)
        self.suggested.changed.connect(self._go_to_suggestion)
        self.check.clicked.connect(lambda: self.check_labels())
        self.flag_list.itemActivated.connect(self._go_to_flag)
        self.flag_list.itemClicked.connect(self._go_to_flag)
        self._projects = projects(viewer)
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
        reasons = self.suggestion_reasons
        return [(f"frame {f}: {reasons[id(video), f]}" if (id(video), f) in reasons
                 else f"frame {f}", f) for f in frames]  # fmt: skip

    def _reset_choices(self, event=None) -> None:
        self.layer.reset_choices()
        self.image.reset_choices()
        if self.layer.value is None and self.labeller is not None:
            self._unbind()  # the bound layer was removed
        if self.layer.value is not None and (
            self.labeller is None or self.labeller.layer is not self.layer.value
        ):
            self._bind()
        if self.labeller is None:
            self.sections["start"].expand(animate=False)  # the first thing a new user needs

    # ------------------------------------------------------------------ binding
    def _bind(self, event=None) -> None:
        layer = self.layer.value
        if layer is None or (self.labeller is not None and self.labeller.layer is layer):
            return
        self._unbind()
        session = self._projects.of_layer(layer)
        assert session is not None  # ``Projects`` opens a session for every pose layer added
        self.session = session
        session.changed.connect(self._refresh)
        session.model_changed.connect(self._project_model_changed)
        self.labeller = labeller = Labeller(self._viewer, layer, on_edit=session.mark_edited)
        labeller.propagate_frames = int(self.propagate_frames.value)
        labeller.changed.connect(self._refresh)
        folder = self._proposal_model()
        if folder is not None:
            labeller.propose_from(folder)
        self._viewer.layers.selection.active = layer
        self.node.reset_choices()
        self.track.reset_choices()
        self.suggested.reset_choices()
        recovery = session.recovery()
        self.restore.visible = recovery is not None
        if recovery is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(recovery.stat().st_mtime))
            self.restore.text = f"Restore autosave of {stamp} (newer than the file)"
        self._refresh()

    def _unbind(self) -> None:
        if self.labeller is not None:
            self.labeller.close()
        if self.session is not None:
            self.session.changed.disconnect(self._refresh)
            self.session.model_changed.disconnect(self._project_model_changed)
        self.labeller, self.session = None, None
        self._propose_note = ""
        self.flags = []  # they were of the project unbound
        self.flag_list.clear()
        self.check_summary.value = ""
        self._refresh()

    def _start_on_image(self) -> None:
        chosen = Path(str(self.skeleton_file.value))
        # A SLEAP skeleton JSON, a labels file's skeleton or a DLC config; else the template.
        skeleton = load_skeleton(chosen) if chosen.is_file() else TEMPLATES[self.template.value]()
        layer = start_labels_on_image(self._viewer, self.image.value, skeleton)
        self.layer.reset_choices()
        self.layer.value = layer
        # The skeleton edges layer was added last and is active: clicks would go to it.
        self._viewer.layers.selection.active = layer
        labeller = self.labeller
        assert labeller is not None  # choosing the new layer bound it
        labeller.set_mode("label")
        self.sections["start"].collapse(animate=False)

    # ------------------------------------------------------------------ actions
    def _mode_picked(self, mode: Mode) -> None:
        if self.labeller is not None:
            self.labeller.set_mode(mode)

    def _act(self, action: str) -> None:
        """Run the ``Labeller`` method of a button (``new_instance``, ``undo``...)."""
        if self.labeller is not None:
            getattr(self.labeller, action)()

    def _propagate_frames_picked(self, value: int) -> None:
        if self.labeller is not None:
            self.labeller.propagate_frames = int(value)

    def propagate(self, direction: int = 1) -> int:
        """Propagate this frame's user instances (``Labeller.propagate``): proposals go to the
        project's predictions layer. Returns how many were written."""
        if self.labeller is None:
            show_warning("no labels layer: open a project or start labelling an image")
            return 0
        return self.labeller.propagate(int(self.propagate_frames.value), direction)

    def _proposal_model(self) -> Path | None:
        """The "propose from model" folder when it is a model package (``None``: empty, or
        not a package, which ``_refresh`` then says)."""
        from napari_pose.core.errors import PoseFileError
        from napari_pose.nn.inference import trained_animals

        value = self.propose_model.value
        folder = value if isinstance(value, Path) and str(value) not in ("", ".") else None
        self._propose_problem = ""
        if folder is None:
            return None
        try:
            trained_animals(folder)  # reads its config only: quick, before any weights load
        except (PoseFileError, OSError) as error:
            self._propose_problem = f"not a model package: {' '.join(str(error).split())}"
            return None
        return folder

    def _propose_model_picked(self, event=None) -> None:
        """Propose from the chosen model (the model loads with the first frame, in a worker)."""
        self._propose_note = ""
        folder = self._proposal_model()
        if self.labeller is not None:
            self.labeller.propose_from(folder)
        self._refresh()

    def _project_model_changed(self, new: Path | None, previous: Path | None) -> None:
        """The bound project has a new model: proposals from its previous one now come from
        the new one (said in the status). An empty field means proposals are off and stays
        so; another folder the user chose is theirs and is kept."""
        value = self.propose_model.value
        if new is None or previous is None or not isinstance(value, Path):
            return
        if str(value) in ("", ".") or not same_path(value, previous):
            return
        self.propose_model.value = new  # ``_propose_model_picked`` switches the Labeller
        self._propose_note = f"proposals now from {new.name}"
        self._refresh()

    def _color_by(self, feature: str) -> None:
        if self.labeller is not None:
            color_points_by(self.labeller.layer, feature)

    def _node_picked(self, name: str | None) -> None:
        labeller = self.labeller
        if labeller is None or name is None or name not in labeller.node_names:
            return
        if labeller.node_names.index(name) != labeller.node:
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
        return image_of(self._viewer, layer)

    def _method_picked(self, method: str) -> None:
        self.suggest_model.visible = method == "model"
        self._say("")

    def _say(self, message: str) -> None:
        """One line under the suggestion button (a problem the user can fix), or none."""
        self.suggest_message.value = message
        self.suggest_message.visible = bool(message)

    def _suggestion_model(self) -> Path | None:
        """The chosen model folder, checked to be a model package (else said in the dock)."""
        from napari_pose.core.errors import PoseFileError
        from napari_pose.nn.inference import trained_animals

        value = self.suggest_model.value
        folder = value if isinstance(value, Path) and str(value) not in ("", ".") else None
        if folder is None:
            self._say("choose a model folder (a model package from Train model)")
            return None
        try:
            trained_animals(folder)  # reads its config only: quick, before any weights load
        except (PoseFileError, OSError) as error:
            self._say(f"not a model package: {' '.join(str(error).split())}")
            return None
        return folder

    def start_suggestions(self) -> GeneratorWorker | None:
        """Compute frame suggestions in a worker thread; progress shows in the dock.

        They go to the project they were computed for, even if the dock is bound to another
        layer by the time they are ready. ``model`` ranks the unlabelled frames by how unsure
        the chosen model is (``nn.uncertainty``) and keeps each frame's reason for the list.
        """
        labeller, session = self.labeller, self.session
        if labeller is None or session is None:
            show_warning("no labels layer: open a project or start labelling an image")
            return None
        binding = labeller.binding
        image = self._image_of(labeller.layer)
        n_frames = int(np.prod(binding.plane_shape))
        done = binding.merged(labeller.layer.data, labeller.layer.features).frame
        k, method = int(self.n_suggestions.value), self.method.value
        self._say("")
        folder = self._suggestion_model() if method == "model" else None
        if method == "model" and folder is None:
            return None
        if method in ("diverse", "model") and image is None:
            self._say("no image layer of this project to read frames from")
            return None

        @thread_worker
        def work():
            if method == "model":
                from napari_pose.nn.uncertainty import rank_frames

                chosen = yield from rank_frames(
                    folder, PlaneFrames(image, binding.plane_shape), n=k, exclude=done
                )
                return chosen
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
        worker.returned.connect(functools.partial(self._suggested, binding, session))
        worker.errored.connect(self._suggestions_failed)
        worker.start()
        return worker

    def _suggestions_failed(self, error: Exception) -> None:
        self.progress.visible = False
        self._say(f"could not suggest frames: {' '.join(str(error).split())}")

    def _progressed(self, progress: tuple[int, int]) -> None:
        self.progress.max, self.progress.value = progress[1], progress[0]

    def _suggested(self, binding: PoseBinding, session: ProjectSession, found) -> None:
        """Merge the suggestions (frame indices, or ``Suggestion``s with their reasons)."""
        video = binding.labels.videos[binding.video]
        frames = [getattr(item, "frame", item) for item in found]
        for item in found:
            if hasattr(item, "reason"):
                self.suggestion_reasons[id(video), int(item.frame)] = item.reason
        added = sg.merge_suggestions(binding.labels, sg.to_suggestions(frames, video))
        self.progress.visible = False
        self.suggested.reset_choices()
        if frames and hasattr(found[0], "reason"):
            self._say(f"{len(added)} new of {len(frames)} frames the model is least sure of")
        session.mark_edited()

    def _go_to_suggestion(self, frame: int | None) -> None:
        if self.labeller is not None and frame is not None:
            go_to_frame(self._viewer, self.labeller.layer, frame)

    def check_labels(self) -> list[Flag]:
        """List likely mistakes in the bound project's user labels (``core.quality``).

        The project is read from its layers as they are now, unsaved edits included, every
        video and every frame (a windowed layer's other frames too). Frame sizes come from the
        image layers, so a node outside the image is caught for stacks and videos alike.
        """
        session = self.session
        if session is None:
            show_warning("no labels to check: open a project or start labelling an image")
            return []
        layers = session.user_layers()
        bindings = [layer.metadata[POSE_KEY] for layer in layers]
        parts = [binding.merged(layer.data, layer.features)
                 for binding, layer in zip(bindings, layers)]  # fmt: skip
        sizes = {}
        for binding, layer in zip(bindings, layers):
            image = self._image_of(layer)
            if image is not None:
                n_lead = len(binding.plane_shape)
                height, width = image.data.shape[n_lead : n_lead + 2]
                sizes[binding.video] = (int(height), int(width))
        self.flags = check_arrays(concat(parts), sizes) if parts else []
        self.flag_list.clear()
        for flag in self.flags:
            text = f"frame {flag.frame}, instance {flag.instance}: {flag.reason}"
            if len(session.labels.videos) > 1:
                text = f"video {flag.video}, {text}"
            item = QListWidgetItem(text)
            item.setData(Qt.ItemDataRole.UserRole, len(self.flag_list))
            self.flag_list.addItem(item)
        found = ", ".join(f"{n} {kind}" for kind, n in counts(self.flags).items() if n)
        self.check_summary.value = (f"{len(self.flags)} to look at ({found})" if self.flags
                                    else "no likely mistakes found")  # fmt: skip
        return self.flags

    def _go_to_flag(self, item: QListWidgetItem) -> None:
        """Show the flagged frame and make the flagged instance current, its points selected."""
        session = self.session
        index = item.data(Qt.ItemDataRole.UserRole)
        if session is None or index is None or index >= len(self.flags):
            return
        flag = self.flags[index]
        layer = next((l for l in session.user_layers()
                      if l.metadata[POSE_KEY].video == flag.video), None)  # fmt: skip
        if layer is None:
            return  # the video's layer was removed since the check
        go_to_frame(self._viewer, layer, flag.frame)
        if self.labeller is not None and self.labeller.layer is layer:
            self.labeller.select(flag.instance_id)
            plane = self.labeller.plane()
            on_plane = np.all(np.round(layer.data[:, : len(plane)]) == plane, axis=1)
            rows = on_plane & (layer.features["instance"].to_numpy() == flag.instance_id)
            layer.selected_data = set(np.flatnonzero(rows).tolist())

    def restore_autosave(self) -> None:
        """Replace the project's layers by the newer autosave; saving then writes the file."""
        session, labeller = self.session, self.labeller
        recovery = session.recovery() if session is not None else None
        if labeller is None or session is None or recovery is None:
            return  # the button shows only while the bound project has a newer autosave
        binding = labeller.binding
        labels = load_labels(recovery, lazy=False)
        labels.provenance["filename"] = str(session.path) if session.path else None
        self._unbind()
        for old in session.layers():
            self._viewer.layers.remove(old)
        for data, kwargs, kind in labels_to_layers(labels, plane_shapes={0: binding.plane_shape}):
            getattr(self._viewer, f"add_{kind}")(data, **kwargs)
        restored = self._projects.of(labels)
        assert restored is not None  # adding its layers opened it
        restored.mark_edited()  # the restored labels are not in the file yet
        self.restore.visible = False

    @property
    def autosaver(self):
        """The bound project's autosaver (None when no layer is bound)."""
        return None if self.session is None else self.session.autosaver

    def save_labels(self, path: str | Path | None = None) -> Path | None:
        """Save the project atomically to ``path`` (default: its file, else asks where).

        Returns:
            Where it was saved, or None when the user cancelled or the save failed (shown).
        """
        if self.session is None:
            show_warning("no labels to save: open a project or start labelling an image")
            return None
        return save_session(self.session, path)

    def _refresh(self, event=None) -> None:
        labeller, session = self.labeller, self.session  # bound together
        problem = self._propose_problem or (labeller.proposer.error if labeller else None) or ""
        if problem != self.propose_message.value:
            self.propose_message.value = problem
            self.propose_message.visible = bool(problem)
        if labeller is None or session is None:
            self.status.value = "no labels layer: open a project or start one on an image"
            return
        self.mode.value = labeller.mode
        self.node.reset_choices()
        self.node.value = labeller.node_names[labeller.node]
        placed = set(labeller.placed())
        marks = " ".join(("✓" if i in placed else "·") + name
                         for i, name in enumerate(labeller.node_names))  # fmt: skip
        status = f"#{labeller.instance}: {len(placed)}/{labeller.n_nodes} placed\n{marks}"
        error = session.autosaver.last_error
        saved = "unsaved edits" if session.dirty else "saved"
        note = f"\n{self._propose_note}" if self._propose_note else ""
        self.status.value = f"{status}\n{error or saved}{note}"
