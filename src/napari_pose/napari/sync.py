"""Keep pose layers in step with the viewer: skeleton edges and frame windows follow the user.

Readers return plain layer data and cannot wire events, so each viewer gets one ``PoseSync``
(``attach(viewer)``, idempotent) that watches for layers carrying a ``PoseBinding``:

- when a Points layer is edited, the matching Vectors layer is rebuilt with the skeleton edges
  of every frame the layer holds (napari then shows each frame's edges as the user steps);
- when a windowed Points layer (a very large file) is scrolled near the edge of the frames it
  holds, its edits are merged into the full arrays and a new window around the frame is loaded;
- when the user edits a Points layer with napari's own tools (moves a point by dragging it,
  adds or deletes points), the edit is announced on :attr:`PoseSync.user_edited`, for the
  project's session (``session.py``) to autosave it, and a point added that way starts a new
  instance whatever point was selected before.

Code that rewrites a pose Points layer (this module moving a window, a dock redrawing) sets its
data with the layer's data events blocked, and announces an edit itself if it made one. That is
what tells the user's edits apart: any data change that still reaches :class:`PoseSync` is one.
"""

from __future__ import annotations

import weakref
from functools import partial

import napari
import numpy as np
import psygnal
from napari.layers.base import ActionType

from napari_pose.napari.convert import (
    EDGES_KEY,
    POSE_KEY,
    TRACKS_KEY,
    WINDOW_HALF_WIDTH,
    PoseBinding,
    arrays_to_points,
    skeleton_edges,
    trajectories,
    window_around,
)
from napari_pose.napari.styles import symbols

_SYNCS: weakref.WeakKeyDictionary[napari.Viewer, PoseSync] = weakref.WeakKeyDictionary()

#: The data events napari emits once an add, a drag or a delete has changed a Points layer (the
#: matching ``-ING`` events come before the change, and there is one of each per gesture).
_DONE = (ActionType.ADDED, ActionType.CHANGED, ActionType.REMOVED)


def pose_points_layers(viewer: napari.components.ViewerModel) -> list[napari.layers.Points]:
    """The viewer's Points layers of any pose project (user labels or predictions)."""
    return [
        layer
        for layer in viewer.layers
        if isinstance(layer, napari.layers.Points) and POSE_KEY in layer.metadata
    ]


def attach(viewer: napari.Viewer) -> PoseSync:
    """The viewer's ``PoseSync``, created and connected on first use."""
    viewer = getattr(viewer, "__wrapped__", viewer)  # docks get a proxy; one sync per viewer
    sync = _SYNCS.get(viewer)
    if sync is None:
        sync = _SYNCS[viewer] = PoseSync(viewer)
    return sync


