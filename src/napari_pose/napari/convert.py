"""Pure, reversible conversion between a pose project (``Labels``) and napari layer data.

``labels_to_layers`` turns a ``Labels`` into napari layer-data tuples: a lazy Image layer per
video, a Points layer for user labels and one for predictions per video (data ``(frame, y, x)``,
or ``(t, z, y, x)`` for stacks), a Vectors layer with each Points layer's skeleton edges and a
Tracks layer when instances carry tracks. ``layers_to_labels`` goes back. Neither needs a viewer,
so both are tested directly; the viewer-side wiring (edges follow the frame, windows follow the
user) lives in ``sync.py``, and how user labels and predictions look in ``styles.py``.

Every Points layer carries a ``PoseBinding`` in ``metadata["napari_pose"]``: the project it came
from (skeleton, videos, tracks, suggestions) and the full ``PoseArrays`` of its instances. Large
files (napari Points layers slow down past a few hundred thousand points, napari #6148) are shown
through a *window* of frames around the current one; the binding merges the window's edits back
into the full arrays, so saving always writes every frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import pandas as pd
import sleap_io as sio

from napari_pose.core.pose_arrays import PoseArrays, arrays_to_labels, concat, labels_to_arrays
from napari_pose.core.video import is_stack_file
from napari_pose.napari.styles import edges_style, palette, points_style, symbols

POSE_KEY = "napari_pose"
EDGES_KEY = "napari_pose_edges"
TRACKS_KEY = "napari_pose_tracks"

#: Points layers holding more than this many points show a window of frames instead. napari
#: re-slices every point of a layer at each frame step (about 0.5 ms per 1,000 points here),
#: so a small window keeps stepping under 50 ms (benchmarks/bench_labelling.py).
WINDOW_THRESHOLD = 20_000
#: Frames on each side of the current frame that a windowed layer holds; it moves when the
#: user comes within half of this of its edge (every ~50 frames of stepping).
WINDOW_HALF_WIDTH = 100

NO_TRACK = ""

LayerData = tuple[Any, dict[str, Any], str]


@attrs.define(eq=False)
class PoseBinding:
    """What a Points layer shows, kept in its metadata so the layer can be saved losslessly.

    Attributes:
        labels: The project the layer came from; its videos, skeletons, tracks, suggestions and
            provenance are reused on save.
        arrays: Every instance of this layer (one video, user or predicted), all frames.
        video: Index of the video in ``labels.videos``.
        predicted: Whether the layer holds predictions rather than user labels.
        plane_shape: Shape of the image axes before (y, x): ``(n_frames,)`` for a video,
            ``(t, z)`` for a stack whose planes are the video's frames in C order.
        window: Frames ``[start, stop)`` held by the layer, or ``None`` when it holds all.
    """

    labels: sio.Labels
    arrays: PoseArrays
    video: int
    predicted: bool
    plane_shape: tuple[int, ...]
    window: tuple[int, int] | None = None

    def shown_rows(self) -> np.ndarray:
        """Rows of ``arrays`` that the layer holds."""
        if self.window is None:
            return np.arange(len(self.arrays))
        return self.arrays.frame_rows(self.video, *self.window)

    def merged(self, data: np.ndarray, features: pd.DataFrame) -> PoseArrays:
        """The full arrays with the layer's current content in place of the rows it holds."""
        kept = np.ones(len(self.arrays), bool)
        kept[self.shown_rows()] = False
        next_id = int(self.arrays.instance_id.max(initial=-1)) + 1
        edited = points_to_arrays(data, features, self, first_new_id=next_id)
        return concat([self.arrays.select(kept), edited]).sorted()


def window_around(frame: int) -> tuple[int, int]:
    """The frames ``[start, stop)`` a windowed layer holds when ``frame`` is shown."""
    return max(0, frame - WINDOW_HALF_WIDTH), frame + WINDOW_HALF_WIDTH + 1


