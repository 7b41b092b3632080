"""Identity proofreading: edit the tracks of instances, and find the frames worth checking.

Trackers make a few kinds of mistake: two animals' identities swap (often when they touch), a
track breaks into two, a spurious track appears. Fixing them is a handful of edits on the
``track`` column of ``PoseArrays`` (swap from a frame on, reassign one instance, merge, delete,
rename), done here as pure vectorised functions so they are tested without a viewer and stay
fast on 100,000-frame prediction files. ``suspicion`` scores every frame by what usually marks
a mistake (a sudden jump, an animal appearing or vanishing, low confidence, animals touching),
so the user visits the few suspicious frames instead of watching the whole video.

Arrays are never modified in place: every edit returns new ``PoseArrays`` (``attrs.evolve``),
which is what lets the viewer keep the previous arrays as an undo step at no cost.
"""

from __future__ import annotations

import attrs
import numpy as np

from napari_pose.core.pose_arrays import PoseArrays

#: A frame's speed jump is flagged when a centroid moves this many times the video's median
#: frame-to-frame step: animals accelerate, but an identity swap teleports a track.
SPEED_JUMP_FLAG = 5.0
#: ``low_score`` above this (a score or tracking score under 0.5) is flagged.
LOW_SCORE_FLAG = 0.5
#: The criteria ``suspicion`` returns, in the order the widget describes them.
CRITERIA = ("speed_jump", "count_change", "low_score", "close")


def _frame_keys(arrays: PoseArrays) -> np.ndarray:
    """One integer per (video, frame, user/predicted): two instances of one kind on one frame
    must not share a track, while a user instance and the prediction it corrects may."""
    return (arrays.video.astype(np.int64) << 41) | (arrays.frame << 1) | arrays.predicted


def _check_track(arrays: PoseArrays, track: int) -> None:
    if not 0 <= track < len(arrays.tracks):
        raise ValueError(f"no track {track}: the arrays have {len(arrays.tracks)} tracks")


def _track_name(arrays: PoseArrays, track: int) -> str:
    return arrays.tracks[track].name or f"#{track}"


def swap_tracks(arrays: PoseArrays, a: int, b: int, from_frame: int, video: int = 0) -> PoseArrays:
    """Tracks ``a`` and ``b`` exchanged on every frame of ``video`` from ``from_frame`` on.

    This undoes a tracker's identity swap in one edit: frames before it keep their tracks.
    A track "swapped" with itself would change nothing while seeming done, so it is refused.
    """
    _check_track(arrays, a)
    _check_track(arrays, b)
    if a == b:
        raise ValueError(f"track {_track_name(arrays, a)!r} cannot be swapped with itself: "
                         "choose two different tracks")  # fmt: skip
    later = (arrays.video == video) & (arrays.frame >= from_frame)
    track = arrays.track.copy()
    track[later & (arrays.track == a)] = b
    track[later & (arrays.track == b)] = a
    return attrs.evolve(arrays, track=track)


def set_track(arrays: PoseArrays, row: int, track: int, onward: bool = False) -> PoseArrays:
    """Instance ``row`` given ``track`` (``-1``: none); with ``onward``, its old track's later
    instances in its video too (a swap from here on, for one animal).

    An instance of the same kind already holding ``track`` on one of those frames takes the
    old track instead, so no frame ever shows one animal twice.
    """
    if track != -1:
        _check_track(arrays, track)
    old = int(arrays.track[row])
    if track == old:
        return arrays
    moved = np.zeros(len(arrays), bool)
    moved[row] = True
    if onward and old >= 0:
        moved |= ((arrays.video == arrays.video[row]) & (arrays.track == old)
                  & (arrays.frame >= arrays.frame[row]))  # fmt: skip
    keys = _frame_keys(arrays)
    new = arrays.track.copy()
    if track >= 0:
        displaced = (arrays.track == track) & np.isin(keys, keys[moved]) & ~moved
        new[displaced] = old
    new[moved] = track
    return attrs.evolve(arrays, track=new)


def _without_track(arrays: PoseArrays, track_column: np.ndarray, track: int) -> PoseArrays:
    """The arrays with ``track`` gone from the track list (its rows untracked, indices above
    it shifted down so they still name the same ``Track`` objects)."""
    new = np.where(track_column == track, -1, track_column - (track_column > track))
    tracks = arrays.tracks[:track] + arrays.tracks[track + 1 :]
    return attrs.evolve(arrays, track=new.astype(np.int32), tracks=tracks)


