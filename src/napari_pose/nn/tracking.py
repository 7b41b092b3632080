"""Identity tracking: give each predicted instance a track, frame by frame.

Each frame's instances are matched one-to-one to the tracks seen in the last ``window``
frames by Hungarian assignment (``scipy.optimize.linear_sum_assignment``) on a similarity:

* ``oks``: object keypoint similarity with the track's latest pose (scale: that pose's
  bounding-box area), robust when animals touch because every node votes;
* ``centroid``: ``1 / (1 + distance / scale)`` between mean node positions;
* ``iou``: overlap of the instances' bounding boxes.

With ``kalman=True`` a track's latest pose is first moved by its constant-velocity prediction
(last displacement per frame, times the frames elapsed), which keeps fast animals on their
tracks. Pairs below ``min_similarity`` are not matched; an unmatched instance starts a new
track only while there are fewer than ``max_tracks``; once the limit is reached it takes the
free track it is most similar to, however little, since it must be one of the animals.
Post-processing joins tracks broken for a frame or two (one ends as the other starts, and
they never share a frame) and drops tracks shorter than ``min_length`` frames.

Similarities are computed for all (instance, track) pairs of a frame at once (numpy); the loop
is over frames, as tracking is sequential by nature.

In a (t, z) stack the frames are planes, and consecutive planes are different depths, not
later times: ``track_planes`` tracks each depth (each position of the non-time axes) along time
on its own.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs
import numpy as np
import sleap_io as sio
from scipy.optimize import linear_sum_assignment

from napari_pose.core.pose_arrays import PoseArrays
from napari_pose.nn.metrics import DEFAULT_SIGMA, instance_area

SIMILARITIES = ("oks", "centroid", "iou")


@attrs.frozen
class TrackerConfig:
    """Settings of ``track``.

    Attributes:
        similarity: ``oks``, ``centroid`` or ``iou``.
        window: Frames a track stays matchable after its last instance.
        max_tracks: Most tracks (``None``: no limit). Set it to the number of animals.
        min_similarity: Pairs below this are not matched (while new tracks are allowed).
        kalman: Predict each track's pose by constant velocity before comparing.
        max_gap: Tracks are joined across breaks of up to this many frames.
        min_length: Tracks with fewer instances are dropped (instances become untracked).
    """

    similarity: str = attrs.field(default="oks", validator=attrs.validators.in_(SIMILARITIES))
    window: int = 5
    max_tracks: int | None = None
    min_similarity: float = 0.1
    kalman: bool = False
    max_gap: int = 2
    min_length: int = 3


def similarity(kind: str, current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """``(n, m)`` similarity of ``current`` ``(n, k, 2)`` poses to ``previous`` ``(m, k, 2)``
    (NaN where a node is missing)."""
    if kind == "oks":
        visible = np.isfinite(previous).all(axis=-1)
        area = instance_area(previous, visible) + np.spacing(1)
        sq = ((current[:, None] - previous[None]) ** 2).sum(axis=-1)  # (n, m, k)
        both = np.isfinite(sq)
        ks = np.exp(
            -np.where(both, sq, 0) / (2 * (2 * DEFAULT_SIGMA) ** 2 * 2 * area[None, :, None])
        )
        count = both.sum(axis=-1)
        return np.divide(np.where(both, ks, 0).sum(axis=-1), count, out=np.zeros(sq.shape[:2]),
                         where=count > 0)  # fmt: skip
    if kind == "centroid":
        a, b = np.nanmean(current, axis=1), np.nanmean(previous, axis=1)
        extent = np.nanmax(previous, axis=1) - np.nanmin(previous, axis=1)
        scale = np.maximum(np.linalg.norm(extent, axis=-1), 1.0)
        dist = np.linalg.norm(a[:, None] - b[None], axis=-1) / scale[None]
        return np.nan_to_num(1.0 / (1.0 + dist))
    low_a, high_a = np.nanmin(current, axis=1), np.nanmax(current, axis=1)
    low_b, high_b = np.nanmin(previous, axis=1), np.nanmax(previous, axis=1)
    inter = np.clip(np.minimum(high_a[:, None], high_b[None]) - np.maximum(low_a[:, None],
                    low_b[None]), 0, None).prod(axis=-1)  # fmt: skip
    union = (high_a - low_a).prod(-1)[:, None] + (high_b - low_b).prod(-1)[None] - inter
    return np.nan_to_num(np.divide(inter, union, out=np.zeros_like(inter), where=union > 0))


def _track_video(xy: np.ndarray, frame: np.ndarray, config: TrackerConfig
                 ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Track ids ``(n,)`` and matching similarities ``(n,)`` of one video's instances,
    whose rows are sorted by frame."""
    n = len(frame)
    ids = np.full(n, -1, np.int64)
    scores = np.full(n, np.nan, np.float32)
    last_pose: list[np.ndarray] = []  # per track: latest pose (k, 2)
    velocity: list[np.ndarray] = []  # per track: displacement per frame
    last_frame: list[int] = []
    # Tracks still within ``window``, ascending. Frames only increase, so a track that falls
    # out never comes back: pruning this list keeps each frame's cost off the tracks of the past.
    live: list[int] = []
    starts = np.flatnonzero(np.diff(frame, prepend=frame[0] - 1))
    for start, stop in zip(starts, np.append(starts[1:], n), strict=True):
        f = int(frame[start])
        rows = np.arange(start, stop)
        live = [t for t in live if f - last_frame[t] <= config.window]
        sim = np.zeros((len(rows), len(live)))
        if live:
            previous = np.stack([last_pose[t] for t in live])
            if config.kalman:
                elapsed = np.array([f - last_frame[t] for t in live], float)[:, None, None]
                previous = previous + np.stack([velocity[t] for t in live]) * elapsed
            sim = similarity(config.similarity, xy[rows], previous)
        matched_rows, matched_tracks = linear_sum_assignment(-sim) if live else ([], [])
        assigned = {}
        for r, c in zip(matched_rows, matched_tracks, strict=True):
            if sim[r, c] >= config.min_similarity:
                assigned[r] = c
        full = config.max_tracks is not None and len(last_pose) >= config.max_tracks
        free = [c for c in range(len(live)) if c not in assigned.values()]
        leftover = [r for r in range(len(rows)) if r not in assigned]
        if full and leftover and free:  # must be one of the known animals: best free track
            sub = sim[np.ix_(leftover, free)]
            for r, c in zip(*linear_sum_assignment(-sub), strict=True):
                assigned[leftover[r]] = free[c]
        known = len(last_pose)
        for r in range(len(rows)):
            row = rows[r]
            if r in assigned:
                t = live[assigned[r]]
                scores[row] = sim[r, assigned[r]]
                step = (xy[row] - last_pose[t]) / max(1, f - last_frame[t])
                velocity[t] = np.where(np.isfinite(step), step, 0.0)
            elif config.max_tracks is None or len(last_pose) < config.max_tracks:
                t = len(last_pose)
                last_pose.append(xy[row])
                velocity.append(np.zeros_like(xy[row]))
                last_frame.append(f)
            else:
                continue
            ids[row] = t
            last_pose[t] = np.where(np.isfinite(xy[row]), xy[row], last_pose[t])
            last_frame[t] = f
        live += range(known, len(last_pose))  # tracks this frame started
    return ids, scores


