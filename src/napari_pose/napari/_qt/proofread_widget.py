"""The *Proofread* dock widget: fix identity errors of tracked poses, frame by frame.

Thin by design: every edit is a pure function of ``core.proofreading`` applied to the full
``PoseArrays`` of a layer (``PoseBinding.merged``, so windowed layers edit every frame), and the
layer is rewritten from the result, as the *Label poses* widget does. Saving the project (the
*Pose project* widget, or the project session's ``save``) therefore writes the edits. Every
edit and undo is an edit of the project's session, so that it is autosaved and napari asks
before closing with it unsaved, whichever docks are open.

Edits of one instance's track (swap, set) act on the chosen layer; edits of the track list
(delete, merge, rename) act on every layer of the project, since they share its tracks.

An evaluation panel compares a predictions layer with a project's user labels
(``nn.metrics.compare``: the figures of ``napari-pose evaluate``) and lists the frames of
lowest OKS, to visit like the suspicious ones.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import napari
import napari.viewer
import numpy as np
import sleap_io as sio
from magicgui.widgets import CheckBox, ComboBox, Label, LineEdit, PushButton
from qtpy.QtCore import QLine, QRectF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QMouseEvent, QPainter, QPaintEvent, QPalette, QPen
from qtpy.QtWidgets import QWidget

from napari_pose.core import proofreading as pr
from napari_pose.core.pose_arrays import PoseArrays, labels_to_arrays
from napari_pose.napari._qt.layout import ScrollingDock
from napari_pose.napari.convert import POSE_KEY, PoseBinding, arrays_to_points, track_colors
from napari_pose.napari.drawing import refresh_tracks_layer
from napari_pose.napari.labelling import go_to_frame
from napari_pose.napari.session import ProjectSession, projects
from napari_pose.napari.sync import attach, pose_points_layers
from napari_pose.nn.metrics import compare, match_videos, video_key

#: Milliseconds of quiet after the layer's points change before its frames are scored again.
RESCORE_DELAY_MS = 300
#: Frames of lowest OKS the evaluation lists to visit.
N_WORST_FRAMES = 20
#: Names the status line gives the criteria of ``core.proofreading.suspicion``.
CRITERION_NAMES = {"speed_jump": "jump", "count_change": "count change",
                   "low_score": "low score", "close": "animals close"}  # fmt: skip


class NodeErrorPlot(QWidget):
    """Median pixel error per node as horizontal bars, the worst node's bar the longest: the
    first thing to check when a model is unsure of one body part (the evaluation panel)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.names: list[str] = []
        self.values = np.zeros(0)  # median error (px) per node, NaN where never matched

    def show_errors(self, names: list[str], values: list[float]) -> None:
        self.names, self.values = list(names), np.asarray(values, dtype=float)
        self.setMinimumHeight(14 * len(self.names) + 4)
        self.update()

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt's name)
        if not self.names:
            return
        painter = QPainter(self)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        finite = self.values[np.isfinite(self.values)]
        top = float(finite.max()) if finite.size else 1.0
        label_width, row = 90, 14
        width = max(self.width() - label_width - 60, 10)
        for i, (name, value) in enumerate(zip(self.names, self.values, strict=True)):
            y = 2 + i * row
            painter.setPen(text)
            painter.drawText(2, y + row - 3, name[:12])
            shown = f"{value:.1f} px" if np.isfinite(value) else "-"
            if np.isfinite(value):
                length = int(width * value / max(top, 1e-9))
                painter.fillRect(label_width, y + 2, max(length, 1), row - 4, QColor("#f0a030"))
                painter.drawText(label_width + length + 4, y + row - 3, shown)
            else:
                painter.drawText(label_width, y + row - 3, shown)