# --------------------------------------------------------------------------- labels -> layers


def labels_to_layers(
    labels: sio.Labels,
    *,
    images: dict[int, Any] | None = None,
    plane_shapes: dict[int, tuple[int, ...]] | None = None,
    plane_axes: dict[int, str] | None = None,
    window_threshold: int | None = None,
) -> list[LayerData]:
    """Layer-data tuples for a project: images, points, skeleton edges and trajectories.

    Args:
        labels: The project. Lazily loaded ``.slp`` files are converted without materialising
            instances.
        images: Image data per video index (usually lazy dask arrays); videos without an entry
            get no Image layer (e.g. a video file that could not be found).
        plane_shapes: Leading image axes per video when frames are planes of a stack, e.g.
            ``{0: (t, z)}``; default ``(n_frames,)``.
        plane_axes: Letters of those axes per stack, e.g. ``{0: "TZ"}``: the axis labels of
            the stack's layers (``t, z, y, x``; a video's are ``frame, y, x``), which the
            Predict dock takes for the stack's axes.
        window_threshold: Points layers with more points than this hold a window of frames
            (default ``WINDOW_THRESHOLD``).
    """
    images = images or {}
    plane_shapes = plane_shapes or {}
    plane_axes = plane_axes or {}
    if window_threshold is None:
        window_threshold = WINDOW_THRESHOLD
    layers: list[LayerData] = []
    for v, video in enumerate(labels.videos):
        if v in images:
            layers.append(_image_layer(images[v], video_name(video), plane_axes.get(v, "")))
    if not labels.skeletons:
        return layers

    arrays = labels_to_arrays(labels)
    for v, video in enumerate(labels.videos):
        shape = plane_shapes.get(v) or (_n_frames(images.get(v), arrays, v),)
        made: list[LayerData] = []
        for predicted in (False, True):
            rows = (arrays.video == v) & (arrays.predicted == predicted)
            if predicted and not rows.any():
                continue  # every video gets a user layer, even if empty, to label into
            binding = PoseBinding(labels, arrays.select(rows), v, predicted, shape)
            n_points = int(np.isfinite(binding.arrays.xy[..., 0]).sum())
            if n_points > window_threshold:
                binding.window = window_around(0)
            made += [points_layer(binding), edges_layer(binding)]
        video_bindings = [kw["metadata"][POSE_KEY] for _, kw, kind in made if kind == "points"]
        windowed = any(b.window is not None for b in video_bindings)
        tracks = TracksBinding(video_bindings, window_around(0) if windowed else None)
        layer = tracks_layer(tracks, video_name(video))
        if layer is not None:
            made.append(layer)
        names = axis_labels(video, plane_axes.get(v, ""), len(shape))
        if names is not None:
            for _, kwargs, _ in made:
                kwargs["axis_labels"] = names
        layers += made
    return layers


def new_project_layers(
    video: sio.Video, skeleton: sio.Skeleton, plane_shape: tuple[int, ...]
) -> list[LayerData]:
    """An empty labels layer (and its skeleton edges) for labelling ``video`` from scratch.

    ``plane_shape`` is the image's leading axes, e.g. ``(n_frames,)`` or ``(t, z)`` for a stack.
    """
    labels = sio.Labels(videos=[video], skeletons=[skeleton])
    return labels_to_layers(labels, plane_shapes={0: tuple(plane_shape)})


def video_name(video: sio.Video) -> str:
    """A short layer name for a video: its file stem (``clip`` for ``/data/clip.mp4``)."""
    filename = video.filename[0] if isinstance(video.filename, list) else video.filename
    name = Path(str(filename).replace("\\", "/")).name
    return name.removesuffix(".pkg.slp").rsplit(".", 1)[0] or "video"


