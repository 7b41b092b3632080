"""Frame suggestions: which frames of a video a user should label next.

A pose model learns most from labelled frames that differ from each other, so besides random
and evenly spaced frames (SLEAP's "random" and "stride" methods) this module offers visually
diverse frames, as SLEAP's "image features" method does: sample the video, shrink every sampled
frame to a small gray thumbnail, project the thumbnails onto their principal components, cluster
them with k-means and suggest from each cluster the frame closest to its centre. Frames that
look alike (an animal resting for a minute) then cost one suggestion instead of dozens.

Reading frames dominates the cost, so ``iter_diverse_frames`` reads the samples in increasing
order (forward decoding, no seeks back) and is a generator that reports progress after every
frame: a napari ``thread_worker`` can show a progress bar and cancel between frames. The
numerical part (a randomized SVD and k-means on at most a few thousand thumbnails) takes well
under a second.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable

import numpy as np
import sleap_io as sio

from napari_pose.core.video import FrameReader

# BT.601 luma, the weights FFmpeg uses to turn colour video into gray.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# Extra random directions and power iterations of the randomized SVD: enough for the leading
# components of image data, whose spectrum decays quickly, to be accurate to a few percent.
_OVERSAMPLE = 10
_POWER_ITERATIONS = 2
_KMEANS_MAX_ITER = 100
_KMEANS_RESTARTS = 8


def _allowed_frames(n_frames: int, exclude: Iterable[int]) -> np.ndarray:
    """Frame indices ``0 .. n_frames - 1`` not in ``exclude`` (out-of-range entries ignored)."""
    if n_frames < 0:
        raise ValueError(f"n_frames must be non-negative, not {n_frames}")
    return np.setdiff1d(np.arange(n_frames), np.fromiter(exclude, dtype=np.int64))


def _check_k(k: int) -> None:
    if k < 0:
        raise ValueError(f"the number of frames to suggest must be non-negative, not {k}")


def random_frames(n_frames: int, k: int, seed: int = 0, exclude: Iterable[int] = ()) -> np.ndarray:
    """``k`` distinct frames drawn uniformly at random from those not excluded, sorted.

    Fewer than ``k`` come back only when fewer frames are left after the exclusion. The same
    seed always gives the same frames, so a suggestion list can be reproduced.
    """
    _check_k(k)
    allowed = _allowed_frames(n_frames, exclude)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(allowed, size=min(k, allowed.size), replace=False))


def strided_frames(n_frames: int, k: int, exclude: Iterable[int] = ()) -> np.ndarray:
    """``k`` frames evenly spaced over those not excluded, from the first to the last, sorted.

    Spacing is over the remaining frames, so excluding a run of frames (already labelled)
    does not leave a hole in the suggestions. Fewer than ``k`` come back only when fewer frames
    are left.
    """
    _check_k(k)
    allowed = _allowed_frames(n_frames, exclude)
    if k >= allowed.size:
        return allowed
    # With k <= size the positions are at least 1 apart, so rounding keeps them distinct.
    return allowed[np.linspace(0, allowed.size - 1, k).round().astype(np.int64)]


def _bins(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Start and length of ``n_out`` runs of pixels, as equal as whole pixels allow.

    Averaging each run (``np.add.reduceat``) is a box filter: anti-aliased, and exact block
    means when ``n_out`` divides ``n_in``. It deliberately avoids an area-resampling matrix
    product: multithreaded BLAS threads spin-wait against the video decoder's threads, which
    made reading three to five times slower on two busy cores. When ``n_out > n_in``, runs
    repeat a pixel (length 1 each).
    """
    starts = np.minimum(np.linspace(0, n_in, n_out + 1)[:-1].round().astype(np.intp), n_in - 1)
    return starts, np.maximum(np.diff(starts, append=n_in), 1)


def _thumbnail(
    frame: np.ndarray, rows: tuple[np.ndarray, np.ndarray], cols: tuple[np.ndarray, np.ndarray]
) -> np.ndarray:
    """A frame as a flattened gray thumbnail, one pixel per run of ``rows`` x ``cols``.

    Colour becomes gray after shrinking, where it costs nothing (luma weights sum to one, so
    the order does not matter).
    """
    (row_starts, row_counts), (col_starts, col_counts) = rows, cols
    sums = np.add.reduceat(frame, row_starts, axis=0, dtype=np.float32)
    sums = np.add.reduceat(sums, col_starts, axis=1)
    if sums.ndim == 3:
        sums = (sums * _LUMA).sum(axis=-1)
    return (sums / np.outer(row_counts, col_counts)).ravel()


