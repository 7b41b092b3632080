"""Click-to-label on a pose Points layer: the viewer side of ``core.labelling``.

``Labeller`` binds one user-labels Points layer (with its ``PoseBinding``) to the viewer. In
*label* mode a click on the image places the current node of the current instance and moves
on to the next unplaced node; in *move* mode napari's own selection lets the user drag points.
Every edit goes through ``core.labelling`` (pure table functions), is pushed on an undo stack,
redraws the skeleton edges and is counted by the autosaver, if one is attached. Drags, and
points added or deleted with napari's own tools, bypass all that except the redraw and the
autosave (``sync`` sees and announces them): undo does not step through them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import napari
import numpy as np
import psygnal

from napari_pose.core import labelling as lab
from napari_pose.core.pose_arrays import PoseArrays, concat
from napari_pose.core.propagate import propagate_points
from napari_pose.core.skeleton import relayout
from napari_pose.napari import proposals as prop
from napari_pose.napari.convert import (
    NO_TRACK,
    POSE_KEY,
    PoseBinding,
    arrays_to_points,
    track_colors,
)
from napari_pose.napari.drawing import add_pose_layers, redraw, refresh_tracks_layer
from napari_pose.napari.session import ProjectSession, session_of
from napari_pose.napari.styles import node_colors, symbols
from napari_pose.napari.sync import attach, pose_points_layers

if TYPE_CHECKING:
    from napari.qt.threading import FunctionWorker

Mode = Literal["label", "move"]

#: Keyboard shortcuts on the labels layer: key -> (method name, what it does).
SHORTCUTS: dict[str, tuple[str, str]] = {
    "n": ("new_instance", "new instance"),
    "]": ("next_node", "next node"),
    "[": ("previous_node", "previous node"),
    "o": ("toggle_occluded", "toggle occluded (current node)"),
    "x": ("delete_instance", "delete current instance"),
    "c": ("copy_previous_frame", "copy previous labelled frame here"),
    "k": ("propagate_forward", "carry this frame's instances K frames on"),
    "Shift-K": ("propagate_backward", "carry this frame's instances K frames back"),
    "u": ("use_prediction", "turn the nearest prediction into a user instance"),
    "Shift-U": ("accept_proposals", "accept every prediction on this frame"),
    ".": ("next_labelled_frame", "next labelled frame"),
    ",": ("previous_labelled_frame", "previous labelled frame"),
    "/": ("next_suggestion", "next suggested frame"),
    "Control-z": ("undo", "undo"),
    "m": ("toggle_mode", "switch label / move mode"),
}


class Labeller:
    """Labelling state and actions for one user-labels Points layer of a viewer.

    Attributes:
        instance: Id of the instance being labelled.
        node: Code (skeleton order) of the node the next click places.
        mode: ``"label"`` (clicks place nodes) or ``"move"`` (drag points).
        propagate_frames: How many frames ``propagate`` carries the instances (the ``k`` key).
        proposer: The "propose from model" state (``propose_from``; ``napari.proposals``).
        changed: Emitted after every edit or change of instance/node/mode (for the widget).
    """

    changed = psygnal.Signal()

    def __init__(self, viewer: napari.Viewer, layer: napari.layers.Points,
                 on_edit: Callable[[], None] | None = None) -> None:  # fmt: skip
        self.viewer = viewer
        self.layer = layer
        self.binding: PoseBinding = layer.metadata[POSE_KEY]
        self.history = lab.History()
        self.on_edit = on_edit
        self.mode: Mode = "label"
        self.node = 0
        self.propagate_frames = 5
        self.instance = self._fresh_id()
        self.proposer = prop.Proposer()
        self._closed = False  # a prediction that ends after ``close`` writes nothing
        self._sync = attach(viewer)
        self._shown_plane = self.plane()
        viewer.dims.events.current_step.connect(self._on_step)
        layer.mouse_drag_callbacks.append(self._on_mouse)
        layer.mouse_double_click_callbacks.append(self._on_double_click)
        layer.selected_data.events.items_changed.connect(self._on_selection)
        layer.events.features.connect(self._on_features)
        for key, (method, _) in SHORTCUTS.items():
            layer.bind_key(key, self._shortcut(method), overwrite=True)
        self.set_mode("label")

    def close(self) -> None:
        """Detach from the layer and viewer (the widget binds another layer, or is closed)."""
        self._closed = True
        self.proposer.set_folder(None)
        layer = self.layer
        for callbacks, callback in ((layer.mouse_drag_callbacks, self._on_mouse),
                                    (layer.mouse_double_click_callbacks, self._on_double_click)):  # fmt: skip
            if callback in callbacks:
                callbacks.remove(callback)
        for key in SHORTCUTS:
            layer.bind_key(key, None)
        self.viewer.dims.events.current_step.disconnect(self._on_step)
        layer.selected_data.events.items_changed.disconnect(self._on_selection)
        layer.events.features.disconnect(self._on_features)

    # ------------------------------------------------------------------ state
    @property
    def n_nodes(self) -> int:
        return len(self.binding.arrays.skeleton.nodes)

    @property
    def node_names(self) -> list[str]:
        return self.binding.arrays.skeleton.node_names

    def table(self) -> lab.PointTable:
        return lab.PointTable(np.asarray(self.layer.data), self.layer.features)

    def plane(self) -> tuple[int, ...]:
        """The image plane on screen, in the layer's leading coordinates."""
        n_lead = len(self.binding.plane_shape)
        position = self.layer.world_to_data(self.viewer.dims.point)[:n_lead]
        return tuple(int(v) for v in np.round(position))

    def placed(self) -> list[int]:
        """Nodes of the current instance placed on this plane."""
        return lab.placed_nodes(self.table(), self.instance, self.plane()).tolist()

    def _fresh_id(self) -> int:
        tables = [self.table()]
        predictions = self._predictions_layer()
        if predictions is not None:
            tables.append(lab.PointTable(np.asarray(predictions.data), predictions.features))
        floor = int(self.binding.arrays.instance_id.max(initial=-1)) + 1
        return lab.next_instance_id(*tables, floor=floor)

    def _predictions_layer(self) -> napari.layers.Points | None:
        for layer in self.viewer.layers:
            other = (
                layer.metadata.get(POSE_KEY) if isinstance(layer, napari.layers.Points) else None
            )
            if (other is not None and other.predicted and other.labels is self.binding.labels
                    and other.video == self.binding.video):  # fmt: skip
                return layer
        return None

    # ------------------------------------------------------------------ editing core
    def apply(self, table: lab.PointTable) -> None:
        """Show ``table`` in the layer, remembering the previous one for undo."""
        self.history.push(self.table())
        self._show(table)
        if self.on_edit is not None:
            self.on_edit()

    def _show(self, table: lab.PointTable) -> None:
        layer = self.layer
        shapes = symbols(table.features["visible"].to_numpy(bool))
        with layer.events.data.blocker():
            layer.selected_data = set()
            layer.data = table.data
            layer.features = table.features
            if (shapes != "disc").any() or len(np.unique(layer.symbol)) > 1:
                layer.symbol = shapes  # only when some point is drawn as occluded
        self._sync.refresh(layer)
        self.changed.emit()

    def undo(self) -> bool:
        """Restore the layer as it was before the last edit; False if there is none."""
        previous = self.history.pop()
        if previous is None:
            return False
        if list(previous.features["node"].cat.categories) != self.node_names:
            self.history = lab.History()  # the skeleton changed since: its columns are gone
            return False
        self._show(previous)
        if self.on_edit is not None:
            self.on_edit()
        return True

    # ------------------------------------------------------------------ actions
    def place(self, yx: tuple[float, float], plane: tuple[int, ...] | None = None) -> None:
        """Place the current node at ``yx`` and move on to the next unplaced node."""
        plane = self.plane() if plane is None else plane
        self.apply(lab.place(self.table(), plane, yx, self.instance, self.node,
                             self.layer.feature_defaults.iloc[0].to_dict()))  # fmt: skip
        following = lab.next_unplaced(self.table(), self.instance, plane, self.node, self.n_nodes)
        if following is not None:
            self.node = following
        self.changed.emit()

    def new_instance(self) -> None:
        self.instance = self._fresh_id()
        self.node = 0
        self.changed.emit()

    def select(self, instance: int, node: int | None = None) -> None:
        self.instance = int(instance)
        if node is not None:
            self.node = int(node)
        self.changed.emit()

    def set_node(self, node: int | str) -> None:
        self.node = self.node_names.index(node) if isinstance(node, str) else int(node)
        self.changed.emit()

    def next_node(self) -> None:
        self.set_node((self.node + 1) % self.n_nodes)

    def previous_node(self) -> None:
        self.set_node((self.node - 1) % self.n_nodes)

    def toggle_occluded(self) -> None:
        self.apply(lab.toggle_visible(self.table(), self.instance, self.node, self.plane()))

    def delete_instance(self) -> None:
        self.apply(lab.delete_instance(self.table(), self.instance, self.plane()))
        self.new_instance()

    def set_track(self, track: str) -> None:
        self.apply(lab.set_track(self.table(), self.instance, track, self.plane()))

    def copy_previous_frame(self) -> None:
        """Copy the instances of the nearest earlier labelled frame onto this one."""
        plane = self.plane()
        source = lab.previous_labelled_plane(self.table(), plane, -1)
        if source is None:
            return
        self.apply(lab.copy_instances(self.table(), source, self.table(), plane,
                                      first_id=self._fresh_id()))  # fmt: skip

    def use_prediction(self, near: tuple[float, float] | None = None) -> bool:
        """Turn the predicted instance nearest ``near`` (default: the cursor) into a user one."""
        predictions = self._predictions_layer()
        if predictions is None:
            return False
        plane = self.plane()
        source = lab.PointTable(np.asarray(predictions.data), predictions.features)
        on_plane = np.flatnonzero(source.on_plane(plane))
        if not len(on_plane):
            return False
        if near is None:
            near = tuple(self.layer.world_to_data(self.viewer.cursor.position)[-2:])
        distance = np.linalg.norm(source.data[on_plane, -2:] - np.asarray(near), axis=1)
        chosen = source.features["instance"].to_numpy()[on_plane[np.argmin(distance)]]
        rows = np.flatnonzero(source.features["instance"].to_numpy() == chosen)
        new_id = self._fresh_id()
        self.apply(lab.copy_instances(source.take(rows), plane, self.table(), plane, new_id,
                                      from_predicted=True))  # fmt: skip
        self.select(new_id)
        return True

    def accept_proposals(self) -> int:
        """Turn every prediction on this frame into a user instance that remembers it (as
        ``use_prediction`` does one), in one undo step; animals that have a user instance here
        already are left out (``unclaimed``). The first accepted becomes the current instance.

        Returns:
            How many instances were accepted.
        """
        predictions = self._predictions_layer()
        if predictions is None:
            return 0
        plane = self.plane()
        source = lab.PointTable(np.asarray(predictions.data), predictions.features)
        here = source.on_plane(plane)
        chosen = unclaimed(source.take(np.flatnonzero(here)), self.table(), plane)
        if not chosen:
            return 0
        rows = np.flatnonzero(here & np.isin(source.features["instance"].to_numpy(), chosen))
        new_id = self._fresh_id()
        self.apply(lab.copy_instances(source.take(rows), plane, self.table(), plane, new_id,
                                      from_predicted=True))  # fmt: skip
        self.select(new_id)
        return len(chosen)

    def propagate(self, n_frames: int | None = None, direction: int = 1) -> int:
        """Carry this frame's user instances ``n_frames`` frames forward (``direction=1``) or
        back (``-1``) as predicted instances: proposals to accept (``u``, double click) or fix.

        Each point follows the image motion (``core.propagate``); a point the tracker loses is
        left out, an occluded one stays occluded where it was. Proposals keep their instance's
        track. A frame that holds a user instance of that track (or, for an untracked instance,
        any user instance; for a tracked one, an untracked user instance that may be it) gets
        no proposal for it: user labels are never touched. A proposal replaces the frame's
        predictions of its track (untracked: the untracked ones), so propagating again redoes
        them. Stacks propagate along their first axis (time). Not undone by ``undo``.

        Returns:
            How many predicted instances were written.
        """
        binding = self.binding
        n_frames = self.propagate_frames if n_frames is None else int(n_frames)
        image = image_of(self.viewer, self.layer)
        plane = self.plane()
        steps = [plane[0] + direction * i for i in range(1, n_frames + 1)]
        steps = [t for t in steps if 0 <= t < binding.plane_shape[0]]
        if image is None or not steps:
            return 0
        user = binding.merged(self.layer.data, self.layer.features)
        here = int(np.ravel_multi_index(plane, binding.plane_shape))
        source = user.select(user.frame == here)
        if not len(source):
            return 0
        planes = [(t, *plane[1:]) for t in steps]
        frames = [np.asarray(image.data[p]) for p in [plane, *planes]]  # decodes only these
        start = np.where(source.visible[..., None], source.xy, np.nan)
        moved, confidence = propagate_points(frames, start)
        targets = np.array([np.ravel_multi_index(p, binding.plane_shape) for p in planes])
        proposals = _proposals(source, moved, confidence, targets, user)
        layer = self._predictions_layer() or self._add_predictions_layer()
        target = layer.metadata[POSE_KEY]
        old = target.merged(layer.data, layer.features)
        redone = set(zip(proposals.frame.tolist(), proposals.track.tolist()))
        replaced = np.isin(old.frame, proposals.frame)
        replaced[replaced] = [key in redone for key in zip(old.frame[replaced].tolist(),
                                                           old.track[replaced].tolist())]  # fmt: skip
        first_id = max(self._fresh_id(), int(old.instance_id.max(initial=-1)) + 1)
        proposals.instance_id[:] = first_id + np.arange(len(proposals))
        proposals.tracks = list(binding.labels.tracks)
        target.arrays = concat([old.select(~replaced), proposals]).sorted()
        redraw(self.viewer, layer, target)
        for points in pose_points_layers(self.viewer):  # a track made while labelling is new
            if points.metadata[POSE_KEY].labels is binding.labels:
                points.border_color_cycle = track_colors(len(binding.labels.tracks))
        session = session_of(binding.labels)
        if session is not None:
            refresh_tracks_layer(session, binding.video)
        if self.on_edit is not None:
            self.on_edit()
        self.changed.emit()
        return len(proposals)

    def propagate_forward(self) -> int:
        return self.propagate(direction=1)

    def propagate_backward(self) -> int:
        return self.propagate(direction=-1)

    # ------------------------------------------------------------------ proposals from a model
    def propose_from(self, folder: str | Path | None) -> None:
        """Propose the instances of the model package at ``folder`` on every frame stepped to
        that has neither user instances nor predictions, the frame shown first (``None``:
        stop). Each frame is posed in a worker thread, one at a time; see ``napari.proposals``
        for what happens to rapid steps and to results for frames the user left."""
        self.proposer.set_folder(None if folder is None else Path(folder))
        self.changed.emit()
        self.propose_here()

    def needs_proposals(self, plane: tuple[int, ...] | None = None) -> bool:
        """Whether ``plane`` (default: the one shown) has neither user instances nor
        predictions."""
        plane = self.plane() if plane is None else plane
        layers = [self.layer, self._predictions_layer()]
        return not any(_holds(layer, plane) for layer in layers if layer is not None)

    def propose_here(self) -> FunctionWorker | None:
        """Start posing the frame shown, when proposing is on, the model has not posed it yet,
        it needs proposals and no other prediction runs (the one running, when it ends, starts
        the frame shown then). Returns the worker, or ``None`` when none was started."""
        proposer, binding = self.proposer, self.binding
        if self._closed or not proposer.can_start():
            return None
        plane = self.plane()
        if not all(0 <= p < n for p, n in zip(plane, binding.plane_shape, strict=True)):
            return None
        frame = int(np.ravel_multi_index(plane, binding.plane_shape))
        image = image_of(self.viewer, self.layer)
        if frame in proposer.tried or image is None or not self.needs_proposals(plane):
            return None
        from napari.qt.threading import create_worker

        assert proposer.folder is not None  # ``can_start``
        generation = proposer.start(frame)
        worker = create_worker(prop.propose, proposer.predictor, proposer.folder,
                               PlaneFrames(image, binding.plane_shape), frame,
                               binding.arrays.skeleton, list(binding.labels.videos), binding.video,
                               _start_thread=False)  # fmt: skip
        worker.returned.connect(lambda result: self._proposed(generation, frame, result))
        worker.start()
        return worker

    def _proposed(self, generation: int, frame: int, result: tuple) -> None:
        """A prediction ended (in the UI thread): write it, or say why it failed, then pose
        the frame shown now if it needs it."""
        predictor, found, error = result
        counts = self.proposer.finish(generation, predictor, error)
        if self._closed:
            return
        if counts and found is not None and len(found):
            self._write_proposals(frame, found)
        if self.proposer.error is not None:
            self.changed.emit()  # the dock shows it
            return
        self.propose_here()

    def _write_proposals(self, frame: int, found: PoseArrays) -> int:
        """Add the model's instances on ``frame`` to the predictions layer, as ``propagate``
        writes proposals, unless the frame got user instances or predictions meanwhile (they
        are never overwritten). Returns how many were written."""
        binding = self.binding
        user = binding.merged(self.layer.data, self.layer.features)
        layer = self._predictions_layer()
        if layer is not None:
            old = layer.metadata[POSE_KEY].merged(layer.data, layer.features)
            if np.any((old.video == binding.video) & (old.frame == frame)):
                return 0
        if np.any((user.video == binding.video) & (user.frame == frame)):
            return 0
        layer = layer or self._add_predictions_layer()
        target = layer.metadata[POSE_KEY]
        old = target.merged(layer.data, layer.features)
        found.instance_id[:] = max(self._fresh_id(), int(old.instance_id.max(initial=-1)) + 1
                                   ) + np.arange(len(found))  # fmt: skip
        found.tracks = list(binding.labels.tracks)
        target.arrays = concat([old, found]).sorted()
        redraw(self.viewer, layer, target)
        if self.on_edit is not None:
            self.on_edit()
        self.changed.emit()
        return len(found)

    def _add_predictions_layer(self) -> napari.layers.Points:
        """An empty predictions layer (and its skeleton edges) of this layer's project and
        video, where this layer lies, as the reader makes one for a file with predictions."""
        binding = self.binding
        labels = binding.labels
        empty = PoseArrays.empty(binding.arrays.skeleton, labels.videos, labels.tracks)
        predictions = PoseBinding(labels, empty, binding.video, True, binding.plane_shape)
        return add_pose_layers(self.viewer, predictions, like=self.layer)

    def go_to_plane(self, plane: tuple[int, ...]) -> None:
        go_to_plane(self.viewer, self.layer, plane)

    def next_labelled_frame(self, direction: int = 1) -> None:
        target = lab.previous_labelled_plane(self.table(), self.plane(), direction)
        if target is not None:
            self.go_to_plane(target)

    def previous_labelled_frame(self) -> None:
        self.next_labelled_frame(-1)

    def next_suggestion(self) -> None:
        """Go to the first suggested frame after this one (wrapping around)."""
        video = self.binding.labels.videos[self.binding.video]
        frames = sorted(s.frame_idx for s in self.binding.labels.suggestions if s.video is video)
        if not frames:
            return
        here = int(np.ravel_multi_index(self.plane(), self.binding.plane_shape))
        following = [f for f in frames if f > here]
        go_to_frame(self.viewer, self.layer, following[0] if following else frames[0])

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode
        self.layer.mode = "pan_zoom" if mode == "label" else "select"
        self.changed.emit()

    def toggle_mode(self) -> None:
        self.set_mode("move" if self.mode == "label" else "label")

    # ------------------------------------------------------------------ viewer events
    def _shortcut(self, method: str):
        def run(layer):
            getattr(self, method)()

        run.__name__ = method
        return run

    def _on_mouse(self, layer, event):
        """Place a node on click (not drag) in label mode; drags still pan the view."""
        if self.mode != "label" or event.button != 1:
            return
        dragged = False
        yield
        while event.type == "mouse_move":
            dragged = True
            yield
        if not dragged:
            coords = layer.world_to_data(event.position)
            n_lead = len(self.binding.plane_shape)
            plane = tuple(int(v) for v in np.round(coords[:n_lead]))
            self.place((float(coords[-2]), float(coords[-1])), plane)

    def _on_double_click(self, layer, event) -> None:
        """A double click on a prediction turns it into a user instance (as the ``u`` key)."""
        coords = layer.world_to_data(event.position)
        self.use_prediction(near=(float(coords[-2]), float(coords[-1])))

    def _on_features(self, event=None) -> None:
        """Features replaced (an edit, or the skeleton changed): keep the node in range."""
        self.node = min(self.node, self.n_nodes - 1)
        self.changed.emit()

    def _on_step(self, event=None) -> None:
        """An instance lives on one frame: a new frame starts a new instance at the first node."""
        plane = self.plane()
        if plane != self._shown_plane:
            self._shown_plane = plane
            self.new_instance()
            if self.proposer.active:
                self.propose_here()

    def _on_selection(self, event=None) -> None:
        """Selecting a point in move mode makes its instance and node current."""
        selected = list(self.layer.selected_data)
        if len(selected) == 1 and selected[0] < len(self.layer.features):
            row = self.layer.features.iloc[selected[0]]
            self.select(int(row["instance"]), self.node_names.index(row["node"]))