def _n_frames(image: Any, arrays: PoseArrays, v: int) -> int:
    """Frames of the video: its length, or more if labels lie beyond it (kept, not dropped)."""
    labelled = int(arrays.frame[arrays.video == v].max(initial=-1)) + 1
    return max(labelled, int(image.shape[0]) if image is not None else 0, 1)


def axis_labels(video: sio.Video, plane_axes: str, n_lead: int) -> tuple[str, ...] | None:
    """Names of the axes of a video's pose layers, which napari's sliders show.

    ``("frame", "y", "x")`` for a video, a stack's own letters (``("t", "z", "y", "x")``) when
    they are known; ``None`` (napari numbers the axes) for a stack whose axes are not, so its
    layers never name an axis differently from the image they lie on.
    """
    if plane_axes:
        return (*plane_axes.lower(), "y", "x")
    if n_lead == 1 and not is_stack_file(video.filename):
        return ("frame", "y", "x")
    return None


def _image_layer(data: Any, name: str, plane_axes: str = "") -> LayerData:
    """An Image layer of ``data``, ``(*planes, y, x[, c])``, with one axis named ``frame`` or,
    for a stack, the axes ``plane_axes`` names."""
    n_lead = len(plane_axes) or 1
    rgb = data.ndim == n_lead + 3 and data.shape[-1] in (3, 4)
    # Fixed contrast limits: napari would otherwise decode frames just to guess them.
    kwargs = {"name": name, "rgb": rgb, "contrast_limits": (0, 255)}
    lead = tuple(plane_axes.lower()) or ("frame",)
    kwargs["axis_labels"] = (*lead, "y", "x", "c")[: data.ndim - rgb]
    return data, kwargs, "image"


def points_layer(binding: PoseBinding) -> LayerData:
    """The Points layer-data tuple for the rows of ``binding`` that the layer holds."""
    data, features = arrays_to_points(binding.arrays.select(binding.shown_rows()), binding)
    skeleton, tracks = binding.arrays.skeleton, binding.arrays.tracks
    kind = "predictions" if binding.predicted else "labels"
    kwargs = {
        "name": f"{video_name(binding.labels.videos[binding.video])} {kind}",
        "features": features,
        "feature_defaults": _feature_defaults(features),
        "face_color": "node",
        "border_color": "track",
        "border_color_cycle": track_colors(len(tracks)),
        **points_style(binding.predicted, len(skeleton.nodes), _image_height(binding)),
        "symbol": symbols(features["visible"].to_numpy()),
        "out_of_slice_display": False,
        "metadata": {POSE_KEY: binding},
    }
    return data, kwargs, "points"


def _image_height(binding: PoseBinding) -> float:
    video = binding.labels.videos[binding.video]
    shape = video.backend_metadata.get("shape") if video.backend_metadata else None
    if shape:
        return float(shape[1])
    y = binding.arrays.xy[..., 1]
    return float(np.nanmax(y, initial=512.0))


def arrays_to_points(arrays: PoseArrays, binding: PoseBinding) -> tuple[np.ndarray, pd.DataFrame]:
    """Points data ``(*plane, y, x)`` and features, one row per placed point (vectorised)."""
    inst, node = np.nonzero(np.isfinite(arrays.xy[..., 0]))
    plane = np.unravel_index(arrays.frame[inst], binding.plane_shape)
    data = np.column_stack([*plane, arrays.xy[inst, node, 1], arrays.xy[inst, node, 0]]).astype(
        float
    )
    node_names = binding.arrays.skeleton.node_names
    track_names = [t.name for t in binding.arrays.tracks] + [NO_TRACK]
    track_codes = arrays.track[inst]
    features = pd.DataFrame(
        {
            "instance": arrays.instance_id[inst],
            "node": pd.Categorical.from_codes(node, categories=node_names),
            "track": pd.Categorical.from_codes(
                np.where(track_codes >= 0, track_codes, len(track_names) - 1),
                categories=_unique(track_names),
            ),
            "score": arrays.point_score[inst, node].astype(float),
            "visible": arrays.visible[inst, node],
            "complete": arrays.complete[inst, node],
            "predicted": arrays.predicted[inst],
            "instance_score": arrays.score[inst].astype(float),
            "tracking_score": arrays.tracking_score[inst].astype(float),
            "from_predicted": arrays.from_predicted[inst],
        }
    )
    return data, features


