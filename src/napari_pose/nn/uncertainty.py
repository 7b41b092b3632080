"""Frames to label next, chosen by how unsure a trained model is of them.

A model learns most from labels on frames it gets wrong, and it cannot say where it is wrong,
but it can say where it is unsure. ``rank_frames`` poses a sample of a video's unlabelled frames
and scores each with four signals, every one a way a wrong pose shows without a label:

- **confidence**: low confidence-map peaks. Per instance, the mean over nodes of ``1 - peak``
  (a node not found counts as a peak of 0), so it holds both the point scores and the
  instance score (their mean); the frame takes its least sure instance among the usual
  number of animals (extra detections are the count signal's business). A frame with no
  animal at all scores 1.
- **disagreement**: the frame is posed as it is and turned about its centre (by the rotation
  the model trained with, at most 180 degrees: a view it knows), the turned pose is mapped
  back and the two are matched animal to animal (Hungarian, as ``pseudo.agree`` does); the
  signal is the median distance between matched nodes, in frame pixels. An error that
  depends on how the animal lies in the frame does not survive the turn. Animals found in
  one view only count as infinitely far apart; a frame where neither view finds one has no
  opinion (NaN).
- **count**: animals found (instance score at least ``COUNT_SCORE``) differing from the
  model's usual count (the most its training labels held, ``Predictor.max_instances``) or
  from the median count of the neighbouring samples: ``max`` of the two differences.
- **jump**: for consecutive samples (no more than twice the usual sampling gap apart), the
  animals of the two are matched and the largest node displacement is divided by the animal's
  size (bounding box diagonal); each frame takes the mean of its jumps to the previous and
  next sample. A node that jumps is a swap or a misdetection in one of the two frames; the
  frame that jumps from both its neighbours is the likelier culprit, and ranks above them.

**Combining.** The signals have different units and scales (peak values, pixels, animals,
body lengths), so each is rank-normalised over the candidates: ``(rank - 1) / (n - 1)``
with ties given their lowest rank, so frames where a signal is 0 (most frames, for the count)
all get 0 from it, and only the order of frames matters, never the signal's scale. Values
below a signal's floor (``FLOORS``: a pixel of disagreement, a tenth of a body of jump) are 0
first, so differences too small to mean anything do not rank. The score
is the weighted mean of the ranks a frame has (NaN signals left out), with ``WEIGHTS``: equal,
because no measurement yet says one signal finds worse frames than another. The reason shown
for a frame names every signal whose rank is at least ``REASON_RANK``, most telling first, or
else its highest-ranked one.

**Diversity.** Twenty frames from one second of video teach little more than one: the best
frames are taken greedily, each at least ``spacing`` frames (default ``len(video) / (4 n)``)
from those already taken.

**Cost.** Frames are decoded in increasing order (forward decoding, no seeks back, as
``core.suggestions`` reads), each is posed twice (two model passes per frame), batches run
through ``Predictor.predict``; the generator yields after every batch, so a napari worker
shows progress and a cancel takes effect before the next batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Generator, Iterable, Sequence
from pathlib import Path
from typing import Protocol

import attrs
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from napari_pose.core.stacks import to_uint8
from napari_pose.core.suggestions import strided_frames
from napari_pose.nn.augment import transform_points, warp
from napari_pose.nn.inference import PredictConfig, Predictor
from napari_pose.nn.predict import FramePrediction

#: Signal weights of the combined score (see the module notes).
WEIGHTS = {"confidence": 1.0, "disagreement": 1.0, "count": 1.0, "jump": 1.0}
#: Values at or below which a signal says nothing (set to 0 before ranking): disagreement
#: of a pixel is about a label's own error, a jump of a tenth of the animal is ordinary
#: motion between samples. Without a floor, ranking would put tiny differences on top when
#: every frame is fine.
FLOORS = {"confidence": 0.0, "disagreement": 1.0, "count": 0.0, "jump": 0.1}
#: Instances scoring at least this count as animals for the count signal.
COUNT_SCORE = 0.2
#: Signals whose rank is at least this are named in a frame's reason.
REASON_RANK = 0.9
#: Samples either side whose median count is the neighbours' count.
NEIGHBOURS = 2
#: The default sample of unlabelled frames.
MAX_SAMPLES = 500
#: Turn of the second view when the model trained without rotations (a small one it may
#: still know).
DEFAULT_TURN = 20.0


class FramePredictor(Protocol):
    """What ``rank_frames`` needs of a model: a ``Predictor`` or a stand-in for tests."""

    @property
    def channels(self) -> int: ...

    @property
    def max_instances(self) -> int: ...

    def predict(self, frames: np.ndarray) -> list[FramePrediction]: ...


class Frames(Protocol):
    """Frames read one at a time: a ``FrameReader`` (``open_video``) or ``PlaneFrames``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


