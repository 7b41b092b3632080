"""Run a trained pipeline on frames: images in, instances (points, scores) out.

This is the model-side core that validation during training and the predictor of a model
package share. It works on numpy frames already decoded; streaming over videos, writing
``Labels`` and scale-out build on it.

Coordinates go back to frame pixels through the inverse of the transform that made each input
(``data.scale_matrices`` / ``data.crop_matrices``), so predictions line up with the labels
whatever scaling and cropping a stage uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import numpy as np
import torch

from napari_pose.nn.augment import transform_points, warp
from napari_pose.nn.data import crop_matrices, scale_matrices
from napari_pose.nn.grouping import GroupingConfig, group_instances
from napari_pose.nn.models import PoseModel
from napari_pose.nn.peaks import global_peaks, local_peaks
from napari_pose.nn.pipelines import StageConfig, round_up, with_centre_cue


@attrs.frozen
class FramePrediction:
    """The instances found in one frame.

    Attributes:
        points: ``(n, k, 2)`` ``(x, y)`` in frame pixels, NaN where a node was not found.
        point_scores: ``(n, k)`` confidence-map peak values (NaN where not found).
        scores: ``(n,)`` instance scores, best first.
        n_candidates: Animals found before the best ``max_instances`` were kept (centroid
            peaks, or bottom-up groups), so a run can tell which frames held more than its
            limit; ``None`` where nothing was cut (single-instance models look for one).
    """

    points: np.ndarray
    point_scores: np.ndarray
    scores: np.ndarray
    n_candidates: int | None = None

    @classmethod
    def empty(cls, n_nodes: int) -> FramePrediction:
        return cls(
            np.empty((0, n_nodes, 2), np.float32),
            np.empty((0, n_nodes), np.float32),
            np.empty(0, np.float32),
        )


def frames_to_tensor(frames: np.ndarray | Sequence[np.ndarray],
                     device: torch.device) -> torch.Tensor:  # fmt: skip
    """``(B, H, W[, C])`` uint8 frames -> ``(B, C, H, W)`` float in ``[0, 1]`` on ``device``."""
    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[..., None]
    return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def run_model(model: PoseModel, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Forward pass in inference mode, channels-last, half precision on CUDA."""
    images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", enabled=images.is_cuda):
        return {name: out.float() for name, out in model(images).items()}


