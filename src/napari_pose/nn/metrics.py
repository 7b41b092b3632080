"""Pose-estimation accuracy metrics with SLEAP's definitions, in plain numpy.

The numbers this module reports are meant to be comparable with what ``sleap-evaluate`` prints,
so the definitions follow SLEAP's ``sleap.nn.evals`` (itself COCO's keypoint evaluation):

* **OKS** (object keypoint similarity): per visible ground-truth node
  ``exp(-d² / (2 · (2σ)² · (area + ε)))``, averaged over the ground-truth instance's visible
  nodes, with ``σ = 0.025`` for every node and ``area`` the bounding-box area of those visible
  nodes. A predicted node that is missing (NaN) scores 0 at that node, as if infinitely far away.
* **Matching**: per frame, greedily one-to-one in order of descending OKS; only pairs with OKS > 0
  can match, so a prediction with no node near a ground-truth instance stays unmatched.
* **mAP / mAR**: for each OKS threshold 0.50, 0.55, …, 0.95, predictions are ranked by score and
  a prediction is a true positive when its matched OKS reaches the threshold; precision is made
  monotone and read at 101 recall points (COCO), and the average precisions and final recalls
  are averaged over thresholds. Unlike SLEAP, which ranks only *matched* predictions, unmatched
  predictions count as false positives here, so extra detections lower precision as in COCO.

Only frames that carry ground truth are evaluated: a predictions file usually covers a whole
video, and a prediction on a frame nobody labelled can be neither right nor wrong.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, TypeVar

import attrs
import numpy as np
import sleap_io as sio

from napari_pose.core.pose_arrays import PoseArrays, labels_to_arrays

#: SLEAP's (and COCO's fallback) per-node OKS standard deviation.
DEFAULT_SIGMA = 0.025
#: OKS thresholds of the COCO-style mAP: 0.50, 0.55, ..., 0.95.
OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
#: The 101 recall points at which COCO reads the interpolated precision.
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
#: Pixel radii of the PCK (percentage of correct keypoints) figures.
PCK_RADII_PX = (2, 2.8, 5, 10)  # 2.8 px: where SLEAP counts a point as right

#: A frame's key, the same in the ground truth and the predictions compared: ``(video,
#: frame index)`` (``labels_to_frames``) or a plain index.
FrameKey = TypeVar("FrameKey", bound=Hashable)


@dataclass(frozen=True)
class FramePoses:
    """The instances of one frame as arrays, the unit :func:`evaluate` compares.

    ``points`` is ``(n, k, 2)`` with NaN for nodes that are absent, ``visible`` is ``(n, k)``
    (ground truth only counts visible nodes) and ``scores`` is ``(n,)`` (the ranking of
    predictions for mAP; ground truth instances carry 1). ``area`` ``(n,)`` is the OKS scale of
    ground truth; left out, it is the bounding box of the visible ``points``. It is worth giving
    when only some nodes are compared: the animal's size is that of its whole skeleton, and a
    box around two nodes can be nearly flat, which would make OKS punish a pixel like a mile.
    """

    points: np.ndarray
    visible: np.ndarray
    scores: np.ndarray
    area: np.ndarray | None = None

    @classmethod
    def from_points(cls, points: np.ndarray, scores: np.ndarray | None = None) -> FramePoses:
        """Frame whose visibility is "the coordinates are finite" and whose scores default to 1."""
        points = np.asarray(points, dtype=np.float64)
        visible = np.isfinite(points).all(axis=-1)
        if scores is None:
            scores = np.ones(len(points))
        return cls(points, visible, np.asarray(scores, dtype=np.float64))


def instance_area(points: np.ndarray, visible: np.ndarray) -> np.ndarray:
    """Bounding-box area ``(n,)`` of each instance's visible nodes, SLEAP's OKS scale.

    An instance with no visible node gets area 0; its OKS is 0 anyway (nothing to compare).
    """
    masked = np.where(visible[..., None], points, np.nan)
    has_any = np.any(visible, axis=-1)
    safe = np.where(has_any[:, None, None], masked, 0.0)  # all-NaN rows would warn in nanmax
    extent = np.nanmax(safe, axis=-2) - np.nanmin(safe, axis=-2)
    return np.where(has_any, extent.prod(axis=-1), 0.0)


def oks(
    gt: np.ndarray,
    pred: np.ndarray,
    gt_visible: np.ndarray,
    sigma: float | np.ndarray = DEFAULT_SIGMA,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Pairwise object keypoint similarity ``(n_gt, n_pred)``.

    ``gt`` is ``(n_gt, k, 2)``, ``pred`` ``(n_pred, k, 2)``, ``gt_visible`` ``(n_gt, k)``;
    ``sigma`` is one value or one per node; ``scale`` is each ground-truth instance's area
    (default: the bounding box of its visible nodes, plus machine epsilon as SLEAP does, so a
    single visible node does not divide by zero). Ground-truth nodes that are not visible are
    ignored; missing (NaN) predicted nodes contribute 0.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    gt_visible = np.asarray(gt_visible, dtype=bool) & np.isfinite(gt).all(axis=-1)
    if scale is None:
        scale = instance_area(gt, gt_visible)
    scale = np.asarray(scale, dtype=np.float64)
    spread = (2.0 * np.broadcast_to(np.asarray(sigma, dtype=np.float64), gt.shape[1:2])) ** 2
    norm = spread[None, None, :] * 2.0 * (scale[:, None, None] + np.spacing(1))
    sq_dist = ((gt[:, None] - pred[None, :]) ** 2).sum(axis=-1)  # (n_gt, n_pred, k), NaN if missing
    ks = np.exp(-np.nan_to_num(sq_dist, nan=np.inf) / norm)
    ks = np.where(gt_visible[:, None, :], ks, 0.0)
    n_visible = gt_visible.sum(axis=-1)[:, None]
    return np.divide(ks.sum(axis=-1), n_visible, out=np.zeros(ks.shape[:2]), where=n_visible > 0)


def match_frame(
    gt: np.ndarray,
    pred: np.ndarray,
    gt_visible: np.ndarray,
    pred_scores: np.ndarray | None = None,
    sigma: float | np.ndarray = DEFAULT_SIGMA,
    scale: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy one-to-one matching of one frame's instances by descending OKS.

    Returns ``pairs`` ``(m, 2)`` of (gt index, pred index) and their OKS ``(m,)``, best first.
    Ties in OKS go to the higher-scoring prediction, the one COCO would consider first. Pairs
    with OKS 0 never match: such a prediction shares nothing with that ground truth.
    ``sigma`` and ``scale`` are passed to :func:`oks`.
    """
    similarity = oks(gt, pred, gt_visible, sigma=sigma, scale=scale)
    n_gt, n_pred = similarity.shape
    scores = np.zeros(n_pred) if pred_scores is None else np.asarray(pred_scores, dtype=np.float64)
    flat = similarity.ravel()
    order = np.lexsort((-np.tile(scores, n_gt), -flat))
    order = order[flat[order] > 0]
    gt_used, pred_used = np.zeros(n_gt, bool), np.zeros(n_pred, bool)
    pairs = []
    for gi, pi in zip(*np.unravel_index(order, similarity.shape), strict=True):
        if not (gt_used[gi] or pred_used[pi]):
            gt_used[gi] = pred_used[pi] = True
            pairs.append((gi, pi))
            if len(pairs) == min(n_gt, n_pred):
                break
    pairs_arr = np.array(pairs, dtype=np.intp).reshape(-1, 2)
    return pairs_arr, similarity[pairs_arr[:, 0], pairs_arr[:, 1]]