@attrs.frozen
class Suggestion:
    """A frame to label, how unsure the model is of it (0-1, higher first) and why."""

    frame: int
    score: float
    reason: str


@attrs.frozen
class Signals:
    """Each signal's raw value for every candidate frame (``(n,)`` arrays, NaN: no opinion),
    with what a reason names: the least sure instance's median point score, the plain and
    neighbour counts, and the frame each jump came from."""

    frames: np.ndarray
    confidence: np.ndarray
    median_score: np.ndarray
    disagreement: np.ndarray
    count: np.ndarray
    neighbour_count: np.ndarray
    jump: np.ndarray
    jump_px: np.ndarray
    jump_from: np.ndarray


# ---------------------------------------------------------------------------- signals
def confidence(prediction: FramePrediction, usual: int) -> tuple[float, float]:
    """``(1 - peak)`` averaged over nodes, of the least sure of the best ``usual`` instances,
    and that instance's median point score (missing nodes 0); ``(1, 0)`` with no animal."""
    scores = np.nan_to_num(prediction.point_scores[: max(usual, 1)], nan=0.0)
    if len(scores) == 0:
        return 1.0, 0.0
    unsure = (1.0 - scores).mean(axis=1)
    worst = int(unsure.argmax())
    return float(unsure[worst]), float(np.median(scores[worst]))