def _unique(names: list[str]) -> list[str]:
    """Track names made unique (categories must be), keeping order; duplicates get a suffix."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return out


def _feature_defaults(features: pd.DataFrame) -> dict[str, Any]:
    """Values a point added by hand gets: a new user instance, visible, no track."""
    return {
        "instance": -1,
        "node": features["node"].cat.categories[0],
        "track": NO_TRACK,
        "score": np.nan,
        "visible": True,
        "complete": True,
        "predicted": False,
        "instance_score": np.nan,
        "tracking_score": np.nan,
        "from_predicted": -1,
    }


def edges_layer(binding: PoseBinding) -> LayerData:
    """The Vectors layer-data tuple of the skeleton edges of every frame the layer holds.

    napari shows the vectors of the frame on screen itself, so stepping frames costs nothing
    here; the edges are rebuilt only when points are edited or the window moves.
    """
    data, features = arrays_to_points(binding.arrays.select(binding.shown_rows()), binding)
    vectors, colors = skeleton_edges(data, features, binding)
    kind = "predictions" if binding.predicted else "labels"
    name = f"{video_name(binding.labels.videos[binding.video])} {kind} skeleton"
    kwargs = {
        "name": name,
        **edges_style(binding.predicted, _image_height(binding)),
        **({"edge_color": colors} if len(colors) else {}),
        "vector_style": "line",
        "out_of_slice_display": False,
        "metadata": {EDGES_KEY: binding},
    }
    return vectors, kwargs, "vectors"


def skeleton_edges(
    data: np.ndarray, features: pd.DataFrame, binding: PoseBinding
) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton edges of every instance in a point table: vectors ``(n, 2, ndim)``, RGBA colours.

    Vectorised over points: each (plane, instance, node) gets an integer key, and each edge of
    each instance looks up the keys of its two ends with one ``searchsorted``.
    """
    n_lead = len(binding.plane_shape)
    ndim = n_lead + 2
    if not len(data):
        return np.zeros((0, 2, ndim)), np.zeros((0, 4))
    n_nodes = len(binding.arrays.skeleton.nodes)
    plane = np.ravel_multi_index(
        tuple(np.round(data[:, :n_lead]).astype(np.int64).T), binding.plane_shape, mode="clip"
    )
    inst = features["instance"].to_numpy(np.int64, na_value=-1)
    node = features["node"].cat.codes.to_numpy().astype(np.int64)
    track = features["track"].cat.codes.to_numpy()
    # One id per (plane, instance): instance ids may repeat across planes while labelling.
    owner = np.unique(np.stack([plane, inst]), axis=1, return_inverse=True)[1].ravel()
    keys = owner * n_nodes + node
    order = np.argsort(keys)
    keys = keys[order]
    edges = np.asarray(binding.arrays.skeleton.edge_inds, dtype=np.int64).reshape(-1, 2)
    owners = np.arange(owner.max() + 1)[:, None]
    src, dst = owners * n_nodes + edges[:, 0], owners * n_nodes + edges[:, 1]
    src_pos = np.clip(np.searchsorted(keys, src), 0, len(keys) - 1)
    dst_pos = np.clip(np.searchsorted(keys, dst), 0, len(keys) - 1)
    found = (keys[src_pos] == src) & (keys[dst_pos] == dst)
    a = data[order[src_pos[found]]]
    b = data[order[dst_pos[found]]]
    vectors = np.stack([a, b - a], axis=1)
    vectors[:, 1, :n_lead] = 0
    categories = list(features["track"].cat.categories)
    untracked = (track < 0) | (
        track == (categories.index(NO_TRACK) if NO_TRACK in categories else -1)
    )
    colors = np.vstack([palette(len(categories)), [[1, 1, 1, 1]]])[
        np.where(untracked, len(categories), track)[order[src_pos[found]]]
    ]
    return vectors, colors