def _average_precision(ranked_oks: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """COCO average precision and final recall per OKS threshold.

    ``ranked_oks`` holds every prediction's matched OKS (0 when unmatched), ordered by
    descending prediction score.
    """
    hits = ranked_oks[None, :] >= OKS_THRESHOLDS[:, None]  # (T, n_pred)
    tp = np.cumsum(hits, axis=1)
    fp = np.cumsum(~hits, axis=1)
    recall = tp / n_gt
    precision = tp / (tp + fp + np.spacing(1))
    # Interpolated precision: the best precision at this recall or any higher one.
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    ap = np.empty(len(OKS_THRESHOLDS))
    for t in range(len(OKS_THRESHOLDS)):  # each threshold has its own recall curve
        idx = np.searchsorted(recall[t], RECALL_POINTS, side="left")
        padded = np.append(precision[t], 0.0)  # recall points never reached read precision 0
        ap[t] = padded[np.minimum(idx, len(precision[t]))].mean()
    final_recall = recall[:, -1] if recall.shape[1] else np.zeros(len(OKS_THRESHOLDS))
    return ap, final_recall


def evaluate(
    gt_frames: Mapping[FrameKey, FramePoses],
    pred_frames: Mapping[FrameKey, FramePoses],
    sigma: float | np.ndarray = DEFAULT_SIGMA,
) -> dict[str, float | int | list[float]]:
    """Compare predictions with ground truth over the frames that carry ground truth.

    Both mappings share frame keys (e.g. ``(video, frame_idx)`` from :func:`labels_to_frames`)
    and node order. A ground-truth frame with no predictions counts all its instances as
    missed; predicted frames without ground truth are ignored.

    Distances are over matched pairs and visible ground-truth nodes whose prediction exists;
    predicted nodes that are missing are counted in ``n_missing_pred_nodes`` instead. PCK is the
    fraction of *all* visible ground-truth nodes (of every ground-truth instance) predicted
    within the radius, so unmatched instances and missing nodes count as misses.
    """
    ranked: list[tuple[np.ndarray, np.ndarray]] = []  # (pred scores, matched OKS) per frame
    gt_points, pred_points, gt_vis = [], [], []
    n_gt = n_pred = n_gt_visible = 0
    n_nodes: int | None = None
    for key, truth in gt_frames.items():
        n_nodes = truth.points.shape[1]
        guess = pred_frames.get(key)
        if guess is None:
            guess = FramePoses(np.empty((0, n_nodes, 2)), np.empty((0, n_nodes), bool), np.empty(0))
        pairs, pair_oks = match_frame(
            truth.points, guess.points, truth.visible, guess.scores, sigma=sigma, scale=truth.area
        )
        matched_oks = np.zeros(len(guess.scores))
        matched_oks[pairs[:, 1]] = pair_oks
        ranked.append((guess.scores, matched_oks))
        gt_points.append(truth.points[pairs[:, 0]])
        pred_points.append(guess.points[pairs[:, 1]])
        gt_vis.append(truth.visible[pairs[:, 0]])
        n_gt += len(truth.points)
        n_pred += len(guess.points)
        n_gt_visible += int(truth.visible.sum())
    if n_nodes is None:
        raise ValueError("no ground-truth frames to evaluate")

    scores = np.concatenate([s for s, _ in ranked])
    matched = np.concatenate([m for _, m in ranked])
    ranked_oks = matched[np.argsort(-scores, kind="mergesort")]
    ap, final_recall = _average_precision(ranked_oks, n_gt) if n_gt else (np.nan, np.nan)

    gt_m, pred_m, vis_m = (np.concatenate(a) for a in (gt_points, pred_points, gt_vis))
    dist = np.linalg.norm(gt_m - pred_m, axis=-1)  # (n_matched, k), NaN where pred missing
    dist = np.where(vis_m, dist, np.nan)
    found = vis_m & np.isfinite(dist)
    d = dist[found]
    # Distance percentiles per node: a column without a matched node is all NaN, no warning.
    per_node = np.full((3, n_nodes), np.nan)
    for j in np.flatnonzero(found.any(axis=0)):
        per_node[:, j] = np.percentile(dist[found[:, j], j], [50, 90, 95])
    stats = np.percentile(d, [50, 90, 95]) if d.size else np.full(3, np.nan)
    result: dict[str, float | int | list[float]] = {
        "oks_map": float(np.mean(ap)),
        "oks_mar": float(np.mean(final_recall)),
        "dist_median_px": float(stats[0]),
        "dist_p90_px": float(stats[1]),
        "dist_p95_px": float(stats[2]),
        "dist_mean_px": float(d.mean()) if d.size else float("nan"),
        "per_node_dist_median": per_node[0].tolist(),
        "per_node_dist_p90": per_node[1].tolist(),
        "per_node_dist_p95": per_node[2].tolist(),
        "n_gt": n_gt,
        "n_pred": n_pred,
        "n_matched": len(gt_m),
        "n_missing_pred_nodes": int((vis_m & ~np.isfinite(dist)).sum()),
        **_visibility(vis_m, np.isfinite(pred_m).all(axis=-1)),
    }
    for radius in PCK_RADII_PX:
        hits = int((d <= radius).sum())
        result[f"pck_{radius}px"] = hits / n_gt_visible if n_gt_visible else float("nan")
    return result


def _visibility(gt_visible: np.ndarray, pred_found: np.ndarray) -> dict[str, float]:
    """Precision and recall of "this node is visible" over matched instances: a predicted node
    where the ground truth says occluded or absent is a false positive, a visible ground-truth
    node the model did not place a miss (SLEAP's visibility precision/recall)."""
    both = int((gt_visible & pred_found).sum())
    found, visible = int(pred_found.sum()), int(gt_visible.sum())
    return {
        "vis_precision": both / found if found else float("nan"),
        "vis_recall": both / visible if visible else float("nan"),
    }


def video_key(video: sio.Video) -> str:
    """A video's (first) file path: what frames are keyed by, not its list position."""
    filename = video.filename
    return str(filename[0] if isinstance(filename, list) else filename)


def match_videos(truth: Sequence[sio.Video], predicted: Sequence[sio.Video]) -> np.ndarray:
    """For each of the ``predicted`` videos, the index of the ``truth`` video it is, or -1.

    Full paths differ as soon as a video is copied, moved or predicted on another computer,
    so videos are the same when their file names agree, and their frame counts too where both
    files record one. Of several such videos, the one whose path shares the most trailing
    folders wins (``cam1/video.mp4`` is not ``cam2/video.mp4``); a tie matches none, since
    guessing would score predictions against another video's ground truth.
    """
    truth_parts = [_reversed_parts(v) for v in truth]
    truth_frames = [_n_frames(v) for v in truth]
    found = np.full(len(predicted), -1, np.intp)
    for p, video in enumerate(predicted):
        parts, frames = _reversed_parts(video), _n_frames(video)
        shared = [
            _shared_tail(parts, other) if None in (frames, n) or frames == n else 0
            for other, n in zip(truth_parts, truth_frames, strict=True)
        ]
        best = max(shared, default=0)
        if best and shared.count(best) == 1:
            found[p] = shared.index(best)
    return found


def _reversed_parts(video: sio.Video) -> tuple[str, ...]:
    return PurePosixPath(video_key(video).replace("\\", "/")).parts[::-1]


def _shared_tail(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many leading parts (file name, then folders upwards) ``a`` and ``b`` share."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def _n_frames(video: sio.Video) -> int | None:
    """The frame count a labels file records for ``video`` (None: not recorded). Image lists
    count their images; videos are not opened, which could be slow or impossible."""
    if isinstance(video.filename, list):
        return len(video.filename)
    shape = video.shape
    return int(shape[0]) if shape else None


def labels_to_frames(
    labels: sio.Labels,
    predicted: bool | None = None,
    nodes: Sequence[str] | None = None,
) -> dict[tuple[str, int], FramePoses]:
    """Per-frame arrays of a sleap_io ``Labels``, keyed by ``(video filename, frame index)``.

    ``predicted=False`` takes user instances (ground truth), ``True`` predicted instances,
    ``None`` both. See :func:`arrays_to_frames` for ``nodes`` and what each frame holds.
    """
    arrays = labels_to_arrays(labels)
    if predicted is not None:
        arrays = arrays.select(arrays.predicted == predicted)
    return arrays_to_frames(arrays, nodes)


def arrays_to_frames(
    arrays: PoseArrays, nodes: Sequence[str] | None = None
) -> dict[tuple[str, int], FramePoses]:
    """Per-frame arrays of ``PoseArrays``, keyed by ``(video filename, frame index)``.

    ``nodes`` picks and orders nodes by name, so files whose skeletons differ (e.g. a
    full-body ground truth and a head/thorax model) compare on their common nodes; by default
    the skeleton's nodes are used. Invisible nodes become NaN; frames without an instance are
    left out. Each instance's ``area`` is the bounding box of all its visible nodes, chosen or
    not, so OKS scales with the whole animal. Vectorised: no loop over instances.
    """
    arrays = arrays.sorted()
    names = arrays.skeleton.node_names
    nodes = names if nodes is None else list(nodes)
    missing = [n for n in nodes if n not in names]
    if missing:
        raise ValueError(f"skeleton {arrays.skeleton.name!r} has no node(s) {missing}")
    columns = [names.index(n) for n in nodes]
    area = instance_area(arrays.xy, arrays.visible)
    xy = arrays.xy[:, columns]
    visible = arrays.visible[:, columns] & np.isfinite(xy).all(axis=-1)
    points = np.where(visible[..., None], xy, np.nan)
    scores = np.where(arrays.predicted, arrays.score, 1.0).astype(np.float64)

    # Rows are sorted by (video, frame): one FramePoses per run of equal keys.
    keys = np.stack([arrays.video, arrays.frame], axis=1)
    starts = np.flatnonzero(np.any(np.diff(keys, axis=0, prepend=-1), axis=1))
    stops = np.append(starts[1:], len(arrays))
    return {
        (video_key(arrays.videos[arrays.video[a]]), int(arrays.frame[a])): FramePoses(
            points[a:b], visible[a:b], scores[a:b], area[a:b]
        )
        for a, b in zip(starts, stops)
    }


def frame_oks(
    gt_frames: Mapping[FrameKey, FramePoses],
    pred_frames: Mapping[FrameKey, FramePoses],
    sigma: float | np.ndarray = DEFAULT_SIGMA,
) -> dict[FrameKey, float]:
    """Per ground-truth frame, the mean OKS of its instances with their matched predictions.

    A missed instance counts 0, so the lowest values are the frames most worth a look (a
    wrong pose, or an animal the model did not find).
    """
    result = {}
    for key, truth in gt_frames.items():
        guess = pred_frames.get(key)
        if guess is None or not len(truth.points):
            result[key] = 0.0
            continue
        _, pair_oks = match_frame(truth.points, guess.points, truth.visible, guess.scores,
                                  sigma=sigma, scale=truth.area)  # fmt: skip
        result[key] = float(pair_oks.sum() / len(truth.points))
    return result


def compare(gt: PoseArrays, pred: PoseArrays, predicted_frames_only: bool = True
            ) -> tuple[dict[str, Any], dict[tuple[str, int], float]]:  # fmt: skip
    """Accuracy (``evaluate``), identity (``identity_metrics``, when both are tracked) and
    per-frame OKS (``frame_oks``) of predictions against user-labelled ground truth.

    The two may come from different projects: nodes are compared by name (those they share)
    and videos by file name and frame count (``match_videos``), as ``sleap-evaluate`` does.
    ``predicted_frames_only`` compares only the ground-truth frames that have predictions (a
    layer holding predictions of some frames); otherwise every ground-truth frame counts,
    unpredicted ones as misses. The metrics count the frames: ``n_gt_frames`` (labelled),
    ``n_pred_frames`` (with predictions, in any video) and ``n_matched_frames`` (labelled
    and predicted): 0 matched means the predictions are of other videos or frames, and every
    figure says nothing.
    """
    nodes = [n for n in pred.skeleton.node_names if n in gt.skeleton.node_names]
    if not nodes:
        raise ValueError("the ground truth and the predictions share no node names")
    n_gt_frames, n_pred_frames = len(np.unique(gt.frame_keys)), len(np.unique(pred.frame_keys))
    # Frames are keyed by the ground truth's videos: predictions take the one they match.
    video = match_videos(gt.videos, pred.videos)[pred.video]
    pred = attrs.evolve(pred.select(video >= 0), videos=list(gt.videos),
                        video=video[video >= 0].astype(np.int32))  # fmt: skip
    gt_frames, pred_frames = arrays_to_frames(gt, nodes), arrays_to_frames(pred, nodes)
    n_matched = sum(k in pred_frames for k in gt_frames)
    # A layer often holds predictions of some frames only, and a frame predicted empty cannot
    # be told from one not predicted: compare the frames that have predictions, if any.
    if predicted_frames_only:
        gt_frames = {k: v for k, v in gt_frames.items() if k in pred_frames} or gt_frames
    metrics: dict[str, Any] = evaluate(gt_frames, pred_frames)  # and node names, below
    metrics.update(nodes=nodes, n_gt_frames=n_gt_frames, n_pred_frames=n_pred_frames,
                   n_matched_frames=n_matched)  # fmt: skip
    if (gt.track >= 0).any() and (pred.track >= 0).any():
        index = {video_key(v): i for i, v in enumerate(gt.videos)}
        compared = [index[name] << 40 | frame for name, frame in gt_frames]
        shared = np.isin(gt.frame_keys, compared)
        gt_cols = [gt.skeleton.node_names.index(n) for n in nodes]
        pred_cols = [pred.skeleton.node_names.index(n) for n in nodes]
        full_area = instance_area(gt.xy[shared], gt.visible[shared])
        metrics.update(identity_metrics(
            attrs.evolve(gt.select(shared), xy=gt.xy[shared][:, gt_cols],
                         visible=gt.visible[shared][:, gt_cols]),
            attrs.evolve(pred, xy=pred.xy[:, pred_cols], visible=pred.visible[:, pred_cols]),
            gt_area=full_area,
        ))  # fmt: skip
    return metrics, frame_oks(gt_frames, pred_frames)


def identity_metrics(
    gt: PoseArrays, pred: PoseArrays, min_oks: float = 0.5, gt_area: np.ndarray | None = None
) -> dict[str, float | int]:
    """Identity figures of tracked predictions against ground-truth tracks (CLEAR-MOT, IDF1).

    Per frame, ground truth and predictions are matched greedily by OKS (as in ``evaluate``);
    a pair counts when its OKS reaches ``min_oks``. Then:

    * ``id_switches``: times a ground-truth track is matched to a different predicted track
      than at its previous match;
    * ``mota``: ``1 - (missed + false positives + id switches) / ground-truth instances``;
    * ``idf1``: ``2 IDTP / (ground-truth + predicted instances)``, where IDTP counts matches
      whose tracks agree with the best one-to-one mapping of ground-truth to predicted tracks
      (the mapping that maximises frames in agreement).

    Both arrays share a skeleton's node order; instances without a track are skipped.
    ``gt_area`` ``(len(gt),)`` is each ground-truth animal's OKS scale when ``gt`` holds only
    some of its nodes (default: the bounding box of the nodes given; see ``FramePoses``).
    """
    from scipy.optimize import linear_sum_assignment

    tracked = gt.track >= 0
    gt = gt.select(tracked)
    pred = pred.select(pred.track >= 0)
    gt_vis = gt.visible & np.isfinite(gt.xy).all(axis=-1)
    area = instance_area(gt.xy, gt_vis) if gt_area is None else np.asarray(gt_area)[tracked]
    gt_xy = np.where(gt_vis[..., None], gt.xy, np.nan)
    pred_xy = np.where(pred.visible[..., None], pred.xy, np.nan)
    gt_key, pred_key = gt.frame_keys, pred.frame_keys
    pairs: list[tuple[int, int]] = []  # (gt track, pred track) per frame match, in frame order
    matches = switches = 0
    last: dict[int, int] = {}
    # Rows of each frame by sorting once (a mask per frame would be quadratic in long videos).
    gt_order, pred_order = np.argsort(gt_key, kind="stable"), np.argsort(pred_key, kind="stable")
    frames, gt_start = np.unique(gt_key[gt_order], return_index=True)
    gt_stop = np.append(gt_start[1:], len(gt_order))
    pred_sorted = pred_key[pred_order]
    pred_start = np.searchsorted(pred_sorted, frames, side="left")
    pred_stop = np.searchsorted(pred_sorted, frames, side="right")
    for i in range(len(frames)):
        g = gt_order[gt_start[i] : gt_stop[i]]
        p = pred_order[pred_start[i] : pred_stop[i]]
        if len(p) == 0:
            continue
        found, similarity = match_frame(gt_xy[g], pred_xy[p], gt_vis[g], scale=area[g])
        for (gi, pi), value in zip(found, similarity, strict=True):
            if value < min_oks:
                continue
            gt_track, pred_track = int(gt.track[g[gi]]), int(pred.track[p[pi]])
            matches += 1
            if gt_track in last and last[gt_track] != pred_track:
                switches += 1
            last[gt_track] = pred_track
            pairs.append((gt_track, pred_track))
    n_gt, n_pred = len(gt), int(np.isin(pred_key, gt_key).sum())  # predictions on gt frames
    counts = np.zeros(
        (max(gt.track.max(initial=-1) + 1, 1), max(pred.track.max(initial=-1) + 1, 1))
    )
    np.add.at(counts, tuple(np.array(pairs, np.intp).reshape(-1, 2).T), 1)
    rows, cols = linear_sum_assignment(-counts)
    idtp = counts[rows, cols].sum()
    missed, false_pos = n_gt - matches, n_pred - matches
    return {
        "id_switches": switches,
        "mota": 1.0 - (missed + false_pos + switches) / n_gt if n_gt else float("nan"),
        "idf1": 2 * idtp / (n_gt + n_pred) if n_gt + n_pred else float("nan"),
        "n_matched": matches,
    }


def json_ready(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``: JSON has no NaN, and a metrics.json that
    other tools cannot parse is worse than one that says a figure does not exist."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_ready(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
