"""Rewrite a project's layers from their bindings: a Points layer, the trajectories, new layers.

Docks and the Qt-free adapters change a project by changing its layers' ``PoseBinding``s and
then redraw from them, with data events blocked (``sync`` tells user edits apart by the
events that still arrive): one way to write arrays into a layer, one to add a binding's
layers, one to redraw the trajectories.
"""

from __future__ import annotations

import napari
import numpy as np
from napari.layers import Layer, Points

from napari_pose.napari.convert import (
    POSE_KEY,
    TRACKS_KEY,
    WINDOW_THRESHOLD,
    PoseBinding,
    TracksBinding,
    arrays_to_points,
    edges_layer,
    points_layer,
    tracks_layer,
    video_name,
    window_around,
)
from napari_pose.napari.session import ProjectSession
from napari_pose.napari.styles import symbols
from napari_pose.napari.sync import attach


def redraw(viewer: napari.Viewer, layer: napari.layers.Points, binding: PoseBinding) -> None:
    """Show ``binding.arrays`` in ``layer`` (a window of frames once it is large), its skeleton
    edges too, with data events blocked: the caller reports the edit."""
    sync = attach(viewer)
    n_points = int(np.isfinite(binding.arrays.xy[..., 0]).sum())
    if binding.window is None and n_points > WINDOW_THRESHOLD:
        binding.window = window_around(sync.current_frame(layer))
    data, features = arrays_to_points(binding.arrays.select(binding.shown_rows()), binding)
    with layer.events.data.blocker():
        layer.data = data
        layer.features = features
        layer.symbol = symbols(features["visible"].to_numpy(bool))
    sync.refresh(layer)


def add_pose_layers(viewer: napari.Viewer, binding: PoseBinding, like: Layer,
                    name: str | None = None) -> Points:  # fmt: skip
    """Add ``binding``'s Points layer and its skeleton edges where ``like`` lies (its scale,
    offset and axis names), named ``name`` or, by default, as a project's layers are; the
    layer selected before stays selected, so keys and clicks stay where they were."""
    n_axes = len(binding.plane_shape) + 2
    active = viewer.layers.selection.active
    added = []
    for (data, kwargs, kind), suffix in ((points_layer(binding), ""),
                                         (edges_layer(binding), " skeleton")):  # fmt: skip
        kwargs.update(scale=like.scale[:n_axes], translate=like.translate[:n_axes],
                      axis_labels=like.axis_labels[:n_axes])  # fmt: skip
        if name is not None:
            kwargs["name"] = name + suffix
        added.append(getattr(viewer, f"add_{kind}")(data, **kwargs))
    if active is not None:
        viewer.layers.selection.active = active
    return added[0]


def refresh_tracks_layer(session: ProjectSession, video: int) -> None:
    """Redraw the trajectories of one video of a project from its Points layers.

    Trajectories are drawn from the layers' bindings, not from layer events, so whatever
    rewrites those bindings (an identity edit, a merge of predictions) calls this. The Tracks
    layer is added when the video becomes tracked, removed when nothing is tracked any more,
    and bound to the video's Points layers as they are now: a predictions layer added since (a
    merge) is drawn too, and a layer grown past the window threshold windows the trajectories.
    """
    viewer, labels = session.viewer, session.labels
    points = [layer for layer in session.points_layers()
              if layer.metadata[POSE_KEY].video == video]  # fmt: skip
    bindings = [layer.metadata[POSE_KEY] for layer in points]
    shown = [layer for layer in viewer.layers if TRACKS_KEY in layer.metadata
             and any(b in layer.metadata[TRACKS_KEY].bindings for b in bindings)]  # fmt: skip
    binding = shown[0].metadata[TRACKS_KEY] if shown else TracksBinding(bindings)
    binding.bindings = bindings
    if binding.window is None and any(b.window is not None for b in bindings):
        binding.window = window_around(attach(viewer).current_frame(points[0]))
    made = tracks_layer(binding, video_name(labels.videos[video]))
    if made is None:
        for layer in shown:
            viewer.layers.remove(layer)
    elif shown:
        for layer in shown:
            layer.colormaps_dict = made[1]["colormaps_dict"]
            layer.data = made[0]
    else:
        data, kwargs, _ = made
        n_axes = data.shape[1] - 1
        kwargs.update(scale=points[0].scale[:n_axes], translate=points[0].translate[:n_axes])
        viewer.add_tracks(data, **kwargs)
