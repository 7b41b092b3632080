"""Clean up tracked predictions along their tracks: drop excursions, fill short gaps, smooth.

A model looks at one frame at a time, so a node sometimes lands on a neighbouring animal (or
on nothing) for a frame or two and comes back, and a node it misses leaves a hole. Once
instances are tracked, each node of each track is a trajectory over frames, and both are easy
to see there. ``refine_tracks`` works track by track on a dense ``(frames, nodes, 2)`` array
(NaN where a point or the whole instance is absent), vectorised over frames and nodes:

1. *Excursions.* Each point is compared with the median of its node over a centred window of
   ``window`` frames, the point itself included (with 5 frames, a run of up to two wrong
   frames is outvoted by three right ones), and also, in the same way, with its node's place
   relative to the animal (the median of all its nodes, frame by frame). A point is dropped
   only when it is far from both: a whole animal moving fast moves its nodes together and
   stays where it belongs relative to itself (a track's first and last frames have a
   one-sided window, which a fast animal's own trajectory fails), and a node that leaves its
   body without leaving its trajectory was not a jump. "Far" is ``max_jump_px``, by default
   ``jump_fraction`` of the track's median bounding-box diagonal: a node that jumps onto
   another animal lands at least about half a body away, while a correct node moves much less
   than that against its neighbours in 2 frames, whatever the video's scale.
2. *Gaps.* A node missing (or dropped) for at most ``max_gap`` frames between two kept points
   is interpolated linearly between them, with a score of ``fill_score`` times the lower of
   theirs, so that filled points can be told apart (and weigh little in smoothing). Only
   frames where the track has an instance are filled: no instance is invented.
3. *Smoothing* (``smooth`` frames, off by default): each point becomes the score-weighted mean
   of its node over a centred window, so confident points pull harder than doubtful ones.

User instances, untracked rows and frames without the track are left as they are.
"""

from __future__ import annotations

import warnings

import attrs
import numpy as np

from napari_pose.core.pose_arrays import PoseArrays


