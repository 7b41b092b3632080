"""Label quality check: flag user labels that are likely mistakes, before they train a model.

A model learns whatever it is shown, including a wing labelled on the wrong side or a head
clicked on the neighbouring animal, and one such label costs more accuracy than a dozen
missing ones. Most mistakes are outliers against the rest of the project, so each check
compares one instance with robust statistics (medians and median absolute deviations) over
every user instance of the project, which a few mistakes cannot drag along:

- ``swap``: a left/right pair (the skeleton's symmetries) lies on the side of the body axis
  where nearly every other instance has it the other way round;
- ``edge``: an edge is far longer or shorter than usual, or points in an unusual direction
  relative to the body axis, and the node to blame is the one whose edges are off;
- ``duplicate``: two user instances in one frame whose nodes coincide (one animal labelled
  twice, typically after *copy previous frame* plus a new instance);
- ``outside``: a visible node lies outside the image (needs the frame size, see
  :func:`frame_size`); occluded ones may, as SLEAP keeps points that left the frame hidden.

Predictions are never checked: they are the model's, and proofreading has its own tools.
Everything is vectorised over the project (clip.slp, 3000 instances of 13 nodes: a few
milliseconds), so the Label dock can run the check on every click of its button.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import sleap_io as sio

from napari_pose.core.pose_arrays import PoseArrays, labels_to_arrays

__all__ = ["KINDS", "Flag", "check_arrays", "check_labels", "counts", "frame_size"]

#: The kinds of flag, in the order reports list their counts.
KINDS = ("swap", "edge", "duplicate", "outside")

# An edge is off when its length is both a robust outlier (distance from the project's median
# in units of 1.4826 MAD, a standard deviation for normal data) and far off in plain terms:
# over twice its usual length or under a quarter of it. The human labels of clip.slp, 1500
# consecutive frames of walking, grooming and wing-extending flies, keep every edge within
# 0.48-1.7 times its median, with z-scores up to 10 on the legs (their spread is narrow
# because legs mostly stand still): z alone would flag hundreds of real poses.
EDGE_Z = 6.0
EDGE_RATIO = 2.0
# The same for an edge's direction relative to the body axis: a robust outlier and over 100
# degrees from its usual direction (clip.slp's legs and extended wings swing up to 97).
ANGLE_Z = 6.0
ANGLE_MIN = 100.0
# Floors on the spread: exact (synthetic) or very consistent labels have a MAD near 0, where
# a pixel of jitter would be many "standard deviations".
_MIN_LENGTH_SPREAD = 0.05
_MIN_ANGLE_SPREAD = 8.0
# Statistics need this many instances with the nodes placed; fewer and a check stays silent.
MIN_INSTANCES = 10
# A symmetric pair's side is only judged when this fraction of the project agrees on it, and
# only on instances where the line between the pair is this far (sine of the angle) off the
# body axis: a pair lying along the axis has no side to speak of.
SIDE_AGREEMENT = 0.8
SIDE_MIN_SINE = 0.25
# Nor where the two are close together (under this fraction of their usual distance): a
# grooming fly's foreleg tips touch, and the direction between touching points is noise.
SIDE_MIN_APART = 0.25
# Two instances of a frame are one animal labelled twice when the median distance between
# their common nodes is under this fraction of the usual animal size (or a few pixels).
DUPLICATE_FRACTION = 0.1
DUPLICATE_MIN_PX = 3.0


@attrs.frozen
class Flag:
    """One likely mistake in a user instance.

    Attributes:
        kind: ``"swap"``, ``"edge"``, ``"duplicate"`` or ``"outside"`` (see the module).
        video: Index of the video in the labels' ``videos``.
        frame: Frame index in that video.
        instance: Position of the instance among the frame's user instances (0 is the first),
            as SLEAP lists them.
        instance_id: The instance's ``PoseArrays.instance_id`` (the Label dock's ``instance``
            feature), to select its points.
        nodes: Names of the nodes concerned.
        score: How suspicious, 1 at a check's threshold and growing past it; sure mistakes
            (``duplicate``, ``outside``) score at least 2. Flags come most suspicious first.
        reason: What looks wrong, in words a user can check on the image.
    """

    kind: str
    video: int
    frame: int
    instance: int
    instance_id: int
    nodes: tuple[str, ...]
    score: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (``nodes`` as a list)."""
        return {**attrs.asdict(self), "nodes": list(self.nodes), "score": round(self.score, 3)}