def _proposals(source: PoseArrays, moved: np.ndarray, confidence: np.ndarray,
               frames: np.ndarray, user: PoseArrays) -> PoseArrays:  # fmt: skip
    """Predicted instances of ``source`` at ``moved`` (``(K, n, k, 2)``) on ``frames``, left
    out where the animal already has a user instance there or every visible point was lost."""
    n_steps, n = moved.shape[:2]
    step, row = (a.ravel() for a in np.meshgrid(np.arange(n_steps), np.arange(n), indexing="ij"))
    frame, track = frames[step], source.track[row]
    on = user.select(user.video == source.video[0])
    labelled = {(int(f), int(t)) for f, t in zip(on.frame, on.track)}
    has_untracked = {f for f, t in labelled if t < 0}
    has_any = {f for f, _ in labelled}
    found = np.isfinite(moved[..., 0]).any(axis=-1).ravel()
    free = np.array([(f not in has_any) if t < 0 else
                     ((f, t) not in labelled and f not in has_untracked)
                     for f, t in zip(frame.tolist(), track.tolist())], bool)  # fmt: skip
    keep = found & free
    step, row = step[keep], row[keep]
    out = PoseArrays.empty(source.skeleton, source.videos, source.tracks, len(row))
    xy = moved[step, row]
    occluded = ~source.visible[row] & np.isfinite(source.xy[row, :, 0])
    xy[occluded] = source.xy[row][occluded]  # occluded points stay where they were, occluded
    out.video[:] = source.video[row]
    out.frame[:] = frame[keep]
    out.track[:] = source.track[row]
    out.predicted[:] = True
    out.xy[:] = xy
    out.visible[:] = np.isfinite(moved[step, row, :, 0])
    out.complete[:] = np.isfinite(xy[..., 0])
    out.point_score[:] = confidence[step, row]
    out.score[:] = np.nanmean(out.point_score, axis=1)
    return out


