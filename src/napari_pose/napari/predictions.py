"""A project's predictions in the viewer: the layers that show them and merging new ones in.

Predictions reach a project from several places: the *Predict* dock's *Merge*, a labelling
round (``rounds``), proposals while labelling (``labelling.Labeller``). Each writes them the
same way, here: into the project's one predictions layer of the video (added, with its
skeleton edges, where the video's layers lie when the project has none), replacing older
predictions of the frames predicted, never touching user instances, with instance ids no
other instance of the project uses, and the edit reported to the project's session (which
autosaves it and guards it on closing). Qt-free, like the rest of ``napari_pose.napari``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.layers import Layer, Points

from napari_pose.core.labelling import PointTable, next_instance_id
from napari_pose.core.pose_arrays import PoseArrays, replace_frames
from napari_pose.napari.convert import POSE_KEY, PoseBinding, track_colors
from napari_pose.napari.drawing import add_pose_layers, redraw, refresh_tracks_layer
from napari_pose.napari.session import ProjectSession


def free_instance_id(layers: list[Points]) -> int:
    """An instance id that no instance of the pose ``layers`` has, saved or on screen."""
    floor = 1 + max(int(layer.metadata[POSE_KEY].arrays.instance_id.max(initial=-1))
                    for layer in layers)  # fmt: skip
    tables = [PointTable(np.asarray(layer.data), layer.features) for layer in layers]
    return next_instance_id(*tables, floor=floor)


def project_predictions_layer(session: ProjectSession, video: int,
                              like: Layer | None = None) -> Points:  # fmt: skip
    """The project's predictions layer of ``video``; when it has none, an empty one (and its
    skeleton edges) is added where ``like`` lies (default: the video's labels layer)."""
    layers = session.points_layers()
    for layer in layers:
        binding = layer.metadata[POSE_KEY]
        if binding.predicted and binding.video == video:
            return layer
    user = next(layer for layer in layers if layer.metadata[POSE_KEY].video == video)
    labels = session.labels
    empty = PoseArrays.empty(labels.skeletons[0], labels.videos, labels.tracks)
    binding = PoseBinding(labels, empty, video, True, user.metadata[POSE_KEY].plane_shape)
    return add_pose_layers(session.viewer, binding, like or user)


def check_model_skeleton(session: ProjectSession, model: str | Path,
                         node_names: list[str]) -> None:  # fmt: skip
    """Refuse a model whose nodes (``node_names``) are not the project's, saying which
    differ: its predictions could not join the project.

    Raises:
        ValueError: They differ.
    """
    from napari_pose.nn.inference import skeleton_mismatch

    problem = skeleton_mismatch(model, node_names, str(session.path or session.name),
                                session.labels.skeletons[0].node_names)  # fmt: skip
    if problem is not None:
        raise ValueError(problem)


def merge_predictions(session: ProjectSession, video: int, predictions: PoseArrays,
                      model: str | Path = "the model", *, like: Layer | None = None,
                      skip_labelled: bool = False) -> PoseArrays:  # fmt: skip
    """Merge ``predictions`` (a model's, of ``video``) into the project's predictions layer:
    the layer's older predictions on the frames predicted are replaced and the others kept;
    the layer is added (where ``like`` lies) when the project has none.

    ``skip_labelled`` leaves out frames that hold user instances now (a labelling round:
    frames the user labelled while it ran); otherwise they get predictions beside the user
    instances, as SLEAP keeps both. Runs in the thread that owns the layers. Returns the
    instances merged, as the project holds them.

    Raises:
        ValueError: The model's nodes are not the project's.
    """
    from napari_pose.nn.inference import in_project

    labels = session.labels
    skeleton = labels.skeletons[0]
    check_model_skeleton(session, model, predictions.skeleton.node_names)
    layers = session.points_layers()
    if skip_labelled:
        user = [layer.metadata[POSE_KEY].merged(layer.data, layer.features) for layer in layers
                if not layer.metadata[POSE_KEY].predicted]  # fmt: skip
        taken = np.concatenate([a.frame[a.video == video] for a in user] or [np.zeros(0, int)])
        predictions = predictions.select(~np.isin(predictions.frame, taken))
    new = in_project(predictions, skeleton, labels.videos, labels.tracks,
                     free_instance_id(layers), video=video)  # fmt: skip
    if not len(new):
        return new
    labels.tracks.extend(new.tracks[len(labels.tracks) :])  # every layer shares the list
    target = project_predictions_layer(session, video, like)
    binding: PoseBinding = target.metadata[POSE_KEY]
    binding.arrays = replace_frames(binding.merged(target.data, target.features), new)
    redraw(session.viewer, target, binding)
    for points in session.points_layers():  # the merge may add tracks
        points.border_color_cycle = track_colors(len(labels.tracks))
    refresh_tracks_layer(session, video)
    session.mark_edited()
    return new