def counts(flags: list[Flag]) -> dict[str, int]:
    """Number of flags of each kind, every kind listed (0 when none)."""
    return {kind: sum(flag.kind == kind for flag in flags) for kind in KINDS}


def frame_size(video: sio.Video) -> tuple[int, int] | None:
    """``(height, width)`` of ``video``'s frames when it can be known without decoding.

    From ``sio.Video.shape`` (the open backend, or the shape a ``.slp`` recorded), else from a
    media file's header (PyAV reads the stream's size without decoding a frame). None when
    neither tells, such as a video that is not where the labels say.
    """
    shape = video.shape
    if shape is not None and len(shape) >= 3 and shape[1] and shape[2]:
        return int(shape[1]), int(shape[2])
    filename = video.filename
    if not isinstance(filename, str) or not Path(filename).is_file():
        return None
    from napari_pose.core.video import MEDIA_SUFFIXES

    if Path(filename).suffix.lower() not in MEDIA_SUFFIXES:
        return None
    try:
        import av

        with av.open(filename) as container:
            stream = container.streams.video[0]
            height, width = stream.codec_context.height, stream.codec_context.width
    except Exception:  # an unreadable file: the check is skipped, the file's problem is not ours
        return None
    return (int(height), int(width)) if height and width else None


def check_labels(
    labels: sio.Labels, frame_sizes: Mapping[int, tuple[int, int] | None] | None = None
) -> list[Flag]:
    """Likely mistakes among the user instances of ``labels``, most suspicious first.

    Args:
        labels: The project (lazy or eager). Instances of every skeleton are checked, each
            against the instances of its own skeleton.
        frame_sizes: ``(height, width)`` per video index; default :func:`frame_size` of each
            video. Videos without a size get no ``outside`` check.
    """
    if frame_sizes is None:
        frame_sizes = {i: frame_size(video) for i, video in enumerate(labels.videos)}
    flags = []
    for skeleton in labels.skeletons:
        flags += check_arrays(labels_to_arrays(labels, skeleton), frame_sizes)
    return sorted(flags, key=_rank)


def check_arrays(
    arrays: PoseArrays, frame_sizes: Mapping[int, tuple[int, int] | None] | None = None
) -> list[Flag]:
    """:func:`check_labels` on one skeleton's ``PoseArrays`` (predicted rows are ignored)."""
    user = arrays.select(~arrays.predicted).sorted()
    if not len(user):
        return []
    axis, size = _body_axis(user), _animal_size(user.xy)
    position = _position_in_frame(user)
    swaps = _swaps(user, axis)
    # A swapped pair's edges point the wrong way too: the swap says it once, better.
    swapped = {(row, node) for _, row, nodes, _, _ in swaps for node in nodes}
    edges = [found for found in _edges(user, axis) if (found[1], found[2][0]) not in swapped]
    found = [
        *swaps,
        *edges,
        *_duplicates(user, size),
        *_outside(user, frame_sizes or {}, size),
    ]
    flags = [
        Flag(kind=kind, video=int(user.video[row]), frame=int(user.frame[row]),
             instance=int(position[row]), instance_id=int(user.instance_id[row]),
             nodes=nodes, score=float(score), reason=reason)
        for kind, row, nodes, score, reason in found
    ]  # fmt: skip
    return sorted(flags, key=_rank)


def _rank(flag: Flag) -> tuple:
    return (-flag.score, flag.video, flag.frame, flag.instance, flag.kind)


# A found mistake before it becomes a Flag: (kind, row, nodes, score, reason).
_Found = tuple[str, int, tuple[str, ...], float, str]


def _position_in_frame(arrays: PoseArrays) -> np.ndarray:
    """Each row's position among the rows of its (video, frame); rows sorted by frame."""
    keys = arrays.frame_keys
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, len(keys)]))
    return np.arange(len(keys)) - first