def _holds(layer: napari.layers.Points, plane: tuple[int, ...]) -> bool:
    """Whether a pose layer has instances on ``plane``, also where its frame window (a large
    layer holds the frames around the one shown) does not reach."""
    binding: PoseBinding = layer.metadata[POSE_KEY]
    frame = int(np.ravel_multi_index(plane, binding.plane_shape))
    if binding.window is not None and not binding.window[0] <= frame < binding.window[1]:
        arrays = binding.arrays
        return bool(np.any((arrays.video == binding.video) & (arrays.frame == frame)))
    return bool(lab.PointTable(np.asarray(layer.data), layer.features).on_plane(plane).any())


#: A user instance whose nodes lie within this fraction of a prediction's size (its bounding
#: box diagonal; median over the nodes both have) is taken to be the same animal.
SAME_ANIMAL = 0.25


def unclaimed(predicted: lab.PointTable, user: lab.PointTable, plane: tuple[int, ...]) -> list[int]:
    """Ids of the instances of ``predicted`` (one plane's predictions) of animals that have no
    user instance on ``plane``: none was made from them (``from_predicted``), none has their
    track, and none lies on them (``SAME_ANIMAL``), so accepting all never doubles an animal
    labelled by hand, accepted before, or propagated and accepted."""
    mine = user.take(np.flatnonzero(user.on_plane(plane)))
    features = mine.features
    made_from = set(features["from_predicted"].to_numpy(np.int64, na_value=-1).tolist())
    tracks = set(features["track"].astype(str)) - {NO_TRACK}
    codes = features["node"].cat.codes.to_numpy()
    nodes = [dict(zip(codes[rows].tolist(), mine.data[rows, -2:]))
             for rows in features.groupby("instance").indices.values()]  # fmt: skip
    chosen = []
    predicted_codes = predicted.features["node"].cat.codes.to_numpy()
    for instance, rows in predicted.features.groupby("instance").indices.items():
        track = str(predicted.features["track"].iloc[rows[0]])
        if int(instance) in made_from or track in tracks:
            continue
        points = dict(zip(predicted_codes[rows].tolist(), predicted.data[rows, -2:]))
        xy = np.array(list(points.values()))
        size = float(np.linalg.norm(xy.max(axis=0) - xy.min(axis=0)))
        near = False
        for other in nodes:
            common = [n for n in points if n in other]
            if common:
                gaps = [np.linalg.norm(points[n] - other[n]) for n in common]
                near = near or float(np.median(gaps)) <= max(SAME_ANIMAL * size, 1.0)
        if not near:
            chosen.append(int(instance))
    return chosen