def delete_track(arrays: PoseArrays, track: int) -> PoseArrays:
    """Track ``track`` removed: its instances become untracked (they are kept, not deleted)."""
    _check_track(arrays, track)
    return _without_track(arrays, arrays.track, track)


def merge_tracks(arrays: PoseArrays, keep: int, other: int) -> PoseArrays:
    """The instances of track ``other`` joined to ``keep``, and ``other`` removed.

    This mends a track the tracker broke in two. It refuses (``ValueError`` naming the frames)
    when both tracks hold an instance on one frame: those are two animals, not one.
    """
    _check_track(arrays, keep)
    _check_track(arrays, other)
    if keep == other:
        raise ValueError(f"track {_track_name(arrays, keep)!r} cannot be merged into itself: "
                         "choose two different tracks")  # fmt: skip
    keys = _frame_keys(arrays)
    both = np.intersect1d(keys[arrays.track == keep], keys[arrays.track == other])
    if len(both):
        frames = np.unique((both >> 1) & ((1 << 40) - 1))
        shown = ", ".join(map(str, frames[:10])) + (f" and {len(frames) - 10} more"
                                                    if len(frames) > 10 else "")  # fmt: skip
        raise ValueError(
            f"tracks {_track_name(arrays, keep)!r} and {_track_name(arrays, other)!r} both have "
            f"an instance on {len(frames)} frame(s): {shown}"
        )
    return _without_track(arrays, np.where(arrays.track == other, keep, arrays.track), other)


def rename_track(arrays: PoseArrays, track: int, name: str) -> PoseArrays:
    """Track ``track`` renamed, as a new ``Track`` object in a new list.

    A new object rather than a changed one, so arrays (and undo steps) that still hold the old
    list keep the old name. Names must stay unique: layers and saved files know tracks by name.
    """
    _check_track(arrays, track)
    name = name.strip()
    if not name:
        raise ValueError("a track needs a name")
    if any(t.name == name for i, t in enumerate(arrays.tracks) if i != track):
        raise ValueError(f"there is already a track named {name!r}")
    tracks = list(arrays.tracks)
    tracks[track] = attrs.evolve(tracks[track], name=name)
    return attrs.evolve(arrays, tracks=tracks)


# --------------------------------------------------------------------------- suspicion


def centroids(arrays: PoseArrays) -> np.ndarray:
    """``(n, 2)`` mean of each instance's placed points (NaN for an instance with none)."""
    placed = np.isfinite(arrays.xy[..., 0])
    counts = placed.sum(axis=1)[:, None]
    total = np.where(placed[..., None], arrays.xy, 0.0).sum(axis=1)
    return np.divide(total, counts, out=np.full(total.shape, np.nan), where=counts > 0)


def instance_sizes(arrays: PoseArrays) -> np.ndarray:
    """``(n,)`` diagonal of each instance's bounding box (NaN for an instance with no point)."""
    placed = np.isfinite(arrays.xy[..., 0])
    low = np.where(placed[..., None], arrays.xy, np.inf).min(axis=1)
    high = np.where(placed[..., None], arrays.xy, -np.inf).max(axis=1)
    size = np.linalg.norm(high - low, axis=1)
    return np.where(placed.any(axis=1), size, np.nan)