def _robust(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Median and 1.4826 MAD (a standard deviation for normal data) ignoring NaN."""
    median = np.nanmedian(values, axis=axis)
    mad = np.nanmedian(np.abs(values - np.expand_dims(median, axis)), axis=axis)
    return median, 1.4826 * mad


def _animal_size(xy: np.ndarray) -> float:
    """Median diagonal of the instances' bounding boxes: the scale of "near" and "far"."""
    placed = np.isfinite(xy[..., 0])
    enough = placed.sum(axis=1) >= 2
    if not enough.any():
        return float("nan")
    with np.errstate(invalid="ignore"), _quiet_nan():
        extent = np.nanmax(xy[enough], axis=1) - np.nanmin(xy[enough], axis=1)
    return float(np.median(np.hypot(extent[:, 0], extent[:, 1])))


@contextmanager
def _quiet_nan() -> Iterator[None]:
    """Silence numpy's "all-NaN slice" warnings: a node never placed has no statistics."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _body_axis(arrays: PoseArrays) -> np.ndarray:
    """Each instance's body axis, ``(n, 2)`` (NaN where it cannot be drawn).

    The axis joins two nodes outside any left/right pair, in a fixed order, so that "left of
    it" has a meaning. Of the pairs placed in at least half the instances and at least half as
    far apart as the farthest such pair, it is the one relative to which the skeleton's edges
    keep the steadiest directions over the project (the smallest mean circular spread): on
    clip.slp's flies that is the head-abdomen line, where a pair with a leg tip would swing
    with the leg. A skeleton with fewer than two such nodes has no axis (all NaN): the side and
    direction checks then stay silent.
    """
    n, k = len(arrays), arrays.n_nodes
    axis = np.full((n, 2), np.nan)
    skeleton = arrays.skeleton
    paired = {skeleton.index(node) for s in skeleton.symmetries for node in s.nodes}
    middle = [i for i in range(k) if i not in paired]
    if len(middle) < 2 or n < MIN_INSTANCES:
        return axis
    a, b = np.triu_indices(len(middle), 1)
    a, b = np.asarray(middle)[a], np.asarray(middle)[b]
    vectors = arrays.xy[:, b] - arrays.xy[:, a]  # (n, pairs, 2)
    lengths = np.hypot(vectors[..., 0], vectors[..., 1])
    common = np.isfinite(lengths).mean(axis=0) >= 0.5
    if not common.any():
        return axis
    with _quiet_nan():
        median = np.nanmedian(lengths, axis=0)
    candidates = np.flatnonzero(common & (median >= 0.5 * np.max(np.where(common, median, 0))))
    if len(candidates) == 1 or not skeleton.edges:
        return vectors[:, candidates[0]]
    edge_vectors = _edge_vectors(arrays)
    edge_angle = np.arctan2(edge_vectors[..., 1], edge_vectors[..., 0])  # (n, edges)
    pair_angle = np.arctan2(vectors[:, candidates, 1], vectors[:, candidates, 0])
    relative = np.exp(1j * (edge_angle[:, None, :] - pair_angle[:, :, None]))
    with _quiet_nan():
        steadiness = np.abs(np.nanmean(relative, axis=0))  # (candidates, edges), 1: rigid
        spread = np.nanmean(1.0 - steadiness, axis=1)
    return vectors[:, candidates[int(np.nanargmin(spread))]]


def _edge_vectors(arrays: PoseArrays) -> np.ndarray:
    """``(n, edges, 2)`` vectors from each edge's source to its destination (NaN: unplaced)."""
    skeleton = arrays.skeleton
    src = [skeleton.index(e.source) for e in skeleton.edges]
    dst = [skeleton.index(e.destination) for e in skeleton.edges]
    return arrays.xy[:, dst] - arrays.xy[:, src]


def _swaps(arrays: PoseArrays, axis: np.ndarray) -> list[_Found]:
    """Left/right pairs on the side opposite to where the project puts them."""
    found: list[_Found] = []
    axis_length = np.hypot(axis[:, 0], axis[:, 1])
    names = arrays.skeleton.node_names
    for symmetry in arrays.skeleton.symmetries:
        i, j = sorted(arrays.skeleton.index(node) for node in symmetry.nodes)
        across = arrays.xy[:, j] - arrays.xy[:, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            sine = np.cross(across, axis) / (np.hypot(across[:, 0], across[:, 1]) * axis_length)
        apart = np.hypot(across[:, 0], across[:, 1])
        with _quiet_nan():
            usual_apart = np.nanmedian(apart) if np.isfinite(apart).any() else np.nan
        with np.errstate(invalid="ignore"):  # False where NaN
            judged = (np.abs(sine) >= SIDE_MIN_SINE) & (apart >= SIDE_MIN_APART * usual_apart)
        if judged.sum() < MIN_INSTANCES:
            continue
        usual = np.sign(np.median(sine[judged]))
        agree = float(np.mean(np.sign(sine[judged]) == usual))
        if agree < SIDE_AGREEMENT:
            continue  # the pair has no consistent side in this project
        for row in np.flatnonzero(judged & (np.sign(sine) == -usual)):
            reason = (f"{names[i]} and {names[j]} look swapped: they lie across the body axis "
                      f"the other way round from {np.floor(agree * 1000) / 10:.1f}% of the "
                      "project's instances")  # fmt: skip
            found.append(("swap", int(row), (names[i], names[j]),
                          abs(float(sine[row])) / SIDE_MIN_SINE, reason))  # fmt: skip
    return found


def _edges(arrays: PoseArrays, axis: np.ndarray) -> list[_Found]:
    """Nodes whose edges are far longer or shorter than usual, or point the wrong way.

    An edge that is off has two ends; the node blamed is the end with the larger share of its
    edges off (a misplaced thorax bends all ten of a fly's thorax edges, a misplaced head only
    its own), the edge's destination on a tie (the child, in skeletons drawn from a root).
    """
    skeleton = arrays.skeleton
    if not skeleton.edges or len(arrays) < MIN_INSTANCES:
        return []
    src = np.array([skeleton.index(e.source) for e in skeleton.edges])
    dst = np.array([skeleton.index(e.destination) for e in skeleton.edges])
    vectors = _edge_vectors(arrays)
    lengths = np.hypot(vectors[..., 0], vectors[..., 1])
    placed = np.isfinite(lengths)
    enough = placed.sum(axis=0) >= MIN_INSTANCES
    with _quiet_nan():
        median, spread = _robust(lengths)
    spread = np.maximum(spread, np.maximum(_MIN_LENGTH_SPREAD * median, 1.0))
    z_length = np.abs(lengths - median) / spread

    # Direction relative to the body axis, where there is one: circular median and spread.
    angle = np.degrees(np.arctan2(vectors[..., 1], vectors[..., 0]))
    angle -= np.degrees(np.arctan2(axis[:, 1], axis[:, 0]))[:, None]
    with _quiet_nan():
        centre = np.degrees(np.angle(np.nanmean(np.exp(1j * np.radians(angle)), axis=0)))
        turn = (angle - centre + 180.0) % 360.0 - 180.0
        turn_median, turn_spread = _robust(turn)
    turn = (turn - turn_median + 180.0) % 360.0 - 180.0
    z_angle = np.abs(turn) / np.maximum(turn_spread, _MIN_ANGLE_SPREAD)
    # Edges of the axis itself (and short, jittery edges) have no meaningful direction.
    z_angle = np.where(lengths > 0.25 * median, z_angle, np.nan)

    ratio = lengths / median
    with np.errstate(invalid="ignore"):
        far = (ratio > EDGE_RATIO) | (ratio < 1 / EDGE_RATIO**2)
        off_length = enough & (z_length > EDGE_Z) & far
        off_angle = enough & (z_angle > ANGLE_Z) & (np.abs(turn) > ANGLE_MIN) & ~off_length
    off = off_length | off_angle
    if not off.any():
        return []
    # Past both thresholds: scored by the plain one, which a user reads in the reason.
    with np.errstate(divide="ignore", invalid="ignore"):
        times = np.maximum(ratio / EDGE_RATIO, 1 / (np.maximum(ratio, 1e-3) * EDGE_RATIO**2))
    score = np.where(off_length, times, np.where(off_angle, np.abs(turn) / ANGLE_MIN, 0))

    # Share of each node's placed edges that are off, per instance.
    k = arrays.n_nodes
    degree, bad = np.zeros((len(arrays), k)), np.zeros((len(arrays), k))
    for ends in (src, dst):
        np.add.at(degree.T, ends, placed.T)
        np.add.at(bad.T, ends, off.T)
    share = bad / np.maximum(degree, 1)
    blamed = np.where(share[:, src] > share[:, dst], src, dst)  # (n, edges)

    found: list[_Found] = []
    names = skeleton.node_names
    rows, edges = np.nonzero(off)
    # One flag per (instance, node): the node's worst edge tells the reason.
    order = np.lexsort((-score[rows, edges], blamed[rows, edges], rows))
    seen: set[tuple[int, int]] = set()
    for row, edge in zip(rows[order], edges[order]):
        node = int(blamed[row, edge])
        if (row, node) in seen:
            continue
        seen.add((int(row), node))
        a, b = names[src[edge]], names[dst[edge]]
        if off_length[row, edge]:
            what = (f"{a}-{b} {lengths[row, edge]:.0f} px, usually {median[edge]:.0f} "
                    f"+- {spread[edge]:.0f} px")  # fmt: skip
        else:
            what = (f"{a}-{b} turned {turn[row, edge]:+.0f} degrees from its usual direction "
                    f"to the body axis (+- {max(turn_spread[edge], _MIN_ANGLE_SPREAD):.0f})")  # fmt: skip
        reason = f"{names[node]} is far from where its edges usually put it: {what}"
        found.append(("edge", int(row), (names[node],), float(score[row, edge]), reason))
    return found


def _duplicates(arrays: PoseArrays, size: float) -> list[_Found]:
    """Pairs of instances of one frame whose common nodes coincide: the later is flagged."""
    if not np.isfinite(size):
        return []
    tolerance = max(DUPLICATE_MIN_PX, DUPLICATE_FRACTION * size)
    keys, found = arrays.frame_keys, list[_Found]()
    position = _position_in_frame(arrays)
    for offset in range(1, int(position.max(initial=0)) + 1):
        later = np.flatnonzero(np.r_[np.zeros(offset, bool), keys[offset:] == keys[:-offset]])
        if not later.size:
            break
        earlier = later - offset
        gaps = np.hypot(*(arrays.xy[later] - arrays.xy[earlier]).transpose(2, 0, 1))
        with _quiet_nan():
            distance = np.nanmedian(gaps, axis=1)
        common = np.isfinite(gaps).sum(axis=1)
        with np.errstate(invalid="ignore"):
            hits = (common >= min(2, arrays.n_nodes)) & (distance < tolerance)
        for row, other, d, n in zip(later[hits], earlier[hits], distance[hits], common[hits]):
            reason = (f"lies on instance {position[other]}: their {n} common nodes are "
                      f"{d:.1f} px apart in the median (an animal is about {size:.0f} px): "
                      "one animal labelled twice?")  # fmt: skip
            found.append(("duplicate", int(row), (), 3.0 - float(d) / tolerance, reason))
    return found


def _outside(
    arrays: PoseArrays, sizes: Mapping[int, tuple[int, int] | None], size: float
) -> list[_Found]:
    """Visible nodes outside their frame (pixel centres are at integers: -0.5 is the edge)."""
    found: list[_Found] = []
    names = arrays.skeleton.node_names
    scale = size if np.isfinite(size) and size > 0 else 1.0
    for video, frame_shape in sizes.items():
        if frame_shape is None:
            continue
        height, width = frame_shape
        rows = arrays.video == video
        # Occluded points may lie outside (SLEAP keeps a point that left the frame, hidden).
        shown = np.where(arrays.visible[rows, :, None], arrays.xy[rows], np.nan)
        x, y = shown[..., 0], shown[..., 1]
        with np.errstate(invalid="ignore"):
            beyond = np.maximum.reduce([-0.5 - x, x - (width - 0.5), -0.5 - y, y - (height - 0.5)])
            out = beyond > 0
        for row, node in zip(*np.nonzero(out)):
            where = np.flatnonzero(rows)[row]
            reason = (f"{names[node]} at (x {x[row, node]:.0f}, y {y[row, node]:.0f}) is "
                      f"{beyond[row, node]:.0f} px outside the {width} x {height} image")  # fmt: skip
            found.append(("outside", int(where), (names[node],),
                          2.0 + float(beyond[row, node]) / scale, reason))  # fmt: skip
    return found