def _match(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Instances of ``first`` ``(n, k, 2)`` and ``second`` ``(m, k, 2)`` matched one to one by
    the mean distance of the nodes both found; returns rows, columns and the matched pairs'
    node distances ``(p, k)`` (NaN where either missed the node). Pairs with no node in common
    are left out."""
    distance = np.linalg.norm(first[:, None] - second[None], axis=-1)  # (n, m, k)
    common = np.isfinite(distance)
    mean = np.where(common, distance, 0).sum(-1) / np.maximum(common.sum(-1), 1)
    if distance.size == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty((0, first.shape[1]))
    rows, cols = linear_sum_assignment(np.where(common.any(-1), mean, 1e9))
    real = common[rows, cols].any(-1)
    rows, cols = rows[real], cols[real]
    return rows, cols, distance[rows, cols]


def disagreement(first: FramePrediction, second: FramePrediction) -> float:
    """Median distance (pixels) between the matched nodes of two poses of one frame; ``inf``
    when animals were found but none matched, NaN when neither pose found any."""
    if len(first.points) == 0 and len(second.points) == 0:
        return math.nan
    _, _, distance = _match(first.points, second.points)
    found = distance[np.isfinite(distance)]
    return float(np.median(found)) if found.size else math.inf


def animal_count(prediction: FramePrediction, min_score: float = COUNT_SCORE) -> int:
    """Animals found: instances scoring at least ``min_score``."""
    return int((prediction.scores >= min_score).sum())


def neighbour_counts(counts: np.ndarray, near: np.ndarray, reach: int = NEIGHBOURS) -> np.ndarray:
    """Median count of up to ``reach`` samples either side of each (``near[i]``: whether
    samples ``i`` and ``i + 1`` are close enough to be neighbours); NaN without any."""
    n = len(counts)
    segment = np.concatenate([[0], np.cumsum(~np.asarray(near, bool))])  # runs of neighbours
    offsets = np.array([d for d in range(-reach, reach + 1) if d != 0])
    others = np.arange(n)[:, None] + offsets  # (n, 2 * reach) candidate samples
    inside = (others >= 0) & (others < n)
    others = others.clip(0, max(n - 1, 0))
    same = inside & (segment[others] == segment[:, None])
    values = np.where(same, np.asarray(counts, float)[others], np.nan)
    with warnings.catch_warnings():  # a sample without neighbours: NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(values, axis=1) if n else np.full(0, np.nan)


def count_surprise(counts: np.ndarray, usual: int, neighbours: np.ndarray) -> np.ndarray:
    """How far each count is from the usual count or the neighbours' (the larger)."""
    from_usual = np.abs(counts - usual).astype(float)
    from_neighbours = np.abs(counts - np.where(np.isnan(neighbours), counts, neighbours))
    return np.maximum(from_usual, from_neighbours)


def jump(first: FramePrediction, second: FramePrediction) -> tuple[float, float]:
    """Largest node displacement between the matched animals of two nearby frames, divided
    by the animal's size, and in pixels; NaN when no animal matches."""
    rows, _, distance = _match(first.points, second.points)
    if len(rows) == 0 or not np.isfinite(distance).any():
        return math.nan, math.nan
    points = first.points[rows]
    visible = np.isfinite(points).all(-1, keepdims=True)
    low = np.where(visible, points, np.inf).min(-2)
    high = np.where(visible, points, -np.inf).max(-2)
    size = np.linalg.norm(high - low, axis=-1)  # (p,)
    largest = np.nanmax(np.where(np.isfinite(distance), distance, -np.inf), axis=-1)
    relative = largest / np.maximum(size, 1.0)
    worst = int(np.nanargmax(relative))
    return float(relative[worst]), float(largest[worst])


def signals(frames: np.ndarray, plain: Sequence[FramePrediction],
            turned: Sequence[FramePrediction], usual: int) -> Signals:  # fmt: skip
    """Every signal of candidate ``frames`` (sorted) from their poses as they are (``plain``)
    and turned and mapped back (``turned``)."""
    frames = np.asarray(frames, np.int64)
    n = len(frames)
    conf = np.array([confidence(p, usual) for p in plain], float).reshape(n, 2)
    disagree = np.array([disagreement(a, b) for a, b in zip(plain, turned, strict=True)], float)
    counts = np.array([animal_count(p) for p in plain], np.int64)
    gaps = np.diff(frames)
    near = gaps <= 2 * (np.median(gaps) if len(gaps) else 1)
    neighbours = neighbour_counts(counts, near)
    jumps = np.full(n, np.nan)
    jump_px = np.full(n, np.nan)
    jump_from = np.full(n, -1, np.int64)
    seen: list[list[tuple[float, float, int]]] = [[] for _ in range(n)]
    for i in map(int, np.flatnonzero(near)):
        relative, px = jump(plain[i], plain[i + 1])
        if np.isfinite(relative):
            seen[i].append((relative, px, int(frames[i + 1])))
            seen[i + 1].append((relative, px, int(frames[i])))
    for i, found in enumerate(seen):
        if found:  # the mean: a frame that jumps from both neighbours is the likely culprit
            jumps[i] = float(np.mean([relative for relative, _, _ in found]))
            _, jump_px[i], jump_from[i] = max(found)
    return Signals(frames=frames, confidence=conf[:, 0], median_score=conf[:, 1],
                   disagreement=disagree, count=counts, neighbour_count=neighbours,
                   jump=jumps, jump_px=jump_px, jump_from=jump_from)  # fmt: skip


def rank_normalise(values: np.ndarray) -> np.ndarray:
    """``(rank - 1) / (n - 1)`` over the non-NaN values, ties at their lowest rank (so a
    signal that is 0 for most frames gives them all 0); NaN stays NaN; ``inf`` ranks top."""
    values = np.asarray(values, float)
    out = np.full(values.shape, np.nan)
    known = ~np.isnan(values)
    if not known.any():
        return out
    present = values[known]
    order = np.sort(present)
    ranks = np.searchsorted(order, present, side="left")  # lowest rank of ties, from 0
    out[known] = ranks / max(len(present) - 1, 1)
    return out


def combine(found: Signals, usual: int, view: str = "turned",
            weights: dict[str, float] | None = None) -> tuple[np.ndarray, list[str]]:  # fmt: skip
    """The combined score of every candidate and its reason (see the module notes)."""
    weights = weights or WEIGHTS
    raw = {
        "confidence": found.confidence,
        "disagreement": found.disagreement,
        "count": count_surprise(found.count, usual, found.neighbour_count),
        "jump": found.jump,
    }
    names = list(raw)
    telling = np.stack([raw[name] > FLOORS[name] for name in names], axis=1)  # NaN: False
    floored = {name: np.where(raw[name] <= FLOORS[name], 0.0, raw[name]) for name in names}
    ranks = np.stack([rank_normalise(floored[name]) for name in names], axis=1)  # (n, s)
    w = np.array([weights.get(name, 0.0) for name in names])
    present = ~np.isnan(ranks)
    total = (np.where(present, ranks, 0) * w).sum(1)
    score = total / np.maximum((present * w).sum(1), 1e-12)
    reasons = []
    for i in range(len(score)):
        order = [j for j in np.argsort(-np.nan_to_num(ranks[i], nan=-1.0), kind="stable")
                 if present[i, j] and w[j] > 0]  # fmt: skip
        named = [j for j in order if ranks[i, j] >= REASON_RANK and telling[i, j]] or order[:1]
        reasons.append("; ".join(_reason(names[j], found, i, usual, view) for j in named))
    return score, reasons


def _reason(signal: str, found: Signals, i: int, usual: int, view: str) -> str:
    if signal == "confidence":
        if found.confidence[i] >= 1.0 and found.median_score[i] == 0:
            return "no animal found"
        return f"low point scores (median {found.median_score[i]:.2f})"
    if signal == "disagreement":
        if math.isinf(found.disagreement[i]):
            return f"finds animals in one view only (as is / {view})"
        return f"disagrees with its {view} view by {found.disagreement[i]:.1f} px"
    if signal == "count":
        count, neighbours = int(found.count[i]), found.neighbour_count[i]
        if not np.isnan(neighbours) and abs(count - neighbours) > abs(count - usual):
            return f"{count} animals where neighbours have {neighbours:g}"
        return f"{count} animals where the model usually finds {usual}"
    return f"node jumps {found.jump_px[i]:.0f} px from frame {found.jump_from[i]}"


def spaced(frames: np.ndarray, score: np.ndarray, n: int, spacing: int) -> np.ndarray:
    """Positions of up to ``n`` best-scoring frames, each at least ``spacing`` frames from
    those taken before it, best first."""
    taken: list[int] = []
    for i in np.argsort(-score, kind="stable"):
        if len(taken) == n:
            break
        if all(abs(int(frames[i]) - int(frames[j])) >= spacing for j in taken):
            taken.append(int(i))
    return np.asarray(taken, np.int64)


# ---------------------------------------------------------------------------- the run
def turn_matrix(height: int, width: int, degrees: float) -> torch.Tensor:
    """``(1, 3, 3)`` turn by ``degrees`` about the frame's centre (pixel centres at integers):
    what ``warp`` turns an image by and ``transform_points`` moves its points by."""
    angle = math.radians(degrees)
    cos, sin = math.cos(angle), math.sin(angle)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    m = torch.tensor([[cos, sin, 0.0], [-sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    m[0, 2] = cx - cos * cx - sin * cy
    m[1, 2] = cy + sin * cx - cos * cy
    return m[None].float()


def turned_frames(frames: np.ndarray, degrees: float) -> np.ndarray:
    """``(B, H, W, C)`` uint8 frames turned by ``degrees`` about their centres (bilinear;
    exact for multiples of 90 on square frames and for 180 on any), corners zero-filled."""
    b, h, w, _ = frames.shape
    if degrees % 360 == 180:
        return np.ascontiguousarray(frames[:, ::-1, ::-1])
    images = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    out = warp(images, turn_matrix(h, w, degrees).expand(b, 3, 3), (h, w))
    return out.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def turned_back(prediction: FramePrediction, height: int, width: int,
                degrees: float) -> FramePrediction:  # fmt: skip
    """A pose found on a frame turned by ``degrees``, in the unturned frame's pixels."""
    if len(prediction.points) == 0:
        return prediction
    back = torch.linalg.inv(turn_matrix(height, width, degrees).double())
    points = torch.from_numpy(prediction.points.astype(np.float64))[None]
    moved = transform_points(points, back)[0].numpy().astype(prediction.points.dtype)
    return attrs.evolve(prediction, points=moved)


def model_frame(frame: np.ndarray, channels: int) -> np.ndarray:
    """A decoded frame as ``(H, W, channels)`` uint8: gray repeated for RGB models, colour
    turned to luma for gray ones."""
    image = to_uint8(np.asarray(frame))
    image = image[..., None] if image.ndim == 2 else image
    if image.shape[-1] == channels:
        return image
    if channels == 1:
        luma = image[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return luma.round().astype(np.uint8)[..., None]
    return np.repeat(image[..., :1], channels, -1)


def trained_turn(predictor: FramePredictor) -> float:
    """The turn of the second view: the least rotation any stage trained with, at most 180
    degrees (``DEFAULT_TURN`` without rotations or for a stand-in predictor)."""
    package = getattr(predictor, "package", None)
    if package is None:
        return DEFAULT_TURN
    rotation = min(float(stage.augment.rotation) for stage in package.stages.values())
    return min(rotation, 180.0) if rotation > 0 else DEFAULT_TURN


def load_predictor(model: str | Path | FramePredictor, batch_size: int = 4,
                   device: str = "cpu") -> FramePredictor:  # fmt: skip
    """A model folder loaded for ranking (a ``PoseFileError`` when it is no model package;
    two more animals than usual may be found, so extra animals can be counted), or a
    predictor as it is."""
    if not isinstance(model, str | Path):
        return model
    from napari_pose.nn.inference import trained_animals

    usual = trained_animals(model)  # reads the config: a bad folder fails before any weights
    config = PredictConfig(batch_size=batch_size, max_instances=usual + 2, device=device)
    return _UsualCount(Predictor.load(model, config), usual)


class _UsualCount:
    """A ``Predictor`` finding up to two extra animals, whose usual count stays the trained
    one."""

    def __init__(self, predictor: Predictor, usual: int) -> None:
        self.predictor, self.max_instances = predictor, usual
        self.package, self.channels = predictor.package, predictor.channels

    def predict(self, frames: np.ndarray) -> list[FramePrediction]:
        return self.predictor.predict(frames)


def rank_frames(
    model: str | Path | FramePredictor,
    video: Frames,
    frames: Iterable[int] | None = None,
    n: int = 20,
    *,
    exclude: Iterable[int] = (),
    max_samples: int = MAX_SAMPLES,
    batch_size: int = 4,
    turn: float | None = None,
    spacing: int | None = None,
    device: str = "cpu",
) -> Generator[tuple[int, int], None, list[Suggestion]]:
    """Rank candidate frames by how unsure the model is, yielding ``(frames done, total)``.

    The generator's return value (``StopIteration.value``) holds up to ``n`` ``Suggestion``s,
    most unsure first, at least ``spacing`` frames apart. See the module notes for the
    signals and how they are combined.

    Args:
        model: A model package folder, or a loaded predictor (``load_predictor``).
        video: The frames (``shape`` and ``[i]``).
        frames: Candidate frame indices (default: up to ``max_samples`` evenly spaced over the
            frames not in ``exclude``).
        n: Frames to suggest.
        exclude: Frames never to suggest (the labelled ones).
        max_samples: Size of the default sample.
        batch_size: Frames posed per batch (each twice: as is and turned).
        turn: Degrees of the second view (default ``trained_turn``).
        spacing: Least distance between suggestions, in frames (default
            ``len(video) / (4 n)``, at least 1).
        device: Where a model folder is loaded (``cpu`` by default: the labelling machine).
    """
    if n < 0:
        raise ValueError(f"the number of frames to suggest must be non-negative, not {n}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    n_frames = int(video.shape[0])
    excluded = np.fromiter((int(i) for i in exclude), np.int64)
    if frames is None:
        candidates = strided_frames(n_frames, max_samples, excluded)
    else:
        candidates = np.unique(np.fromiter((int(i) for i in frames), np.int64))
        candidates = candidates[(candidates >= 0) & (candidates < n_frames)]
        candidates = candidates[~np.isin(candidates, excluded)]
    if n == 0 or len(candidates) == 0:
        return []
    predictor = load_predictor(model, batch_size, device)
    degrees = trained_turn(predictor) if turn is None else float(turn)
    usual = int(predictor.max_instances)
    total = len(candidates)
    plain: list[FramePrediction] = []
    turned: list[FramePrediction] = []
    yield 0, total
    for start in range(0, total, batch_size):
        batch = np.stack([model_frame(video[int(i)], predictor.channels)
                          for i in candidates[start : start + batch_size]])  # fmt: skip
        height, width = batch.shape[1:3]
        found = predictor.predict(np.concatenate([batch, turned_frames(batch, degrees)]))
        plain.extend(found[: len(batch)])
        turned.extend(turned_back(p, height, width, degrees) for p in found[len(batch) :])
        yield len(plain), total
    view = "half-turned" if degrees % 360 == 180 else f"{degrees:g}-degree turned"
    found_signals = signals(candidates, plain, turned, usual)
    score, reasons = combine(found_signals, usual, view)
    gap = max(1, n_frames // (4 * n)) if spacing is None else max(int(spacing), 1)
    chosen = spaced(candidates, score, n, gap)
    return [Suggestion(int(candidates[i]), float(score[i]), reasons[i]) for i in chosen]


def run_to_end(steps: Generator[tuple[int, int], None, list[Suggestion]]) -> list[Suggestion]:
    """A ``rank_frames`` generator run to completion, for callers that need no progress."""
    while True:
        try:
            next(steps)
        except StopIteration as stop:
            return stop.value