@attrs.define(eq=False)
class TracksBinding:
    """What a Tracks layer draws: the trajectories in the Points layers of one video.

    It reads the layers' ``PoseBinding`` arrays, so trajectories follow saved edits, and holds
    a window of frames like them when the video has too many points to draw at once.
    """

    bindings: list[PoseBinding]
    window: tuple[int, int] | None = None

    def arrays(self) -> PoseArrays:
        merged = concat([b.arrays for b in self.bindings])
        if self.window is None:
            return merged
        return merged.select((merged.frame >= self.window[0]) & (merged.frame < self.window[1]))


def tracks_layer(binding: TracksBinding, name: str) -> LayerData | None:
    """Trajectories of each track's centroid (mean of placed points), or None if untracked."""
    data = trajectories(binding.arrays(), binding.bindings[0].plane_shape)
    if data is None:
        return None
    # The project's list: a merge or a proofreading edit may have added tracks since layers
    # were made from it (their arrays keep the list they were given).
    n_tracks = len(binding.bindings[0].labels.tracks)
    kwargs = {
        "name": f"{name} tracks",
        "tail_length": 50,
        "head_length": 0,
        "tail_width": 2,
        "color_by": "track_id",
        "colormaps_dict": {"track_id": _track_colormap(n_tracks)},
        "metadata": {TRACKS_KEY: binding},
    }
    return data, kwargs, "tracks"


def trajectories(arrays: PoseArrays, plane_shape: tuple[int, ...]) -> np.ndarray | None:
    """Tracks-layer data ``(track_id, t, [z,] y, x)`` of track centroids, or None if untracked.

    User labels win over predictions where both exist for a track on a frame.
    """
    tracked = arrays.select(arrays.track >= 0)
    if not len(tracked):
        return None
    with np.errstate(invalid="ignore"):
        centroid = np.nanmean(tracked.xy, axis=1)
    ok = np.isfinite(centroid[:, 0])
    order = np.lexsort((tracked.predicted, tracked.frame, tracked.track))
    order = order[ok[order]]
    track, frame = tracked.track[order], tracked.frame[order]
    first = np.ones(len(order), bool)
    first[1:] = (np.diff(track) != 0) | (np.diff(frame) != 0)
    order, track, frame = order[first], track[first], frame[first]
    plane = np.unravel_index(frame, plane_shape)
    return np.column_stack([track, *plane, centroid[order, 1], centroid[order, 0]]).astype(float)


def track_colors(n_tracks: int) -> np.ndarray:
    """Point border colours: one palette colour per track, then white for untracked points."""
    return np.vstack([palette(n_tracks), [[1, 1, 1, 1]]])


def _track_colormap(n_tracks: int):
    """A step colormap giving track ``i`` the palette colour ``i`` (as Points borders do).

    The Tracks layer normalises ``track_id`` over 0..n-1 before the lookup, so the control
    points sit between consecutive ids.
    """
    from napari.utils.colormaps import Colormap

    n = max(n_tracks, 2)
    return Colormap(
        colors=palette(n), controls=np.linspace(0, 1, n + 1), interpolation="zero", name="tracks"
    )


# --------------------------------------------------------------------------- layers -> labels