class SuspicionPlot(QWidget):
    """Combined suspicion over the video, like a seekbar: a click jumps to the frame under it.

    Drawn with ``QPainter``, as ``LossPlot`` is: a bar per pixel column (the worst frame it
    covers, so a single swapped frame in 100,000 still shows) and a line at the current frame.
    """

    frame_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(60)
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.values = np.zeros(0)  # combined suspicion per frame
        self.flagged = np.zeros(0, bool)  # frames with a criterion past its threshold
        self.current = 0
        self._bars: tuple[QRectF, list[QLine], list[QLine]] | None = None  # area, plain, flagged

    def show_scores(self, values: np.ndarray, flagged: np.ndarray) -> None:
        self.values, self.flagged = values, flagged
        self._bars = None
        self.update()

    def set_current(self, frame: int) -> None:
        if frame != self.current:
            self.current = frame
            self.update()

    def _area(self) -> QRectF:
        return QRectF(self.rect()).adjusted(2, 2, -2, -2)

    def _x(self, frame: float) -> float:
        """Horizontal position (pixels) of ``frame``: the first frame left, the last right."""
        area = self._area()
        return area.left() + area.width() * frame / max(len(self.values) - 1, 1)

    def frame_at(self, x: float) -> int:
        """The frame under horizontal position ``x`` (pixels): the inverse of ``_x``."""
        area = self._area()
        last = max(len(self.values) - 1, 0)
        fraction = (x - area.left()) / max(area.width(), 1.0)
        return int(np.clip(round(fraction * max(last, 1)), 0, last))

    def mousePressEvent(self, event: QMouseEvent | None) -> None:  # noqa: N802 (Qt's name)
        if event is not None and len(self.values):
            self.frame_clicked.emit(self.frame_at(event.position().x()))

    def _columns(self, area: QRectF) -> tuple[list[QLine], list[QLine]]:
        """One bar per pixel column of ``area``, as high as the worst frame it covers: those
        without and those with a flagged frame. Kept until the scores or the size change, since
        the plot repaints at every frame step and only its current-frame line moves then."""
        n = len(self.values)
        starts = np.unique(np.linspace(0, n, max(int(area.width()), 1), endpoint=False).astype(int))
        worst = np.maximum.reduceat(self.values, starts)
        marked = np.logical_or.reduceat(self.flagged, starts)
        xs = (area.left() + area.width() * starts / max(n - 1, 1)).astype(int)
        tops = (area.bottom() - worst / max(float(worst.max()), 1e-9) * area.height()).astype(int)
        bottom = int(area.bottom())
        lines = [QLine(x, bottom, x, top) for x, top in zip(xs.tolist(), tops.tolist())]
        return ([line for line, flag in zip(lines, marked) if not flag],
                [line for line, flag in zip(lines, marked) if flag])  # fmt: skip

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        area = self._area()
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        painter.drawRect(area)
        if not len(self.values):
            return
        if self._bars is None or self._bars[0] != area:
            self._bars = (area, *self._columns(area))
        for lines, colour in zip(self._bars[1:], ("#4c9be8", "#e8504c"), strict=True):
            painter.setPen(QColor(colour))
            # PyQt6 takes a list of QLine; its stubs list only sip arrays and varargs.
            painter.drawLines(lines)  # type: ignore[call-overload]
        painter.setPen(QPen(self.palette().color(QPalette.ColorRole.WindowText), 2))
        x = int(self._x(self.current))
        painter.drawLine(x, int(area.top()), x, int(area.bottom()))


@attrs.define
class _Step:
    """What an edit replaced, for undo: each layer's full arrays and the project's tracks."""

    arrays: dict[napari.layers.Points, PoseArrays]
    tracks: list