def _principal_scores(
    features: np.ndarray, n_components: int, rng: np.random.Generator
) -> np.ndarray:
    """Coordinates of centred ``features`` rows on their leading principal components.

    A randomized SVD (Halko et al. 2011): a full SVD of 1000 x 4096 thumbnails takes seconds,
    while projecting onto a few dozen random directions, refined by power iterations, takes a
    fraction of that and finds the same leading components.
    """
    centred = features - features.mean(axis=0)
    rank = min(n_components + _OVERSAMPLE, *centred.shape)
    basis = centred @ rng.standard_normal((centred.shape[1], rank), dtype=np.float32)
    for _ in range(_POWER_ITERATIONS):
        basis, _ = np.linalg.qr(basis)
        basis = centred @ (centred.T @ basis)
    basis, _ = np.linalg.qr(basis)
    u, s, _ = np.linalg.svd(basis.T @ centred, full_matrices=False)
    n = min(n_components, rank)
    return ((basis @ u[:, :n]) * s[:n]).astype(np.float64)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """``(len(points), len(centres))`` squared Euclidean distances, clipped at 0 (rounding)."""
    d2 = (points**2).sum(1)[:, None] - 2 * points @ centres.T + (centres**2).sum(1)[None, :]
    return np.maximum(d2, 0)


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Cluster labels of ``points``: the best of several k-means runs.

    One k-means++ seeding now and then puts two seeds in one tight group and never recovers
    (Lloyd's iterations only find a local optimum), leaving two distinct scenes merged.
    Keeping the run with the smallest within-cluster sum of squares over a few seedings makes
    that vanishingly rare, for a cost that is negligible next to reading the frames.
    """
    runs = [_lloyd(points, _kmeans_plus_plus(points, k, rng)) for _ in range(_KMEANS_RESTARTS)]
    return min(runs, key=lambda run: run[1])[0]


def _kmeans_plus_plus(points: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` initial centres, each drawn with probability proportional to squared distance
    from the centres already drawn (Arthur & Vassilvitskii 2007)."""
    centres = np.empty((k, points.shape[1]))
    centres[0] = points[rng.integers(len(points))]
    d2 = _squared_distances(points, centres[:1])[:, 0]
    for j in range(1, k):
        total = d2.sum()
        pick = rng.choice(len(points), p=d2 / total) if total > 0 else rng.integers(len(points))
        centres[j] = points[pick]
        d2 = np.minimum(d2, _squared_distances(points, centres[j : j + 1])[:, 0])
    return centres


def _lloyd(points: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, float]:
    """Lloyd's iterations from ``centres``: the labels and their within-cluster sum of squares.

    A cluster left empty is moved to the point farthest from its own centre, so every cluster
    keeps at least one point unless points coincide (a static video).
    """
    k = len(centres)
    labels = np.full(len(points), -1)
    for _ in range(_KMEANS_MAX_ITER):
        distances = _squared_distances(points, centres)
        new_labels = distances.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros_like(centres)
        np.add.at(sums, labels, points)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled, None]
        empty = np.flatnonzero(~filled)
        if empty.size:
            own = distances[np.arange(len(points)), labels]
            centres[empty] = points[np.argsort(own)[::-1][: empty.size]]
    return labels, float(distances[np.arange(len(points)), labels].sum())