def points_to_arrays(
    data: np.ndarray, features: pd.DataFrame, binding: PoseBinding, first_new_id: int = 0
) -> PoseArrays:
    """The instances held by a Points layer (data + features), as ``PoseArrays``.

    Points whose ``instance`` is negative (added by hand without an instance) become one new
    user instance per frame, with ids from ``first_new_id`` on; so does an instance id used on
    more than one frame, for each frame after its first.
    """
    n_lead = len(binding.plane_shape)
    frame = (
        np.ravel_multi_index(
            tuple(np.round(data[:, :n_lead]).astype(np.int64).T), binding.plane_shape
        )
        if len(data)
        else np.zeros(0, np.int64)
    )
    inst = features["instance"].to_numpy(np.int64, na_value=-1).copy()
    new = inst < 0
    if new.any():
        new_frames, new_ids = np.unique(frame[new], return_inverse=True)
        inst[new] = first_new_id + new_ids
        first_new_id += len(new_frames)
    # An instance lives on one frame: an id seen on several frames names several instances
    # (the first keeps the id, the others get new ones).
    keys, first, row = np.unique(np.column_stack([inst, frame]), axis=0, return_index=True,
                                 return_inverse=True)  # fmt: skip
    row = row.ravel()
    ids = keys[:, 0].copy()
    repeated = np.zeros(len(ids), bool)
    repeated[1:] = ids[1:] == ids[:-1]
    ids[repeated] = first_new_id + np.arange(repeated.sum())
    node = features["node"].cat.codes.to_numpy()
    if (node < 0).any():
        raise ValueError("points whose node is not in the skeleton cannot be saved")

    # Tracks named in the layer but new to the project (made while labelling) join the
    # project's track list, which every layer of the project shares.
    tracks = binding.labels.tracks
    names = _unique([t.name for t in tracks])
    for name in features["track"].cat.categories:
        if name != NO_TRACK and name not in names:
            tracks.append(sio.Track(name))
            names.append(name)
    track_index = {name: i for i, name in enumerate(names)}
    track_map = np.array([track_index.get(name, -1) for name in features["track"].cat.categories]
                         + [-1])  # fmt: skip
    track_codes = features["track"].cat.codes.to_numpy()
    arrays = PoseArrays.empty(
        binding.arrays.skeleton, binding.arrays.videos, list(tracks), len(ids)
    )

    arrays.instance_id[:] = ids
    arrays.video[:] = binding.video
    arrays.frame[:] = frame[first]
    arrays.track[:] = track_map[track_codes[first]]
    arrays.predicted[:] = features["predicted"].to_numpy(bool)[first]
    arrays.score[:] = features["instance_score"].to_numpy(float)[first]
    arrays.tracking_score[:] = features["tracking_score"].to_numpy(float)[first]
    arrays.from_predicted[:] = features["from_predicted"].to_numpy(np.int64, na_value=-1)[first]
    arrays.xy[row, node, 0] = data[:, -1]
    arrays.xy[row, node, 1] = data[:, -2]
    arrays.visible[row, node] = features["visible"].to_numpy(bool)
    arrays.complete[row, node] = features["complete"].to_numpy(bool)
    arrays.point_score[row, node] = features["score"].to_numpy(float)
    return arrays


def layers_to_labels(layers: list[tuple[np.ndarray, dict[str, Any]]]) -> sio.Labels:
    """The project held by Points layers (``(data, attributes)`` pairs, as napari writers get).

    Layers of one project (the same ``PoseBinding.labels``) are merged; every frame of a
    windowed layer is saved, not only the window shown.
    """
    bindings, parts = [], []
    for data, meta in layers:
        binding = (meta.get("metadata") or {}).get(POSE_KEY)
        if binding is None:
            continue
        features = meta["features"]
        if not isinstance(features, pd.DataFrame):
            features = pd.DataFrame(features)
        bindings.append(binding)
        parts.append(binding.merged(np.asarray(data), features))
    if not bindings:
        raise ValueError("none of these layers holds pose labels made by napari-pose")
    projects = {id(b.labels) for b in bindings}
    if len(projects) > 1:
        raise ValueError("these layers come from different projects; save them one at a time")
    return arrays_to_labels(concat(parts), template=bindings[0].labels)