def frame_inputs(frames: torch.Tensor, stage: StageConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (and zero-pad) whole frames to the stage's input; returns inputs and matrices."""
    stride = stage.model.backbone.max_stride
    size = (
        round_up(frames.shape[-2] * stage.scale, stride),
        round_up(frames.shape[-1] * stage.scale, stride),
    )
    matrices = scale_matrices(len(frames), stage.scale).to(frames.device)
    return warp(frames, matrices, size), matrices


def _to_frame(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    return transform_points(points, torch.linalg.inv(matrices))


@torch.inference_mode()
def predict_single_instance(
    model: PoseModel, stage: StageConfig, frames: torch.Tensor, threshold: float = 0.2
) -> list[FramePrediction]:
    """One animal per frame: the best peak of each node's map."""
    inputs, matrices = frame_inputs(frames, stage)
    maps = run_model(model, inputs)["confmaps"]
    xy, values = global_peaks(maps, model.output_stride)
    xy = _to_frame(xy, matrices)
    return instances_by_frame(xy, values, [1] * len(xy), threshold)


def instances_by_frame(xy: torch.Tensor, values: torch.Tensor, counts: Sequence[int],
                       threshold: float) -> list[FramePrediction]:  # fmt: skip
    """Each frame's instances from per-node peaks ``(n, k, 2)`` of consecutive frames
    (``counts[i]`` rows for frame ``i``), thresholded all at once: nodes below ``threshold``
    become NaN and instances with no node left are dropped. Score: mean of the found nodes'
    peak values."""
    if len(counts) == 0:
        return []
    found = values > threshold
    points = torch.where(found[..., None], xy, torch.nan).cpu().numpy().astype(np.float32)
    point_scores = torch.where(found, values, torch.nan).cpu().numpy().astype(np.float32)
    keep = found.any(dim=-1).cpu().numpy()
    scores = np.nan_to_num(np.nanmean(np.where(keep[:, None], point_scores, 0.0), axis=-1))
    bounds = np.cumsum(counts)[:-1]
    arrays = (points, point_scores, scores.astype(np.float32), keep)
    per_frame = (np.split(a, bounds) for a in arrays)
    return [FramePrediction(p[k], s[k], v[k]) for p, s, v, k in zip(*per_frame, strict=True)]


@torch.inference_mode()
def find_centroids(
    model: PoseModel, stage: StageConfig, frames: torch.Tensor, max_instances: int | None,
    threshold: float = 0.2,
) -> list[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Per frame, the anchors ``(n, 2)`` in frame pixels and their peak values ``(n,)``,
    at most ``max_instances`` (``None``: all, for a caller that counts them), best first."""
    inputs, matrices = frame_inputs(frames, stage)
    maps = run_model(model, inputs)["centroids"]
    b, _, xy, values = local_peaks(maps, model.output_stride, threshold)
    xy = _to_frame(xy[:, None], matrices[b])[:, 0]
    found = []
    for i in range(len(frames)):
        mine = torch.nonzero(b == i).flatten()
        order = values[mine].argsort(descending=True)[:max_instances]
        found.append((xy[mine[order]], values[mine[order]]))
    return found


@torch.inference_mode()
def predict_centered(
    model: PoseModel, stage: StageConfig, frames: torch.Tensor, frame_index: torch.Tensor,
    anchors: torch.Tensor, threshold: float = 0.2, batch_size: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Keypoints ``(n, k, 2)`` (frame pixels) and peak values ``(n, k)`` of the animal centred
    at each of ``anchors`` ``(n, 2)`` in frame ``frames[frame_index]``."""
    side = stage.input_size[0]
    xy_out, values_out = [], []
    for start in range(0, len(anchors), batch_size):
        part = slice(start, start + batch_size)
        matrices = crop_matrices(anchors[part].float().cpu(), stage.scale, side).to(frames.device)
        crops = warp(frames[frame_index[part]], matrices, (side, side))
        maps = run_model(model, with_centre_cue(crops, stage))["confmaps"]
        xy, values = global_peaks(maps, model.output_stride)
        xy_out.append(_to_frame(xy, matrices))
        values_out.append(values)
    k = stage.model.heads["confmaps"]
    if not xy_out:
        return torch.empty(0, k, 2, device=frames.device), torch.empty(0, k, device=frames.device)
    return torch.cat(xy_out), torch.cat(values_out)


def predict_topdown(
    centroid_model: PoseModel, centroid_stage: StageConfig, model: PoseModel,
    stage: StageConfig, frames: torch.Tensor, max_instances: int, threshold: float = 0.2,
) -> list[FramePrediction]:  # fmt: skip
    """Find anchors, then keypoints in a crop around each of the best ``max_instances``."""
    found = find_centroids(centroid_model, centroid_stage, frames, None, threshold)
    candidates = [len(xy) for xy, _ in found]
    found = [(xy[:max_instances], values[:max_instances]) for xy, values in found]
    anchors = torch.cat([xy for xy, _ in found]) if found else torch.empty(0, 2)
    counts = [len(xy) for xy, _ in found]
    frame_index = torch.repeat_interleave(
        torch.arange(len(frames), device=frames.device),
        torch.tensor(counts, device=frames.device),
    )
    xy, values = predict_centered(model, stage, frames, frame_index, anchors, threshold)
    found_instances = instances_by_frame(xy, values, counts, threshold)
    return [attrs.evolve(prediction, n_candidates=n)
            for prediction, n in zip(found_instances, candidates, strict=True)]  # fmt: skip


@torch.inference_mode()
def predict_bottomup(
    model: PoseModel, stage: StageConfig, frames: torch.Tensor, edges: np.ndarray,
    max_instances: int, threshold: float = 0.2, grouping: GroupingConfig | None = None,
) -> list[FramePrediction]:  # fmt: skip
    """Every node's peaks, grouped into animals by the part-affinity fields."""
    inputs, matrices = frame_inputs(frames, stage)
    outputs = run_model(model, inputs)
    maps, pafs = outputs["confmaps"], outputs["pafs"]
    stride = model.output_stride
    b, c, xy, values = local_peaks(maps, stride, threshold)
    k = maps.shape[1]
    # Peaks come ordered by (frame, node): split them once into per-(frame, node) runs.
    bounds = torch.bincount(b * k + c, minlength=len(frames) * k).cumsum(0)[:-1].cpu().numpy()
    xy_runs = np.split(xy.cpu().numpy(), bounds)
    value_runs = np.split(values.cpu().numpy(), bounds)
    out = []
    for i in range(len(frames)):
        mine = slice(i * k, (i + 1) * k)
        peaks = list(zip(xy_runs[mine], value_runs[mine], strict=True))
        points, point_scores, scores = group_instances(peaks, pafs[i], edges, stride, grouping)
        n_candidates = len(scores)
        points, point_scores, scores = (
            points[:max_instances],
            point_scores[:max_instances],
            scores[:max_instances],
        )
        points_t = torch.from_numpy(points)[None]
        points = _to_frame(points_t, matrices[i : i + 1].cpu())[0].numpy()
        out.append(FramePrediction(points, point_scores, scores, n_candidates))
    return out