def _join_breaks(ids: np.ndarray, frame: np.ndarray, xy: np.ndarray,
                 config: TrackerConfig) -> np.ndarray:  # fmt: skip
    """Relabel tracks that continue one another across a short gap, most similar first."""
    tracks = [t for t in np.unique(ids) if t >= 0]
    first = {t: frame[ids == t].min() for t in tracks}
    last = {t: frame[ids == t].max() for t in tracks}
    for t in sorted(tracks, key=first.__getitem__):
        # ``u`` ends before ``t`` starts, so they never share a frame (``last`` follows joins).
        candidates = [u for u in tracks if u != t and 0 < first[t] - last[u] <= config.max_gap]
        if not candidates:
            continue
        head = xy[(ids == t) & (frame == first[t])][:1]
        tails = np.stack([xy[(ids == u) & (frame == last[u])][0] for u in candidates])
        sim = similarity(config.similarity, head, tails)[0]
        best = int(np.argmax(sim))
        if sim[best] >= config.min_similarity:
            u = candidates[best]
            ids[ids == t] = u
            last[u] = max(last[u], last[t])
            tracks.remove(t)
    return ids


def track(arrays: PoseArrays, config: TrackerConfig | None = None) -> PoseArrays:
    """Predicted instances of ``arrays`` with tracks assigned (user instances keep theirs).

    Tracks are numbered per video in order of appearance and named ``track_0``, ``track_1``...
    (one list across videos); ``tracking_score`` holds each match's similarity.
    """
    config = config or TrackerConfig()
    arrays = arrays.sorted()
    track_ids = arrays.track.copy().astype(np.int64)
    tracking = arrays.tracking_score.copy()
    predicted = arrays.predicted
    track_ids[predicted] = -1
    n_tracks = 0
    for v in np.unique(arrays.video[predicted]):
        rows = np.flatnonzero(predicted & (arrays.video == v))
        ids, scores = _track_video(arrays.xy[rows], arrays.frame[rows], config)
        ids = _join_breaks(ids, arrays.frame[rows], arrays.xy[rows], config)
        # Tracks long enough, numbered by first frame, then id (rows are sorted by frame).
        tracks, first, counts = np.unique(ids, return_index=True, return_counts=True)
        keep = (tracks >= 0) & (counts >= config.min_length)
        tracks = tracks[keep][np.argsort(arrays.frame[rows][first[keep]], kind="stable")]
        remap = np.full(ids.max(initial=-1) + 2, -1, np.int64)  # remap[-1]: untracked
        remap[tracks] = n_tracks + np.arange(len(tracks))
        track_ids[rows] = remap[ids]
        tracking[rows] = np.where(track_ids[rows] >= 0, scores, np.nan)
        n_tracks += len(tracks)
    user_tracks = list(arrays.tracks) if (~predicted).any() else []
    offset = len(user_tracks)
    new = [sio.Track(name=f"track_{i}") for i in range(n_tracks)]
    track_ids[predicted] = np.where(track_ids[predicted] >= 0, track_ids[predicted] + offset, -1)
    return attrs.evolve(arrays, tracks=user_tracks + new, track=track_ids.astype(np.int32),
                        tracking_score=tracking.astype(np.float32))  # fmt: skip