def suspicion(
    arrays: PoseArrays, video: int = 0, min_distance: float | None = None
) -> dict[str, np.ndarray]:
    """Per-frame scores (frames ``0..last`` of ``video``) of what usually marks a tracking error.

    * ``speed_jump``: the largest step of an instance's centroid from its track's centroid on
      the previous frame, in units of the median such step over the video (a swap makes a
      step as long as the distance between the animals);
    * ``count_change``: 1 where the number of instances differs from the previous frame (an
      animal lost or a spurious detection, where tracks often go wrong);
    * ``low_score``: ``1 -`` the lowest instance score or tracking score of the frame's
      predictions, clipped to [0, 1] (the model or tracker was unsure);
    * ``close``: 1 where two instances' centroids are closer than ``min_distance`` (default:
      half the median instance size): touching animals are where identities swap.

    Pass one kind of instance (one layer: predictions or user labels); mixing both would
    count every corrected prediction twice.
    """
    arrays = arrays.select(arrays.video == video)
    n_frames = int(arrays.frame.max(initial=-1)) + 1
    frame = arrays.frame
    centre = centroids(arrays)

    # Speed: consecutive rows of one track (sorted by track, frame) one frame apart.
    order = np.lexsort((frame, arrays.track))
    track, f, c = arrays.track[order], frame[order], centre[order]
    step = (track[1:] == track[:-1]) & (track[1:] >= 0) & (f[1:] - f[:-1] == 1)
    jumps = np.linalg.norm(c[1:] - c[:-1], axis=1)
    step &= np.isfinite(jumps)
    speed = np.zeros(n_frames)
    if step.any():
        median = np.median(jumps[step])
        if median > 0:
            np.maximum.at(speed, f[1:][step], jumps[step] / median)

    counts = np.bincount(frame, minlength=n_frames)
    count_change = np.zeros(n_frames)
    count_change[1:] = counts[1:] != counts[:-1]

    # SLEAP writes tracking score 0 for "none" (untracked, or tracks set by hand): not a doubt.
    tracking = np.where(arrays.tracking_score > 0, arrays.tracking_score, np.nan)
    score = np.fmin(arrays.score, tracking).astype(float)
    scored = arrays.predicted & np.isfinite(score)
    lowest = np.full(n_frames, np.inf)
    np.minimum.at(lowest, frame[scored], score[scored])
    low_score = np.where(np.isfinite(lowest), np.clip(1 - lowest, 0, 1), 0.0)

    if min_distance is None:
        sizes = instance_sizes(arrays)
        min_distance = float(np.nanmedian(sizes)) / 2 if np.isfinite(sizes).any() else 0.0
    return {
        "speed_jump": speed,
        "count_change": count_change,
        "low_score": low_score,
        "close": _close_frames(frame, centre, n_frames, min_distance),
    }


def _close_frames(frame: np.ndarray, centre: np.ndarray, n_frames: int,
                  min_distance: float) -> np.ndarray:  # fmt: skip
    """1 on frames where two centroids lie closer than ``min_distance``, else 0.

    Instances are packed into a ``(frames, most instances on a frame, 2)`` block padded with
    NaN, so every pair of every frame is compared at once.
    """
    close = np.zeros(n_frames)
    ok = np.isfinite(centre[:, 0])
    frame, centre = frame[ok], centre[ok]
    if not len(frame):
        return close
    order = np.argsort(frame, kind="stable")
    frame, centre = frame[order], centre[order]
    shown, first, counts = np.unique(frame, return_index=True, return_counts=True)
    if counts.max() < 2:
        return close
    slot = np.arange(len(frame)) - np.repeat(first, counts)
    block = np.full((len(shown), counts.max(), 2), np.nan)
    block[np.repeat(np.arange(len(shown)), counts), slot] = centre
    distance = np.linalg.norm(block[:, :, None] - block[:, None], axis=-1)
    distance[:, np.arange(counts.max()), np.arange(counts.max())] = np.inf
    close[shown] = (np.nan_to_num(distance, nan=np.inf) < min_distance).any(axis=(1, 2))
    return close


def flags(scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per criterion of ``suspicion``, the frames where it passes its threshold (booleans)."""
    return {
        "speed_jump": scores["speed_jump"] > SPEED_JUMP_FLAG,
        "count_change": scores["count_change"] > 0,
        "low_score": scores["low_score"] > LOW_SCORE_FLAG,
        "close": scores["close"] > 0,
    }


def flagged(scores: dict[str, np.ndarray]) -> np.ndarray:
    """Per frame, whether any criterion of ``suspicion`` passes its threshold."""
    return np.logical_or.reduce(list(flags(scores).values()))


def combined(scores: dict[str, np.ndarray]) -> np.ndarray:
    """One suspicion per frame: the criteria summed, speed counted in units of its flag.

    A swap's jump is tens of times the median step and so outranks frames that are only close
    or change count (1 each), which are common and mostly harmless.
    """
    return (scores["speed_jump"] / SPEED_JUMP_FLAG + scores["count_change"]
            + scores["low_score"] + scores["close"])  # fmt: skip


def rank_frames(scores: dict[str, np.ndarray], top: int | None = None) -> np.ndarray:
    """Frames with any criterion of ``scores`` flagged, most suspicious first (``top`` of them).

    Ties keep frame order, so equally suspicious frames are visited from the start.
    """
    total = combined(scores)
    frames = np.flatnonzero(flagged(scores))
    frames = frames[np.argsort(-total[frames], kind="stable")]
    return frames if top is None else frames[:top]


def suspicious_frames(arrays: PoseArrays, video: int = 0, top: int | None = None) -> np.ndarray:
    """Frames of ``video`` worth checking, most suspicious first: ``rank_frames`` of
    ``suspicion``, what the widget's *next suspicious frame* walks through."""
    return rank_frames(suspicion(arrays, video), top)
