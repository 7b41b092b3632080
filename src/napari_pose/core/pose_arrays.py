"""Instances of a ``Labels`` as dense numpy arrays, and back.

sleap-io's ``Labels`` is our data model, but it holds one Python object per instance. Anything
that touches every point (building napari layers, drawing tracks, computing metrics) works on
``PoseArrays`` instead: one row per instance, one column per skeleton node. For lazily loaded
``.slp`` files the arrays come straight from the raw HDF5 tables with no object per instance,
which is what makes 100,000-frame prediction files open in seconds.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np
import sleap_io as sio
from sleap_io.io.slp import InstanceType
from sleap_io.model.instance import PointsArray, PredictedPointsArray

# Columns holding one value per instance (row), in the order ``select`` and ``concat`` use.
_ROW_FIELDS = (
    "instance_id",
    "video",
    "frame",
    "track",
    "predicted",
    "score",
    "tracking_score",
    "from_predicted",
    "xy",
    "visible",
    "complete",
    "point_score",
)


@attrs.define(eq=False)
class PoseArrays:
    """Instances of one skeleton as arrays: row ``i`` is one instance, column ``j`` node ``j``.

    ``videos``, ``tracks`` and ``skeleton`` are the objects of the ``Labels`` the arrays came
    from; ``video`` and ``track`` index into them (``-1``: no track). ``instance_id`` is a
    stable identifier used by ``from_predicted`` (the id of the predicted instance a user
    instance was made from, or ``-1``), so rows can be reordered or filtered freely.

    Missing points (never placed) have NaN coordinates. Occluded points keep their coordinates
    with ``visible == False``, as in SLEAP, so they survive every conversion.
    """

    skeleton: sio.Skeleton
    videos: list[sio.Video]
    tracks: list[sio.Track]
    instance_id: np.ndarray  # (n,) int64
    video: np.ndarray  # (n,) int32
    frame: np.ndarray  # (n,) int64
    track: np.ndarray  # (n,) int32, -1 when untracked
    predicted: np.ndarray  # (n,) bool
    score: np.ndarray  # (n,) float32 instance score, NaN for user instances
    tracking_score: np.ndarray  # (n,) float32, NaN when unset
    from_predicted: np.ndarray  # (n,) int64 instance_id, -1 when none
    xy: np.ndarray  # (n, n_nodes, 2) float64, NaN where missing
    visible: np.ndarray  # (n, n_nodes) bool
    complete: np.ndarray  # (n, n_nodes) bool
    point_score: np.ndarray  # (n, n_nodes) float32, NaN for user instances

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def n_nodes(self) -> int:
        return len(self.skeleton.nodes)

    @classmethod
    def empty(
        cls, skeleton: sio.Skeleton, videos: list[sio.Video], tracks: list[sio.Track], n: int = 0
    ) -> PoseArrays:
        """Arrays for ``n`` instances with every point missing (NaN) and no track."""
        k = len(skeleton.nodes)
        return cls(
            skeleton=skeleton,
            videos=list(videos),
            tracks=list(tracks),
            instance_id=np.arange(n, dtype=np.int64),
            video=np.zeros(n, np.int32),
            frame=np.zeros(n, np.int64),
            track=np.full(n, -1, np.int32),
            predicted=np.zeros(n, bool),
            score=np.full(n, np.nan, np.float32),
            tracking_score=np.full(n, np.nan, np.float32),
            from_predicted=np.full(n, -1, np.int64),
            xy=np.full((n, k, 2), np.nan),
            visible=np.zeros((n, k), bool),
            complete=np.zeros((n, k), bool),
            point_score=np.full((n, k), np.nan, np.float32),
        )

    def select(self, rows: np.ndarray) -> PoseArrays:
        """The instances at ``rows`` (a boolean mask or integer indices), sharing the objects.

        Arrays are never modified in place once built, so selecting every row returns ``self``
        instead of copying millions of points.
        """
        rows = np.asarray(rows)
        if rows.dtype == bool and rows.all():
            return self
        return attrs.evolve(self, **{name: getattr(self, name)[rows] for name in _ROW_FIELDS})

    def sorted(self) -> PoseArrays:
        """Rows ordered by (video, frame, predicted last, instance id), as SLEAP stores them."""
        order = np.lexsort((self.instance_id, self.predicted, self.frame, self.video))
        if np.array_equal(order, np.arange(len(order))):
            return self
        return self.select(order)

    @property
    def frame_keys(self) -> np.ndarray:
        """Each row's (video, frame) as one int64 (``video << 40 | frame``), ordered as rows
        sorted by video then frame are, so frames compare, match and search as plain numbers."""
        return self.video.astype(np.int64) << 40 | self.frame

    def frame_rows(self, video: int, start: int, stop: int) -> np.ndarray:
        """Indices of the rows of ``video`` with ``start <= frame < stop``.

        Uses binary search when rows are sorted by (video, frame), which ``sorted`` guarantees
        and every loader here returns, so stepping through a 100k-frame file stays O(log n).
        """
        keys = self.frame_keys
        if np.all(keys[:-1] <= keys[1:]):
            lo, hi = np.searchsorted(keys, [video << 40 | start, video << 40 | stop])
            return np.arange(lo, hi)
        return np.flatnonzero((self.video == video) & (self.frame >= start) & (self.frame < stop))


def concat(parts: list[PoseArrays]) -> PoseArrays:
    """Stack the rows of arrays that share one skeleton and video list.

    Their track lists may differ only by tracks added at the end (new tracks made while
    labelling), so the longest list indexes every row.
    """
    tracks = max((p.tracks for p in parts), key=len)
    nonempty = [p for p in parts if len(p)]
    if len(nonempty) <= 1:
        return attrs.evolve(nonempty[0] if nonempty else parts[0], tracks=tracks)
    rows: dict[str, Any] = {
        name: np.concatenate([getattr(p, name) for p in parts]) for name in _ROW_FIELDS
    }
    return attrs.evolve(parts[0], tracks=tracks, **rows)


def replace_frames(base: PoseArrays, new: PoseArrays) -> PoseArrays:
    """``base`` with its instances on every (video, frame) of ``new`` replaced by ``new``'s.

    A re-run of a model over some frames thus updates those frames and keeps the rest. ``new``
    gets instance ids above ``base``'s so ids stay unique; both must share skeleton and videos.
    """
    redone = np.isin(base.frame_keys, new.frame_keys)
    first_id = int(base.instance_id.max(initial=-1)) + 1
    new = attrs.evolve(new, instance_id=new.instance_id + first_id)
    return concat([base.select(~redone), new]).sorted()


def labels_to_arrays(labels: sio.Labels, skeleton: sio.Skeleton | None = None) -> PoseArrays:
    """Every instance of ``skeleton`` (default: the first) in ``labels`` as ``PoseArrays``.

    Lazily loaded ``.slp`` files are converted from their raw tables without creating an
    object per instance; eager ``Labels`` cost one loop step per instance (never per point).
    """
    if not labels.skeletons:
        raise ValueError("the labels have no skeleton")
    skeleton = skeleton or labels.skeletons[0]
    store = getattr(labels, "_lazy_store", None)
    if store is not None:
        arrays = _lazy_to_arrays(labels, store, labels.skeletons.index(skeleton))
    else:
        arrays = _eager_to_arrays(labels, skeleton)
    # SLEAP files mark some never-placed (NaN) points visible; a missing point is not visible.
    # Scores of missing points are likewise meaningless (SLEAP writes 0): NaN, like user points.
    placed = np.isfinite(arrays.xy[..., 0])
    arrays.visible &= placed
    arrays.point_score[~placed] = np.nan
    return arrays.sorted()


def _lazy_to_arrays(labels: sio.Labels, store, skeleton_index: int) -> PoseArrays:
    """Vectorised conversion of the raw SLEAP tables (frames, instances, points, pred_points)."""
    frames, inst = store.frames_data, store.instances_data
    inst = inst[inst["skeleton"] == skeleton_index]
    n, k = len(inst), len(labels.skeletons[skeleton_index].nodes)

    # Each instance row names its frame by frame_id; map to the frames table row.
    frame_row = np.searchsorted(frames["frame_id"], inst["frame_id"])
    if len(frames) and not np.array_equal(frames["frame_id"], np.sort(frames["frame_id"])):
        order = np.argsort(frames["frame_id"])
        frame_row = order[np.searchsorted(frames["frame_id"], inst["frame_id"], sorter=order)]

    predicted = inst["instance_type"] == InstanceType.PREDICTED
    starts = inst["point_id_start"].astype(np.int64)
    xy = np.full((n, k, 2), np.nan)
    visible = np.zeros((n, k), bool)
    complete = np.zeros((n, k), bool)
    point_score = np.full((n, k), np.nan, np.float32)
    for is_pred, table in ((False, store.points_data), (True, store.pred_points_data)):
        rows = predicted == is_pred
        if not rows.any():
            continue
        pts = _instance_points(table, starts[rows], k)
        rows = slice(None) if rows.all() else rows
        xy[rows, :, 0], xy[rows, :, 1] = pts["x"], pts["y"]
        visible[rows], complete[rows] = pts["visible"], pts["complete"]
        if is_pred:
            point_score[rows] = pts["score"]
    if store.format_id < 1.1:  # legacy files put pixel corners, not centres, at integers
        xy -= 0.5

    names = inst.dtype.names
    tracking = inst["tracking_score"] if "tracking_score" in names else np.zeros(n, np.float32)
    return PoseArrays(
        skeleton=labels.skeletons[skeleton_index],
        videos=list(labels.videos),
        tracks=list(labels.tracks),
        instance_id=inst["instance_id"].astype(np.int64),
        video=frames["video"][frame_row].astype(np.int32),
        frame=frames["frame_idx"][frame_row].astype(np.int64),
        track=inst["track"].astype(np.int32),
        predicted=predicted,
        score=np.where(predicted, inst["score"], np.nan).astype(np.float32),
        tracking_score=tracking.astype(np.float32),
        from_predicted=inst["from_predicted"].astype(np.int64),
        xy=xy,
        visible=visible,
        complete=complete,
        point_score=point_score,
    )


def _instance_points(table: np.ndarray, starts: np.ndarray, k: int) -> np.ndarray:
    """The ``(n, k)`` point records of instances whose points start at ``starts``.

    SLEAP writes each instance's points contiguously and instances in order, so the common
    case is one reshaped slice of the table (no gather over millions of points).
    """
    first = int(starts[0])
    if np.array_equal(starts, first + k * np.arange(len(starts))):
        return table[first : first + k * len(starts)].reshape(len(starts), k)
    return table[starts[:, None] + np.arange(k)]


def _eager_to_arrays(labels: sio.Labels, skeleton: sio.Skeleton) -> PoseArrays:
    """Conversion from instance objects: one loop step per instance, points copied as arrays."""
    instances, video, frame = [], [], []
    video_index = {id(v): i for i, v in enumerate(labels.videos)}
    for lf in labels.labeled_frames:
        for inst in lf.instances:
            if inst.skeleton is skeleton:
                instances.append(inst)
                video.append(video_index[id(lf.video)])
                frame.append(lf.frame_idx)
    arrays = PoseArrays.empty(skeleton, labels.videos, labels.tracks, len(instances))
    if not instances:
        return arrays
    points = np.stack([inst.points[["xy", "visible", "complete"]] for inst in instances])
    predicted = np.array([isinstance(inst, sio.PredictedInstance) for inst in instances])
    track_index = {id(t): i for i, t in enumerate(labels.tracks)}
    row_of = {id(inst): i for i, inst in enumerate(instances)}

    arrays.video[:] = video
    arrays.frame[:] = frame
    arrays.predicted[:] = predicted
    arrays.xy[:] = points["xy"]
    arrays.visible[:] = points["visible"]
    arrays.complete[:] = points["complete"]
    arrays.track[:] = [track_index.get(id(inst.track), -1) for inst in instances]
    arrays.tracking_score[:] = [
        np.nan if inst.tracking_score is None else inst.tracking_score for inst in instances
    ]
    arrays.from_predicted[:] = [row_of.get(id(inst.from_predicted), -1) for inst in instances]
    if predicted.any():
        pred = [inst for inst in instances if isinstance(inst, sio.PredictedInstance)]
        arrays.score[predicted] = [inst.score for inst in pred]
        arrays.point_score[predicted] = np.stack([inst.points["score"] for inst in pred])
    return arrays


def arrays_to_labels(arrays: PoseArrays, template: sio.Labels | None = None) -> sio.Labels:
    """A new ``Labels`` holding the instances in ``arrays``.

    Everything that is not an instance (videos, skeletons, tracks, suggestions, provenance)
    is taken from ``template`` when given, so edits made on arrays or layers save back into
    the project they came from; ``arrays.track`` then indexes ``template.tracks``.
    """
    arrays = arrays.sorted()
    tracks = list(template.tracks) if template else list(arrays.tracks)
    labels = sio.Labels(
        videos=list(template.videos) if template else list(arrays.videos),
        skeletons=list(template.skeletons) if template else [arrays.skeleton],
        tracks=tracks,
        suggestions=list(template.suggestions) if template else [],
        provenance=dict(template.provenance) if template else {},
    )
    objects: list[sio.Instance | sio.PredictedInstance] = []
    for i in range(len(arrays)):
        track = tracks[arrays.track[i]] if arrays.track[i] >= 0 else None
        tracking = None if np.isnan(arrays.tracking_score[i]) else float(arrays.tracking_score[i])
        if arrays.predicted[i]:
            points = PredictedPointsArray.empty(arrays.n_nodes)
            points["score"] = arrays.point_score[i]
            inst = sio.PredictedInstance(
                points=points,
                skeleton=arrays.skeleton,
                score=float(arrays.score[i]),
                track=track,
                tracking_score=tracking,
            )
        else:
            points = PointsArray.empty(arrays.n_nodes)
            inst = sio.Instance(
                points=points, skeleton=arrays.skeleton, track=track, tracking_score=tracking
            )
        points["xy"] = arrays.xy[i]
        points["visible"] = arrays.visible[i]
        points["complete"] = arrays.complete[i]
        points["name"] = arrays.skeleton.node_names
        objects.append(inst)

    by_id = {int(i): inst for i, inst in zip(arrays.instance_id, objects)}
    for inst, source in zip(objects, arrays.from_predicted):
        if source >= 0:
            inst.from_predicted = by_id.get(int(source))

    # Rows are sorted by (video, frame): split them into one LabeledFrame per frame.
    keys = np.stack([arrays.video, arrays.frame], axis=1)
    starts = np.flatnonzero(np.any(np.diff(keys, axis=0, prepend=-1), axis=1))
    stops = np.append(starts[1:], len(arrays))
    for start, stop in zip(starts, stops):
        labels.labeled_frames.append(
            sio.LabeledFrame(
                video=labels.videos[arrays.video[start]],
                frame_idx=int(arrays.frame[start]),
                instances=objects[start:stop],
            )
        )
    return labels