class PoseSync:
    """Redraws edges and moves frame windows of the pose layers of one viewer.

    Attributes:
        user_edited: Emitted with a project (its ``sio.Labels``) when the user changed one of
            its Points layers with napari's own tools.
    """

    user_edited = psygnal.Signal(object)

    def __init__(self, viewer: napari.Viewer) -> None:
        self._viewer = weakref.ref(viewer)
        viewer.dims.events.current_step.connect(self._on_step)
        viewer.layers.events.inserted.connect(self._on_inserted)
        for layer in viewer.layers:
            self._watch(layer)

    def _on_inserted(self, event) -> None:
        self._watch(event.value)

    def _watch(self, layer) -> None:
        if isinstance(layer, napari.layers.Points) and POSE_KEY in layer.metadata:
            layer.events.data.connect(partial(self._on_points_edited, weakref.ref(layer)))
            layer.events.feature_defaults.connect(partial(self._keep_defaults, weakref.ref(layer)))
            self.refresh(layer)
        elif TRACKS_KEY in layer.metadata and layer.metadata[TRACKS_KEY].window is not None:
            self._refresh_tracks(layer)
        elif EDGES_KEY in layer.metadata:
            for points in self._points_layers():
                if points.metadata[POSE_KEY] is layer.metadata[EDGES_KEY]:
                    self.refresh(points)

    def _live_viewer(self) -> napari.Viewer:
        """The viewer, for code that runs only from its events or after checking it is open."""
        viewer = self._viewer()
        if viewer is None:
            raise RuntimeError("the viewer of this PoseSync has been closed")
        return viewer

    def _points_layers(self) -> list[napari.layers.Points]:
        viewer = self._viewer()
        return [] if viewer is None else pose_points_layers(viewer)

    def _on_step(self, event=None) -> None:
        """Only windows move with the frame; napari itself shows each frame's edges."""
        for layer in self._points_layers():
            binding = layer.metadata[POSE_KEY]
            if binding.window is not None and _near_edge(binding.window, self.current_frame(layer)):
                self.refresh(layer)
        viewer = self._viewer()
        for layer in viewer.layers if viewer is not None else []:
            if TRACKS_KEY in layer.metadata and layer.metadata[TRACKS_KEY].window is not None:
                self._refresh_tracks(layer)

    def _refresh_tracks(self, layer: napari.layers.Tracks) -> None:
        """Load the trajectories around the frame on screen when it nears the window's edge."""
        tracks = layer.metadata[TRACKS_KEY]
        first = tracks.bindings[0]
        time = int(round(layer.world_to_data(self._live_viewer().dims.point)[0]))
        frame = int(np.ravel_multi_index((min(time, first.plane_shape[0] - 1),
                                          *[0] * (len(first.plane_shape) - 1)), first.plane_shape))  # fmt: skip
        if not _near_edge(tracks.window, frame):
            return
        tracks.window = window_around(frame)
        data = trajectories(tracks.arrays(), first.plane_shape)
        if data is not None:
            layer.data = data

    def _on_points_edited(self, layer_ref, event) -> None:
        """Announce a finished change, which only the user makes (see the module doc: rewrites
        by this package are not seen here), then redraw the edges."""
        layer = layer_ref()
        if layer is None:
            return
        binding: PoseBinding = layer.metadata[POSE_KEY]
        if event.action in _DONE:
            self.user_edited.emit(binding.labels)
        self._redraw_edges(layer, binding)

    def _keep_defaults(self, layer_ref, event=None) -> None:
        """Make the next point added with napari's own tool a new instance of the right types.

        Selecting a point makes napari copy its features into the defaults of the next point
        added, as plain values: that point would join the selected instance (where the node it
        copied may be placed already, and only one survives saving), and turn the node and track
        columns into strings, which no pose code reads (saving would fail). Resetting the
        defaults casts them back to the columns' types.
        """
        layer = layer_ref()
        if layer is None:
            return
        defaults, features = layer.feature_defaults, layer.features
        if defaults["instance"][0] != -1 or any(defaults[c].dtype != features[c].dtype
                                                 for c in defaults):  # fmt: skip
            layer.feature_defaults = {**defaults.iloc[0].to_dict(), "instance": -1}

    def current_frame(self, layer: napari.layers.Points) -> int:
        """The frame (plane index of the labels' video) that ``layer`` shows now."""
        binding: PoseBinding = layer.metadata[POSE_KEY]
        n_lead = len(binding.plane_shape)
        position = layer.world_to_data(self._live_viewer().dims.point)[:n_lead]
        plane = np.clip(np.round(position).astype(np.int64), 0, np.array(binding.plane_shape) - 1)
        return int(np.ravel_multi_index(tuple(plane), binding.plane_shape))

    def refresh(self, layer: napari.layers.Points) -> None:
        """Bring ``layer``'s window and edges up to date with the frame on screen."""
        if self._viewer() is None:
            return
        binding: PoseBinding = layer.metadata[POSE_KEY]
        frame = self.current_frame(layer)
        if binding.window is not None and _near_edge(binding.window, frame):
            self._move_window(layer, binding, frame)
        self._redraw_edges(layer, binding)

    def _move_window(self, layer: napari.layers.Points, binding: PoseBinding, frame: int) -> None:
        binding.arrays = binding.merged(layer.data, layer.features)
        binding.window = window_around(frame)
        data, features = arrays_to_points(binding.arrays.select(binding.shown_rows()), binding)
        with layer.events.data.blocker():
            layer.data = data
            layer.features = features
            layer.symbol = symbols(features["visible"].to_numpy())

    def _redraw_edges(self, layer: napari.layers.Points, binding: PoseBinding) -> None:
        viewer = self._viewer()
        if viewer is None:  # a layer edited after its viewer closed has no edges to redraw
            return
        edges = [other for other in viewer.layers if other.metadata.get(EDGES_KEY) is binding]
        if not edges:
            return
        vectors, colors = skeleton_edges(layer.data, layer.features, binding)
        for edge_layer in edges:
            edge_layer.data = vectors
            if len(colors):
                edge_layer.edge_color = colors


def _near_edge(window: tuple[int, int], frame: int) -> bool:
    """Whether ``frame`` is in the outer quarter of ``window`` (time to load a new one)."""
    start, stop = window
    margin = WINDOW_HALF_WIDTH // 2
    return frame < start + margin and start > 0 or frame >= stop - margin