class ProofreadWidget(ScrollingDock):
    """Swap, reassign, delete, merge and rename tracks; visit the most suspicious frames."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._sync = attach(viewer)
        self._projects = projects(viewer)
        self._bound: napari.layers.Points | None = None  # the layer whose edits we follow
        self._history: list[_Step] = []
        self._tracks: list = []  # the layer's tracks: the project's, and any new in its points
        self._scores: dict[str, np.ndarray] = {}
        self._writing = False  # while this widget rewrites layers (their events are not edits)
        self._stale = False  # the layer changed since it was last scored
        self.ranked = np.zeros(0, int)  # suspicious frames of the layer, most suspicious first

        self.layer = ComboBox(label="layer", choices=self._layer_choices)
        self.track_a = ComboBox(label="track A", choices=self._track_choices)
        self.track_b = ComboBox(label="track B", choices=self._track_choices)
        self.swap = PushButton(label="", text="Swap A/B from this frame")
        self.set_a = PushButton(label="", text="Set selected instance to A")
        self.onward = CheckBox(label="", text="and onward", value=False)
        self.delete = PushButton(label="", text="Delete A")
        self.merge = PushButton(label="", text="Merge B into A")
        self.new_name = LineEdit(label="new name")
        self.rename = PushButton(label="", text="Rename A")
        self.undo = PushButton(label="", text="Undo")
        self.previous = PushButton(label="", text="Previous suspicious frame")
        self.next = PushButton(label="", text="Next suspicious frame")
        self.status = Label(label="", value="")
        # Evaluation: predictions against a project's user labels, worst frames to visit.
        self.truth = ComboBox(label="ground truth", choices=self._project_choices)
        self.evaluated = ComboBox(label="predictions", choices=self._layer_choices)
        self.evaluate_button = PushButton(label="", text="Evaluate")
        self.results = Label(label="", value="")
        self.worst = ComboBox(label="worst frames", choices=[])
        body = self.body
        body.extend([self.layer, self.track_a, self.track_b, self.swap, self.set_a, self.onward,
                     self.delete, self.merge, self.new_name, self.rename, self.undo,
                     self.previous, self.next, self.status, self.truth, self.evaluated,
                     self.evaluate_button, self.results, self.worst])  # fmt: skip
        for text in (self.status, self.results):  # long messages wrap rather than widen the dock
            text.native.setWordWrap(True)
        self.plot = SuspicionPlot()  # a plain Qt widget: placed under the navigation by hand
        body.native.layout().insertWidget(body.index(self.status) + 1, self.plot)
        self.node_errors = NodeErrorPlot()  # per-node median error, under the figures
        body.native.layout().insertWidget(body.index(self.results) + 2, self.node_errors)
        # Points change on every edit and every window move: score once they settle.
        self._timer = QTimer(self.native)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RESCORE_DELAY_MS)
        self._timer.timeout.connect(self._refresh_if_stale)

        self.layer.changed.connect(self._bind)
        self.swap.clicked.connect(self.swap_from_here)
        self.set_a.clicked.connect(self.set_selected)
        self.delete.clicked.connect(self.delete_a)
        self.merge.clicked.connect(self.merge_b_into_a)
        self.rename.clicked.connect(self.rename_a)
        self.undo.clicked.connect(self.undo_edit)
        self.previous.clicked.connect(lambda: self.step_suspicious(-1))
        self.next.clicked.connect(lambda: self.step_suspicious(1))
        self.plot.frame_clicked.connect(self._go_to)
        self.evaluate_button.clicked.connect(self.evaluate)
        self.worst.changed.connect(self._go_to_worst)
        viewer.layers.events.inserted.connect(self._reset_choices)
        viewer.layers.events.removed.connect(self._reset_choices)
        viewer.dims.events.current_step.connect(self._on_step)
        self._reset_choices()

    # ------------------------------------------------------------------ choices

    def _layer_choices(self, _widget=None) -> list[tuple[str, napari.layers.Points]]:
        return [(layer.name, layer) for layer in pose_points_layers(self._viewer)]

    def _track_choices(self, _widget=None) -> list[tuple[str, int]]:
        return [(t.name, i) for i, t in enumerate(self._tracks)]

    def _project_choices(self, _widget=None) -> list[str]:
        return list(self._projects.listed())

    def _reset_choices(self, event=None) -> None:
        self.layer.reset_choices()
        self.truth.reset_choices()
        self.evaluated.reset_choices()
        chosen = self.evaluated.value
        if chosen is None or not chosen.metadata[POSE_KEY].predicted:  # predictions by default
            predicted = [
                l for l in pose_points_layers(self._viewer) if l.metadata[POSE_KEY].predicted
            ]
            if predicted:
                self.evaluated.value = predicted[0]
        self._bind()

    def _bind(self, event=None) -> None:
        """Follow the chosen layer: its tracks, its suspicion, its user edits."""
        layer = self.layer.value
        if layer is self._bound:
            return
        if self._bound is not None:
            self._bound.events.data.disconnect(self._changed)
            self._bound.events.features.disconnect(self._changed)
        self._bound = layer
        if layer is not None:
            layer.events.data.connect(self._changed)
            layer.events.features.connect(self._changed)  # tracks set in *Label poses*
        self._history.clear()  # undo steps belong to the layer they were made on
        self._refresh()

    def _changed(self, event=None) -> None:
        """The layer's points changed (an edit elsewhere, or its window moved): score again."""
        if self._writing or getattr(event, "action", None) in ("adding", "removing", "changing"):
            return  # our own rewrite, or a drag in progress
        self._stale = True
        self._timer.start()

    def _refresh_if_stale(self) -> None:
        if self._stale:
            self._refresh()

    def _refresh(self, arrays: PoseArrays | None = None) -> None:
        """Read the layer's tracks and score its frames (``arrays``: its content, if known)."""
        self._stale = False
        layer = self.layer.value
        if layer is None:
            self._tracks, self._scores, self.ranked = [], {}, np.zeros(0, int)
            self._reset_tracks()
            self.plot.show_scores(np.zeros(0), np.zeros(0, bool))
            return
        binding = self._binding()
        arrays = self._arrays(layer) if arrays is None else arrays
        self._tracks = arrays.tracks
        self._reset_tracks()
        self._scores = pr.suspicion(arrays, binding.video)
        self.ranked = pr.rank_frames(self._scores)
        n_frames = max(int(np.prod(binding.plane_shape)), len(self._scores["close"]))
        pad = n_frames - len(self._scores["close"])
        self.plot.show_scores(np.pad(pr.combined(self._scores), (0, pad)),
                              np.pad(pr.flagged(self._scores), (0, pad)))  # fmt: skip
        self.plot.set_current(self.current_frame())

    def _reset_tracks(self) -> None:
        """Offer the layer's tracks as A and B, on two different tracks by default.

        B moves off A only where the user did not choose it: a track gone, or fewer than two to
        choose from before. A and B the same by choice stay so (the layer is read again at every
        edit elsewhere), and an edit of two tracks says why it refuses them.
        """
        old_a, old_b, old_n = self.track_a.value, self.track_b.value, len(self.track_b.choices)
        self.track_a.reset_choices()
        self.track_b.reset_choices()
        a, b = self.track_a.value, self.track_b.value
        chosen = (a, b) == (old_a, old_b) and old_n > 1  # both kept, picked among two or more
        if len(self.track_b.choices) > 1 and a == b and not chosen:
            self.track_b.value = 1 if a == 0 else 0

    # ------------------------------------------------------------------ state
    def _binding(self) -> PoseBinding:
        return self.layer.value.metadata[POSE_KEY]

    def _session_of(self, labels: sio.Labels) -> ProjectSession:
        """The open project ``labels`` belong to (``Projects`` opens one for every pose layer)."""
        session = self._projects.of(labels)
        if session is None:
            raise RuntimeError("these labels belong to no open project")
        return session

    def _arrays(self, layer: napari.layers.Points) -> PoseArrays:
        """Every instance of ``layer`` as it is now (all frames, unsaved edits included)."""
        return layer.metadata[POSE_KEY].merged(layer.data, layer.features)

    def current_frame(self) -> int:
        return self._sync.current_frame(self.layer.value)

    # ------------------------------------------------------------------ edits
    def _edit(self, edit: Callable[[PoseArrays], PoseArrays], whole_project: bool = False) -> bool:
        """Apply ``edit`` to the layer (or to every layer of its project) and show the result.

        Every result is computed before any layer changes, so a refused edit (``ValueError``,
        shown in the status line) leaves everything as it was.
        """
        self._refresh_if_stale()
        layer = self.layer.value
        if layer is None or self.track_a.value is None:
            self.status.value = "open a tracked pose project first"
            return False
        labels = self._binding().labels
        layers = self._session_of(labels).points_layers() if whole_project else [layer]
        before = {other: self._arrays(other) for other in layers}
        try:
            after = {other: edit(arrays) for other, arrays in before.items()}
        except ValueError as error:
            self.status.value = str(error)
            return False
        tracks = after[layer].tracks  # one list for all, so renamed tracks are one object
        self._history.append(_Step(before, list(labels.tracks)))
        self._show({other: attrs.evolve(arrays, tracks=tracks) for other, arrays in after.items()},
                   tracks)  # fmt: skip
        return True

    def _show(self, arrays: dict[napari.layers.Points, PoseArrays], tracks: list) -> None:
        """Rewrite layers from full arrays, then their edges, trajectories and the suspicion.

        Layer events cannot tell an edit (their data events are blocked here, and moving a
        frame window rewrites layers too), so the edit is reported to the project's session.
        """
        labels = self._binding().labels
        labels.tracks[:] = tracks  # in place: every layer's binding shares this project
        self._writing = True
        try:
            for layer, new in arrays.items():
                binding: PoseBinding = layer.metadata[POSE_KEY]
                binding.arrays = new
                data, features = arrays_to_points(new.select(binding.shown_rows()), binding)
                with layer.events.data.blocker():
                    layer.selected_data = set()
                    layer.data = data
                    layer.features = features
                    layer.border_color_cycle = track_colors(len(tracks))
                layer.refresh()
                self._sync.refresh(layer)
        finally:
            self._writing = False
        for video in sorted({layer.metadata[POSE_KEY].video for layer in arrays}):
            refresh_tracks_layer(self._session_of(labels), video)
        self._refresh(arrays.get(self.layer.value))
        self._session_of(labels).mark_edited()

    def swap_from_here(self) -> bool:
        """Exchange tracks A and B on this frame and every later one (this layer)."""
        a, b, frame = self.track_a.value, self.track_b.value, self.current_frame()
        done = self._edit(lambda arrays: pr.swap_tracks(arrays, a, b, frame, self._binding().video))
        if done:
            self.status.value = (
                f"swapped {self.track_a.current_choice} and "
                f"{self.track_b.current_choice} from frame {frame}"
            )
        return done

    def set_selected(self) -> bool:
        """Give the instance whose points are selected track A (and its later frames, onward)."""
        layer = self.layer.value
        if layer is None:
            return False
        ids = np.unique(layer.features["instance"].to_numpy()[list(layer.selected_data)])
        if len(ids) != 1 or ids[0] < 0:
            self.status.value = "select points of one instance (napari's select tool)"
            return False
        a, onward = self.track_a.value, bool(self.onward.value)

        def edit(arrays: PoseArrays) -> PoseArrays:
            row = int(np.flatnonzero(arrays.instance_id == ids[0])[0])
            return pr.set_track(arrays, row, a, onward=onward)

        return self._edit(edit)

    def delete_a(self) -> bool:
        """Remove track A from the project; its instances stay, untracked."""
        a = self.track_a.value
        return self._edit(lambda arrays: pr.delete_track(arrays, a), whole_project=True)

    def merge_b_into_a(self) -> bool:
        """Join track B's instances to track A and remove B (refused if they share a frame)."""
        a, b = self.track_a.value, self.track_b.value
        return self._edit(lambda arrays: pr.merge_tracks(arrays, a, b), whole_project=True)

    def rename_a(self) -> bool:
        """Give track A the name typed in *new name*."""
        a, name = self.track_a.value, self.new_name.value
        done = self._edit(lambda arrays: pr.rename_track(arrays, a, name), whole_project=True)
        if done:
            self.new_name.value = ""
        return done

    def undo_edit(self) -> bool:
        """Put back the layers and tracks as they were before the last edit."""
        if not self._history:
            self.status.value = "nothing to undo"
            return False
        step = self._history.pop()
        self._show({layer: arrays for layer, arrays in step.arrays.items()
                    if layer in self._viewer.layers}, step.tracks)  # fmt: skip
        self.status.value = "undone"
        return True

    # ------------------------------------------------------------------ suspicious frames
    def step_suspicious(self, direction: int) -> int | None:
        """Go to the next (``1``) or previous (``-1``) frame in order of suspicion.

        From a frame that is not suspicious, *next* goes to the most suspicious one; so after
        fixing a frame (it drops out of the list) *next* goes on with the worst one left.
        """
        self._refresh_if_stale()
        if not len(self.ranked):
            self.status.value = "no suspicious frame"
            return None
        here = np.flatnonzero(self.ranked == self.current_frame())
        last = len(self.ranked) - 1
        rank = int(here[0]) + direction if len(here) else (0 if direction > 0 else last)
        rank = int(np.clip(rank, 0, last))
        frame = int(self.ranked[rank])
        self._go_to(frame)
        reasons = ", ".join(CRITERION_NAMES[name] for name, on in pr.flags(self._scores).items()
                            if on[frame])  # fmt: skip
        self.status.value = f"frame {frame}: suspicious #{rank + 1} of {last + 1} ({reasons})"
        return frame

    def _go_to(self, frame: int) -> None:
        if self.layer.value is not None:
            go_to_frame(self._viewer, self.layer.value, frame)

    def _on_step(self, event=None) -> None:
        if self.layer.value is not None:
            self.plot.set_current(self.current_frame())

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict | None:
        """Compare the chosen layer with the ground truth's user labels; list the worst frames."""
        session = self._projects.listed().get(self.truth.value)
        layer = self.evaluated.value
        if session is None or layer is None:
            self.results.value = "open a project with user labels and a predictions layer"
            return None
        truth = labels_to_arrays(session.current())
        try:
            metrics, per_frame = compare(truth.select(~truth.predicted), self._arrays(layer))
        except ValueError as error:  # no shared node, or no ground truth at all
            self.results.value = str(error)
            return None
        lines = [f"OKS mAP {metrics['oks_map']:.3f}, mAR {metrics['oks_mar']:.3f}",
                 f"error median {metrics['dist_median_px']:.2f} px, "
                 f"p95 {metrics['dist_p95_px']:.2f} px",
                 f"PCK@2/5/10px {metrics['pck_2px']:.3f} / {metrics['pck_5px']:.3f} / "
                 f"{metrics['pck_10px']:.3f}",
                 f"visibility precision {metrics['vis_precision']:.3f}, "
                 f"recall {metrics['vis_recall']:.3f}",
                 f"{metrics['n_matched']} of {metrics['n_gt']} instances matched"]  # fmt: skip
        if "id_switches" in metrics:
            lines.append(f"identity switches {metrics['id_switches']}, "
                         f"MOTA {metrics['mota']:.3f}, IDF1 {metrics['idf1']:.3f}")  # fmt: skip
        self.results.value = "\n".join(lines)
        self.node_errors.show_errors(metrics["nodes"], metrics["per_node_dist_median"])
        binding: PoseBinding = layer.metadata[POSE_KEY]
        # Frames are keyed by the ground truth's video, which may lie at another path.
        (match,) = match_videos(truth.videos, [binding.labels.videos[binding.video]])
        video = video_key(truth.videos[match]) if match >= 0 else None
        worst = sorted((value, frame) for (name, frame), value in per_frame.items()
                       if name == video)[:N_WORST_FRAMES]  # fmt: skip
        self.worst.choices = [(f"frame {frame}: OKS {value:.2f}", frame) for value, frame in worst]
        return metrics

    def _go_to_worst(self, frame: int | None) -> None:
        if frame is not None and self.evaluated.value is not None:
            go_to_frame(self._viewer, self.evaluated.value, frame)
