"""The three SLEAP pipelines as stages: which examples each model sees and what it must draw.

* ``single_instance``: one model, whole (scaled) frames -> one confidence map per node.
* ``topdown``: a ``centroid`` model finds each animal's anchor on a downscaled frame, then a
  ``centered_instance`` model sees a crop centred on one anchor and draws only that animal's
  nodes. Two small problems instead of one hard one: the usual choice for several animals.
* ``bottomup``: one model draws every animal's nodes plus part-affinity fields (PAFs) along the
  skeleton's edges, which the predictor uses to group nodes into animals.

A ``StageConfig`` holds everything needed to rebuild a stage's model and its inputs exactly
(it is stored in the model package's ``config.yaml``); ``default_stages`` chooses it from the
labels so that users only pick a pipeline and a preset size.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from napari_pose.nn.augment import AugmentConfig
from napari_pose.nn.data import Batch, LabelledFrames, anchor_points, make_batch
from napari_pose.nn.models import ModelConfig, UNetConfig
from napari_pose.nn.targets import confidence_maps, part_affinity_fields

STAGE_KINDS = ("single_instance", "centroid", "centered_instance", "bottomup")
PIPELINES: dict[str, tuple[str, ...]] = {
    "single_instance": ("single_instance",),
    "topdown": ("centroid", "centered_instance"),
    "bottomup": ("bottomup",),
}
#: Longest side (pixels) a frame is scaled down to for each frame-level stage.
_MAX_SIDE = {"single_instance": 512, "centroid": 256, "bottomup": 512}
#: Extra margin (input pixels) around the farthest node when sizing centred crops.
_CROP_MARGIN = 16
#: The centroid model only marks one point per animal on a frame scaled to 256 px: with half
#: the ``small`` preset's filters it costs half as much (it was ~40% of top-down prediction on
#: CPU) and trains twice the steps in its share of the time (docs/benchmarks.md).
_CENTROID_BACKBONE = UNetConfig(filters=8, filters_rate=1.5, max_stride=32)


@attrs.frozen
class StageConfig:
    """One trained model of a pipeline and how its inputs and targets are made.

    Attributes:
        kind: One of ``STAGE_KINDS``.
        model: Backbone and heads.
        input_size: ``(h, w)`` of the model input (frames are scaled and zero-padded to it;
            crops are this size).
        scale: Resize factor from frame pixels to input pixels.
        sigma: Spread of the confidence-map Gaussians, in input pixels.
        anchor: Node index the centroid model finds and crops centre on (``None``: the centre
            of the bounding box of the visible nodes).
        paf_width: Half-width of the PAF limbs (bottom-up), in input pixels.
        augment: Augmentation ranges used in training.
        centre_cue: Give the model an extra input channel with a Gaussian at the input's
            centre (centred-instance crops: where the centroid model put the animal to pose).
            When two animals touch, the crop shows both; convolutions see position only
            through the zero padding of their deepest layers, and this channel says at every
            level which one is meant (clip.slp frames 1300-1499: see docs/benchmarks.md).
        hard_keypoints: Weight of online hard keypoint mining in the training loss: the
            error of the worst half of each example's node maps added to the mean (0: off;
            ``stage_loss``).
    """

    kind: str = attrs.field(validator=attrs.validators.in_(STAGE_KINDS))
    model: ModelConfig
    input_size: tuple[int, int] = attrs.field(converter=lambda v: (int(v[0]), int(v[1])))
    scale: float = attrs.field(default=1.0, converter=float)
    sigma: float = attrs.field(default=2.5, converter=float)
    anchor: int | None = None
    paf_width: float = attrs.field(default=4.0, converter=float)
    augment: AugmentConfig = attrs.field(factory=AugmentConfig)
    centre_cue: bool = False
    hard_keypoints: float = attrs.field(default=0.0, converter=float,
                                        validator=attrs.validators.ge(0.0))  # fmt: skip

    @property
    def image_channels(self) -> int:
        """Channels of the images the stage reads (the model's inputs minus the cue)."""
        return self.model.backbone.in_channels - int(self.centre_cue)

    @property
    def crops(self) -> bool:
        """Whether examples are crops around instances rather than whole frames."""
        return self.kind == "centered_instance"

    @property
    def output_size(self) -> tuple[int, int]:
        stride = self.model.backbone.output_stride
        return self.input_size[0] // stride, self.input_size[1] // stride

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        return {
            "kind": self.kind,
            "model": self.model.to_dict(),
            "input_size": list(self.input_size),
            "scale": self.scale,
            "sigma": self.sigma,
            "anchor": self.anchor,
            "paf_width": self.paf_width,
            "augment": self.augment.to_dict(),
            "centre_cue": self.centre_cue,
            "hard_keypoints": self.hard_keypoints,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageConfig:
        """Inverse of ``to_dict``."""
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data["model"])
        data["augment"] = AugmentConfig.from_dict(data.get("augment", {}))
        return cls(**data)


def default_pipeline(data: LabelledFrames) -> str:
    """``single_instance`` when no frame has more than one animal, else ``topdown``."""
    return "single_instance" if data.max_instances == 1 else "topdown"


def default_anchor(data: LabelledFrames) -> int | None:
    """The node nearest the middle of the animal that is (nearly) always visible.

    Crops centred on a body part (a fly's thorax) are steadier than crops centred on the
    bounding box, which jumps when a leg moves; ``None`` when no node is visible in 95% of
    the instances.
    """
    points = np.concatenate(data.points)
    visible = np.isfinite(points).all(axis=-1)
    centre = anchor_points(points, None)
    with np.errstate(invalid="ignore"):
        dist = np.linalg.norm(points - centre[:, None], axis=-1)
    dist = np.where(visible, dist, np.nan)
    candidates = np.flatnonzero(visible.mean(axis=0) >= 0.95)
    if len(candidates) == 0:
        return None
    return int(candidates[np.nanmedian(dist[:, candidates], axis=0).argmin()])


def round_up(value: float, multiple: int) -> int:
    return max(multiple, int(math.ceil(value / multiple)) * multiple)


def _frame_size(data: LabelledFrames, scale: float, stride: int) -> tuple[int, int]:
    height = max(image.shape[0] for image in data.images)
    width = max(image.shape[1] for image in data.images)
    return round_up(height * scale, stride), round_up(width * scale, stride)


def crop_size(data: LabelledFrames, anchor: int | None, augment: AugmentConfig,
              stride: int) -> int:  # fmt: skip
    """Side of the square crop that holds every labelled animal even when zoomed in."""
    points = np.concatenate(data.points)
    with np.errstate(invalid="ignore"):
        dist = np.linalg.norm(points - anchor_points(points, anchor)[:, None], axis=-1)
    radius = float(np.nanmax(dist)) if np.isfinite(dist).any() else 0.0
    return round_up(2 * radius * max(augment.scale) + 2 * _CROP_MARGIN, stride)


#: Spread (input pixels) of the confidence maps of the models that place keypoints.
POSE_SIGMA = 3.5


def default_stages(
    data: LabelledFrames, pipeline: str, preset: str = "small"
) -> dict[str, StageConfig]:
    """Stage configs for ``pipeline`` sized from the labels.

    ``preset`` sizes the pose model (single-instance, centred-instance or bottom-up); the
    centroid model is always ``_CENTROID_BACKBONE`` (it only has to find animals on a
    downscaled frame).
    Pose models that place keypoints (single and centred instance) output at stride 4 with
    confidence maps ``POSE_SIGMA`` wide: on unseen clip.slp frames (docs/benchmarks.md, issue
    12) stride 2 and sigma 2.5 scored 0.393 OKS mAP, stride 4 with sigma 3.5 0.443, and sigma 1.5
    0.190; the sub-pixel peak refinement recovers what the coarser maps lose.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {sorted(PIPELINES)}")
    channels = data.channels
    augment = AugmentConfig(flip=bool((data.mirror != np.arange(data.n_nodes)).any()))
    anchor = default_anchor(data) if pipeline == "topdown" else None
    longest = max(max(image.shape[:2]) for image in data.images)
    stages = {}
    for kind in PIPELINES[pipeline]:
        cue = kind == "centered_instance"
        if kind == "centroid":
            backbone = attrs.evolve(_CENTROID_BACKBONE, in_channels=channels)
        else:
            backbone = UNetConfig.preset(preset, in_channels=channels + int(cue))
        places_keypoints = kind in ("single_instance", "centered_instance")
        if places_keypoints:
            backbone = attrs.evolve(backbone, output_stride=4)
        if kind == "centroid":
            heads = {"centroids": 1}
        elif kind == "bottomup":
            heads = {"confmaps": data.n_nodes, "pafs": max(1, len(data.edges))}
        else:
            heads = {"confmaps": data.n_nodes}
        if kind == "centered_instance":
            scale = 1.0
            side = crop_size(data, anchor, augment, backbone.max_stride)
            input_size = (side, side)
            stage_augment = attrs.evolve(augment, translate=0.05)
        else:
            scale = min(1.0, _MAX_SIDE[kind] / longest)
            input_size = _frame_size(data, scale, backbone.max_stride)
            stage_augment = attrs.evolve(augment, translate=0.1)
        stages[kind] = StageConfig(
            kind=kind,
            model=ModelConfig(backbone=backbone, heads=heads),
            input_size=input_size,
            scale=scale,
            anchor=anchor,
            augment=stage_augment,
            centre_cue=cue,
            **({"sigma": POSE_SIGMA} if places_keypoints else {}),
        )
    return stages


def stage_examples(data: LabelledFrames, stage: StageConfig) -> np.ndarray:
    """What one training example is: frame positions, or (frame, instance) rows for crops.

    Crops are only made for instances that have an anchor (at least one visible node).
    """
    if not stage.crops:
        return np.arange(len(data))
    # ``instances()`` lists instances frame by frame, the order of the concatenated points.
    has_anchor = np.isfinite(np.concatenate(data.points)).all(axis=-1).any(axis=-1)
    return data.instances()[has_anchor]


def stage_batch(
    data: LabelledFrames,
    stage: StageConfig,
    examples: np.ndarray,
    augment: bool = False,
    generator: torch.Generator | None = None,
) -> Batch:
    """``make_batch`` with the stage's size, scale, anchor, centre cue and (optionally)
    augmentation."""
    batch = make_batch(
        data,
        examples,
        size=stage.input_size,
        scale=stage.scale,
        anchor=stage.anchor,
        crop=stage.crops,
        augment=stage.augment if augment else None,
        generator=generator,
    )
    return attrs.evolve(batch, images=with_centre_cue(batch.images, stage))


def with_centre_cue(images: torch.Tensor, stage: StageConfig) -> torch.Tensor:
    """``images`` ``(B, C, h, w)`` plus the stage's centre-cue channel, when it has one."""
    if not stage.centre_cue:
        return images
    h, w = images.shape[-2:]
    centre = torch.tensor([[[[(w - 1) / 2, (h - 1) / 2]]]], device=images.device)
    sigma = min(h, w) / 8
    cue = confidence_maps(centre, (h, w), 1, sigma).to(images.dtype)  # (1, h, w)
    return torch.cat([images, cue.expand(len(images), 1, h, w)], dim=1)


def stage_targets(stage: StageConfig, batch: Batch, edges: np.ndarray) -> dict[str, torch.Tensor]:
    """The maps each head of the stage's model must output for ``batch``."""
    shape = stage.output_size
    stride = stage.model.backbone.output_stride
    if stage.kind == "centroid":
        return {"centroids": confidence_maps(batch.anchors[:, :, None], shape, stride, stage.sigma)}
    targets = {"confmaps": confidence_maps(batch.points, shape, stride, stage.sigma)}
    if stage.kind == "bottomup":
        edges_t = torch.as_tensor(edges, dtype=torch.long).reshape(-1, 2)
        if len(edges_t) == 0:  # a one-node skeleton has no limbs: an all-zero field
            targets["pafs"] = torch.zeros(len(batch.points), 2, *shape)
        else:
            targets["pafs"] = part_affinity_fields(
                batch.points, edges_t, shape, stride, stage.paf_width
            )
    return targets


def stage_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               known: torch.Tensor | None = None, hard_keypoints: float = 0.0) -> torch.Tensor:  # fmt: skip
    """Mean squared error of every head, summed over heads (SLEAP's loss).

    ``known`` ``(B, k)`` (``Batch.known``) leaves the node maps of unknown nodes out of the
    ``confmaps`` head's mean; ``None`` keeps them all (the plain mean).
    ``hard_keypoints`` (``StageConfig.hard_keypoints``) adds that weight times the mean
    error of the worst half of each example's known node maps (``_hard_keypoint_loss``).
    """
    losses = []
    for name, target in targets.items():
        output = outputs[name].float()
        if name == "confmaps" and known is not None:
            weight = known.to(output.device)[:, :, None, None].expand_as(output)
            squared = (output - target) ** 2 * weight
            losses.append(squared.sum() / weight.sum().clamp_min(1.0))
        else:
            losses.append(F.mse_loss(output, target))
        if name == "confmaps" and hard_keypoints > 0:
            losses.append(hard_keypoints * _hard_keypoint_loss(output, target, known))
    return torch.stack(losses).sum()


def _hard_keypoint_loss(output: torch.Tensor, target: torch.Tensor,
                        known: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """Online hard keypoint mining (SLEAP's and mmpose's OHKM): the mean squared error of the
    worst half (at least one) of each example's node maps, unknown nodes left out.

    A node map is mostly background, so the plain mean is dominated by the nodes a model
    already finds; this term keeps pushing the ones it misses (a fly's leg tips, a head
    beside another fly's)."""
    per_node = ((output - target) ** 2).mean(dim=(2, 3))  # (B, k)
    if known is not None:  # unknown nodes sort last and count as zero
        per_node = torch.where(known.to(per_node.device) > 0, per_node, -1.0)
    worst = per_node.topk(max(1, per_node.shape[1] // 2), dim=1).values
    return worst.clamp_min(0.0).mean()