def track_planes(arrays: PoseArrays, planes: Mapping[int, tuple[tuple[int, ...], str]],
                 config: TrackerConfig | None = None) -> PoseArrays:  # fmt: skip
    """``track`` for stacks, whose frames are planes: each depth is tracked along time alone.

    ``planes`` maps a video index to its stack's ``(plane_shape, plane_axes)`` (as
    ``StackPlaneReader`` has them, e.g. ``((t, z), "TZ")``): frame ``i`` of that video is the
    plane at ``np.unravel_index(i, plane_shape)``. The planes of one position of the axes other
    than 'T' (one z) form a group tracked over time as ``track`` tracks a video, so ``window``
    counts time points and ``max_tracks`` is per group (the animals one z-section shows). A
    group's tracks are named after its position: ``z3 track_5`` (``q1 z3 track_5`` with more
    axes), numbered in one run over all groups, so every name is distinct. Videos missing from
    ``planes``, stacks without a 'T' axis and stacks with nothing but one are tracked by
    ``track`` as they are (the same result).
    """
    time = arrays.frame.copy()
    group = np.full(len(arrays), -1, np.int64)  # flat position of the non-time axes; -1: none
    names: dict[tuple[int, int], str] = {}  # (video, group) -> prefix of its tracks' names
    for v, (shape, axes) in planes.items():
        if "T" not in axes or axes == "T":
            continue
        rows = np.flatnonzero(arrays.video == v)
        i = axes.index("T")
        coords = np.unravel_index(arrays.frame[rows], shape)
        other_axes, other_shape = axes[:i] + axes[i + 1 :], shape[:i] + shape[i + 1 :]
        time[rows] = coords[i]
        group[rows] = np.ravel_multi_index(coords[:i] + coords[i + 1 :], other_shape)
        for g in np.unique(group[rows]).tolist():
            position = zip(other_axes, np.unravel_index(g, other_shape), strict=True)
            names[v, g] = " ".join(f"{a.lower()}{i}" for a, i in position)
    # Each (video, group) becomes a video of its own for ``track``, rows pre-sorted the way
    # ``track`` sorts them so its rows line up with ``order`` here.
    keys, pseudo = np.unique(np.stack([arrays.video, group], axis=1), axis=0, return_inverse=True)
    pseudo = pseudo.ravel()  # a column in numpy 2.0.0
    order = np.lexsort((arrays.instance_id, arrays.predicted, time, pseudo))
    tracked = track(attrs.evolve(arrays.select(order), video=pseudo[order].astype(np.int32),
                                 frame=time[order]), config)  # fmt: skip
    tracks = list(tracked.tracks)
    new = tracked.predicted & (tracked.track >= 0)  # ``track`` made these rows' tracks
    ids, first = np.unique(tracked.track[new], return_index=True)
    for t, p in zip(ids.tolist(), tracked.video[new][first].tolist(), strict=True):
        name = names.get((int(keys[p, 0]), int(keys[p, 1])))
        if name is not None:
            tracks[t] = sio.Track(name=f"{name} {tracks[t].name}")
    return attrs.evolve(tracked, video=arrays.video[order], frame=arrays.frame[order],
                        tracks=tracks).sorted()  # fmt: skip