def _odd_window(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 3 or value % 2 == 0:
        raise ValueError(f"{attribute.name} must be an odd number of frames >= 3, got {value}")


def _smooth_window(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value != 0:
        _odd_window(instance, attribute, value)


@attrs.frozen
class RefineConfig:
    """Settings of ``refine_tracks`` (see the module notes for why these defaults).

    Attributes:
        window: Frames (odd) of the centred median a point is compared with.
        max_jump_px: Distance in frame pixels beyond which a point is an excursion (``None``:
            ``jump_fraction`` of each track's median bounding-box diagonal; set it for
            one-node skeletons, which have no extent).
        jump_fraction: The default ``max_jump_px`` as a fraction of the animal's size.
        max_gap: Longest run of missing frames of a node that is interpolated (0: none).
        fill_score: Score of an interpolated point, relative to the lower of its neighbours'.
        smooth: Frames (odd) of the score-weighted moving average; 0 switches it off.
    """

    window: int = attrs.field(default=5, validator=_odd_window)
    max_jump_px: float | None = attrs.field(
        default=None, validator=attrs.validators.optional(attrs.validators.gt(0))
    )
    jump_fraction: float = attrs.field(default=0.25, validator=attrs.validators.gt(0))
    max_gap: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    fill_score: float = attrs.field(
        default=0.5, validator=[attrs.validators.ge(0), attrs.validators.le(1)]
    )
    smooth: int = attrs.field(default=0, validator=_smooth_window)


def _windows(values: np.ndarray, window: int) -> np.ndarray:
    """``(T, ..., window)`` view of the centred windows along axis 0 (NaN beyond the ends)."""
    half = window // 2
    pad = [(half, half)] + [(0, 0)] * (values.ndim - 1)
    padded = np.pad(values, pad, constant_values=np.nan)
    return np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)


def _excursions(xy: np.ndarray, threshold: float, window: int) -> np.ndarray:
    """``(T, k)`` points of ``xy`` ``(T, k, 2)`` farther than ``threshold`` from both their
    node's windowed median and their node's windowed median place on the body."""

    def deviation(values: np.ndarray) -> np.ndarray:
        return np.linalg.norm(values - np.nanmedian(_windows(values, window), axis=-1), axis=-1)

    far = deviation(xy)
    if xy.shape[1] > 1:  # one node has no body to be placed on
        far = np.fmin(far, deviation(xy - np.nanmedian(xy, axis=1, keepdims=True)))
    return far > threshold


def _fill_gaps(xy: np.ndarray, score: np.ndarray, kept: np.ndarray, present: np.ndarray,
               config: RefineConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Linear interpolation of the short runs of not ``kept`` points in frames ``present``;
    returns the new ``xy`` and ``score``."""
    n_frames = len(xy)
    frames = np.broadcast_to(np.arange(n_frames)[:, None], kept.shape)
    before = np.maximum.accumulate(np.where(kept, frames, -1), axis=0)
    after = np.minimum.accumulate(np.where(kept, frames, n_frames)[::-1], axis=0)[::-1]
    filled = (
        ~kept & present[:, None] & (before >= 0) & (after < n_frames)
        & (after - before - 1 <= config.max_gap)
    )  # fmt: skip
    lo, hi = before.clip(0), after.clip(max=n_frames - 1)
    xy_lo = np.take_along_axis(xy, lo[..., None], axis=0)
    xy_hi = np.take_along_axis(xy, hi[..., None], axis=0)
    t = ((frames - lo) / np.maximum(hi - lo, 1))[..., None]
    xy = np.where(filled[..., None], xy_lo + t * (xy_hi - xy_lo), xy)
    low = np.fmin(np.take_along_axis(score, lo, axis=0), np.take_along_axis(score, hi, axis=0))
    score = np.where(filled, config.fill_score * low, score)
    return xy, score


def _smooth(xy: np.ndarray, score: np.ndarray, window: int) -> np.ndarray:
    """Score-weighted centred moving average of the points of ``xy`` ``(T, k, 2)``."""
    found = np.isfinite(xy[..., 0])
    weight = np.where(found, np.nan_to_num(score, nan=1.0).clip(min=1e-6), 0.0)
    total = _windows(np.where(found[..., None], xy * weight[..., None], 0.0), window)
    weights = _windows(weight, window)
    mean = np.nansum(total, axis=-1) / np.nansum(weights, axis=-1)[..., None]
    return np.where(found[..., None], mean, np.nan)


def _refine_track(xy: np.ndarray, score: np.ndarray, present: np.ndarray,
                  config: RefineConfig) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Steps 1-3 on one track's dense ``xy`` ``(T, k, 2)`` (NaN: not usable) and ``score``
    ``(T, k)``; ``present`` ``(T,)`` marks the frames where the track has an instance."""
    threshold = config.max_jump_px
    if threshold is None:
        extent = np.nanmax(xy, axis=1) - np.nanmin(xy, axis=1)
        threshold = config.jump_fraction * float(np.nanmedian(np.hypot(*extent.T)))
    kept = np.isfinite(xy[..., 0])
    if threshold > 0:  # NaN or 0: no point has an extent to compare with
        kept &= ~_excursions(xy, threshold, config.window)
    xy = np.where(kept[..., None], xy, np.nan)
    score = np.where(kept, score, np.nan)
    if config.max_gap > 0:
        xy, score = _fill_gaps(xy, score, kept, present, config)
    if config.smooth:
        xy = _smooth(xy, score, config.smooth)
    return xy, score


def refine_tracks(arrays: PoseArrays, config: RefineConfig | None = None) -> PoseArrays:
    """``arrays`` with the points of tracked predicted instances refined along their tracks
    (see the module notes); a new ``PoseArrays``, rows in the same order, ``arrays`` untouched.

    Dropped points become missing (NaN, not visible); filled ones visible, with a low score.
    Points that are not visible are treated as missing. Raises ``ValueError`` when a track
    holds two predicted instances in one frame.
    """
    config = config or RefineConfig()
    xy, visible, point_score = arrays.xy.copy(), arrays.visible.copy(), arrays.point_score.copy()
    refined = np.flatnonzero(arrays.predicted & (arrays.track >= 0))
    keys = np.stack([arrays.video[refined], arrays.track[refined]], axis=1)
    _, group, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    order = np.argsort(group.ravel(), kind="stable")
    tracks = np.split(refined[order], np.cumsum(counts)[:-1]) if len(refined) else []
    with warnings.catch_warnings():  # all-NaN windows and frames are expected
        warnings.simplefilter("ignore", RuntimeWarning)
        for rows in tracks:
            position = arrays.frame[rows] - arrays.frame[rows].min()
            if len(np.unique(position)) < len(rows):
                track = arrays.tracks[arrays.track[rows[0]]].name
                raise ValueError(f"track {track!r} has two predicted instances in one frame")
            dense_xy = np.full((position.max() + 1, arrays.n_nodes, 2), np.nan)
            dense_score = np.full(dense_xy.shape[:2], np.nan)
            present = np.zeros(len(dense_xy), bool)
            usable = visible[rows] & np.isfinite(xy[rows, :, 0])
            dense_xy[position] = np.where(usable[..., None], xy[rows], np.nan)
            dense_score[position] = np.where(usable, point_score[rows], np.nan)
            present[position] = True
            new_xy, new_score = _refine_track(dense_xy, dense_score, present, config)
            found = np.isfinite(new_xy[position, :, 0])
            changed = found | usable  # occluded points that stay missing keep their place
            xy[rows] = np.where(changed[..., None], new_xy[position], xy[rows])
            visible[rows] = found | (visible[rows] & ~usable)
            point_score[rows] = np.where(changed, new_score[position], point_score[rows])
    return attrs.evolve(arrays, xy=xy, visible=visible, point_score=point_score)