def image_of(viewer: napari.Viewer, layer: napari.layers.Points) -> napari.layers.Image | None:
    """The image layer a labels layer annotates: same video name, or the only image."""
    images = [l for l in viewer.layers if isinstance(l, napari.layers.Image)]
    named = [l for l in images if layer.name.startswith(l.name + " ")]
    return (named or images or [None])[0]


def go_to_plane(viewer: napari.Viewer, layer: napari.layers.Points, plane: tuple[int, ...]) -> None:
    """Show ``plane`` of ``layer`` (its leading data coordinates: a frame, or (t, z) of a stack)."""
    world = layer.data_to_world([*plane, 0, 0])
    first_axis = viewer.dims.ndim - layer.ndim
    for axis, value in enumerate(world[: len(plane)], start=first_axis):
        viewer.dims.set_point(axis, value)


def go_to_frame(viewer: napari.Viewer, layer: napari.layers.Points, frame: int) -> None:
    """Show ``frame`` of ``layer``'s video (a plane of a stack, for stacks)."""
    plane_shape = layer.metadata[POSE_KEY].plane_shape
    go_to_plane(viewer, layer, tuple(int(v) for v in np.unravel_index(int(frame), plane_shape)))


def change_nodes(session: ProjectSession, edit) -> None:
    """Apply a node edit to every layer of a project, keeping each point on its node.

    ``edit`` takes the first layer's full ``PoseArrays`` and returns new ones, changing the
    project's (shared) skeleton on the way, like ``core.skeleton.delete_node``,
    ``reorder_nodes`` or ``with_node``; the other layers follow by node identity. Undo history
    does not survive a node edit (the columns it refers to are gone).
    """
    layers = session.points_layers()
    if not layers:
        return
    merged = [layer.metadata[POSE_KEY].merged(layer.data, layer.features) for layer in layers]
    old_nodes = list(merged[0].skeleton.nodes)
    changed = [edit(merged[0])] + [relayout(arrays, old_nodes) for arrays in merged[1:]]
    sync = attach(session.viewer)
    for layer, arrays in zip(layers, changed):
        binding = layer.metadata[POSE_KEY]
        binding.arrays = arrays
        data, features = arrays_to_points(arrays.select(binding.shown_rows()), binding)
        defaults = {**layer.feature_defaults.iloc[0].to_dict(),
                    "node": features["node"].cat.categories[0]}  # fmt: skip
        with layer.events.data.blocker():
            layer.data = data
            layer.features = features
            layer.feature_defaults = defaults
            layer.face_color_cycle = node_colors(len(arrays.skeleton.nodes), binding.predicted)
            layer.symbol = symbols(features["visible"].to_numpy(bool))
        layer.refresh()
        sync.refresh(layer)


def user_label_layers(viewer: napari.Viewer) -> list[napari.layers.Points]:
    """Points layers of ``viewer`` holding user labels of a pose project."""
    return [layer for layer in pose_points_layers(viewer) if not layer.metadata[POSE_KEY].predicted]


class PlaneFrames:
    """An image layer's planes as frames (``shape``, ``len`` and ``[i]``), for frame suggestions
    and prediction.

    Works for any image: a lazily decoded video, a TIFF stack whose (t, z) planes are frames.
    """

    def __init__(self, image: napari.layers.Image, plane_shape: tuple[int, ...]) -> None:
        self._data, self._plane_shape = image.data, plane_shape
        self.shape = (int(np.prod(plane_shape)), *image.data.shape[len(plane_shape) :])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        return np.asarray(self._data[np.unravel_index(index, self._plane_shape)])