def _representatives(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Positions in ``points`` of ``k`` distinct representatives of the clusters.

    Each non-empty cluster gives its member nearest its mean. Should clusters be missing
    (coincident points), the rest are filled by farthest-point selection, so a near-static
    video still gets ``k`` frames spread as far apart as its images allow.
    """
    ids = np.arange(k)
    members = labels[:, None] == ids
    counts = members.sum(axis=0)
    centres = (members.T @ points) / np.maximum(counts, 1)[:, None]
    distances = np.where(members, _squared_distances(points, centres), np.inf)
    chosen = list(distances.argmin(axis=0)[counts > 0])
    nearest = _squared_distances(points, points[chosen]).min(axis=1)
    while len(chosen) < k:
        pick = int(nearest.argmax())
        chosen.append(pick)
        nearest = np.minimum(nearest, _squared_distances(points, points[pick : pick + 1])[:, 0])
    return np.asarray(chosen)


def iter_diverse_frames(
    reader: FrameReader,
    k: int,
    *,
    max_samples: int = 1000,
    size: int = 64,
    n_components: int = 32,
    seed: int = 0,
    exclude: Iterable[int] = (),
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Choose ``k`` visually diverse frames, yielding ``(frames read, frames to read)``.

    Up to ``max_samples`` frames evenly spaced over the frames not in ``exclude`` are read in
    increasing order, shrunk to ``size x size`` gray thumbnails (the aspect ratio is not kept:
    thumbnails only need to be comparable with each other), reduced to ``n_components``
    principal components and clustered into ``k`` groups; the frame nearest each group's
    centre is suggested. The generator's return value (``StopIteration.value``) holds the
    sorted frame indices; ``diverse_frames`` runs it to the end. The same arguments always
    give the same frames. Nothing is read, and nothing yielded, when ``k`` is 0 or the sample
    would not have more than ``k`` frames: all candidate frames are then returned.

    Args:
        reader: Any ``FrameReader`` (``open_video``); only ``shape`` and ``reader[i]`` are used.
        k: Number of frames to suggest.
        max_samples: Frames read and clustered; more resolves rarer scenes, at the cost of
            reading time, which dominates the run.
        size: Thumbnail side in pixels: enough for the layout of animals and arena, coarse
            enough to average out pixel noise.
        n_components: Principal components kept for clustering.
        seed: Seed of the randomized SVD and k-means++ seeding.
        exclude: Frames never to suggest, such as those already labelled.
    """
    _check_k(k)
    candidates = strided_frames(reader.shape[0], max_samples, exclude)
    if candidates.size <= k or k == 0:
        return candidates[:k]
    rows, cols = _bins(reader.shape[1], size), _bins(reader.shape[2], size)
    features = np.empty((candidates.size, size * size), dtype=np.float32)
    total = int(candidates.size)
    yield 0, total
    for done, index in enumerate(candidates, start=1):
        features[done - 1] = _thumbnail(reader[int(index)], rows, cols)
        yield done, total
    rng = np.random.default_rng(seed)
    points = _principal_scores(features, n_components, rng)
    chosen = _representatives(points, _kmeans(points, k, rng), k)
    return np.sort(candidates[chosen])


def diverse_frames(
    reader: FrameReader,
    k: int,
    *,
    max_samples: int = 1000,
    size: int = 64,
    n_components: int = 32,
    seed: int = 0,
    exclude: Iterable[int] = (),
) -> np.ndarray:
    """``iter_diverse_frames`` run to completion, for callers that need no progress."""
    steps = iter_diverse_frames(
        reader,
        k,
        max_samples=max_samples,
        size=size,
        n_components=n_components,
        seed=seed,
        exclude=exclude,
    )
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value


def to_suggestions(indices: Iterable[int], video: sio.Video) -> list[sio.SuggestionFrame]:
    """One ``SuggestionFrame`` of ``video`` per frame index, in the order given."""
    return [sio.SuggestionFrame(video=video, frame_idx=int(i)) for i in indices]


def merge_suggestions(
    labels: sio.Labels, new: Iterable[sio.SuggestionFrame]
) -> list[sio.SuggestionFrame]:
    """Add ``new`` suggestions to ``labels``, skipping frames already suggested.

    A frame is the same when its video is the same object (as sleap-io matches videos when
    saving) and its index is equal. Afterwards ``labels.suggestions`` is ordered by video (in
    the order of ``labels.videos``) and frame, so the list reads as the user steps through
    it. Returns the suggestions actually added.

    Raises:
        ValueError: A suggestion's video is not one of ``labels.videos``; saving would fail.
    """
    position = {id(video): i for i, video in enumerate(labels.videos)}
    seen = {(id(s.video), s.frame_idx) for s in labels.suggestions}
    added = []
    for suggestion in new:
        if id(suggestion.video) not in position:
            raise ValueError(
                f"suggested frame {suggestion.frame_idx} is of a video not in the labels: "
                f"{suggestion.video.filename}"
            )
        key = (id(suggestion.video), suggestion.frame_idx)
        if key not in seen:
            seen.add(key)
            added.append(suggestion)
    labels.suggestions = sorted(
        [*labels.suggestions, *added],
        key=lambda s: (position.get(id(s.video), len(position)), s.frame_idx),
    )
    return added
