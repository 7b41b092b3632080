"""Random geometric and intensity augmentation of training examples, on whole batches.

Every training example is produced by one affine warp from the decoded frame: the pipeline's
own transform (input scaling, or a crop centred on an animal) composed with a random rotation,
scale, translation and left/right flip about the output's centre. Warping once from the full
frame means a rotated crop never shows black corners and each image is resampled only once.
The warp itself is kornia's ``warp_affine`` (bilinear ``grid_sample``; pixel centres at
integer coordinates, as our targets use); keypoints go through the same 3x3 matrices.

A flip mirrors the image, so a left wing lands where a right wing was: the node columns of
each symmetric pair are swapped for flipped examples, and flips are only offered when the
skeleton declares symmetries (without them a flip would teach the model impossible poses).

*Close encounters* (``AugmentConfig.encounter``, centred-instance crops only): most training
crops show one animal alone, yet the centred-instance model fails where two animals touch,
drawing the other animal's parts. With this probability a crop gets a second labelled animal
(the donor) pasted next to the centred one: cut out of its own frame by a soft mask around its
skeleton, turned and placed by its own affine, blended over the crop before the intensity
change. The target stays the centred animal alone; its nodes the donor covers become NaN (see
``data.paste_encounters``).

*Crops towards a neighbour* (``AugmentConfig.towards_neighbour``, centred-instance crops
only): where two animals touch, the centroid model's peak often lands between them, so the
crop the pose model gets is off its animal's centre, towards the other. With this probability
a training crop is centred part of the way to the nearest other animal (under half, so its
own animal stays nearest the centre); the target stays its own animal.

The random draws come from the ``generator`` passed in (seeded, so training runs repeat);
``None`` draws from torch's global generator.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs
import numpy as np
import torch
from kornia.geometry.transform import get_affine_matrix2d, warp_affine


@attrs.frozen
class AugmentConfig:
    """Ranges of the random augmentation; zeros (or ``flip=False``) switch a part off.

    Attributes:
        rotation: Maximum rotation in degrees, either way (180: any orientation, right for
            animals seen from above).
        scale: Range of the random zoom factor.
        translate: Maximum shift as a fraction of the output size, either way.
        flip: Mirror half of the examples left/right when the skeleton has symmetric nodes.
        brightness: Maximum shift of intensity (images are in ``[0, 1]``).
        contrast: Maximum relative change of contrast about the image mean.
        noise: Maximum standard deviation of added Gaussian noise.
        encounter: Probability that a centred-instance crop gets a second animal pasted
            against the centred one (0: never, the default until benchmarks choose one; whole
            frames are never changed).
        towards_neighbour: Probability that a centred-instance crop is centred a random 10-45%
            of the way from its animal towards the nearest other animal of the frame (the
            targets stay its own animal's): where two animals touch, the centroid model's
            peak often lands between them, and the crop model must still pose the animal
            nearest the centre (0: never).
    """

    rotation: float = 180.0
    scale: tuple[float, float] = attrs.field(default=(0.9, 1.1), converter=tuple)
    translate: float = 0.03
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    noise: float = 0.02
    encounter: float = attrs.field(
        default=0.0, converter=float, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )
    towards_neighbour: float = attrs.field(
        default=0.0, converter=float, validator=[attrs.validators.ge(0.0), attrs.validators.le(1.0)]
    )

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        data = attrs.asdict(self)
        data["scale"] = list(self.scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Inverse of ``to_dict``; fields missing from older ``config.yaml`` files (such as
        ``encounter`` or ``towards_neighbour``) take their defaults."""
        return cls(**data)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def random_affine(
    n: int, size: tuple[int, int], config: AugmentConfig, generator: torch.Generator | None,
    can_flip: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """``n`` random 3x3 matrices acting about the centre of an output of ``size`` ``(h, w)``.

    Returns the matrices ``(n, 3, 3)`` and which examples were flipped ``(n,)`` (always all
    False when ``can_flip`` is False or flips are off).
    """
    h, w = size
    angle = _uniform(n, -config.rotation, config.rotation, generator)
    zoom = _uniform(n, *config.scale, generator)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * config.translate
    shift = shift * torch.tensor([w, h], dtype=torch.float32)
    flipped = torch.rand(n, generator=generator) < 0.5
    flipped &= bool(config.flip and can_flip)
    sx = torch.where(flipped, -zoom, zoom)
    center = torch.tensor([(w - 1) / 2, (h - 1) / 2]).expand(n, 2)
    matrices = get_affine_matrix2d(shift, center, torch.stack([sx, zoom], dim=1), angle)
    return matrices, flipped


def transform_points(points: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Apply per-example 3x3 (or 2x3) matrices ``(B, ., 3)`` to points ``(B, ..., 2)``."""
    shape = points.shape
    flat = points.reshape(shape[0], math.prod(shape[1:-1]), 2)
    out = flat @ matrices[:, :2, :2].transpose(1, 2) + matrices[:, None, :2, 2]
    return out.reshape(shape)


def warp(images: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resample ``images`` ``(B, C, H, W)`` (float) through ``matrices`` into ``size`` ``(h, w)``.

    Pixels that come from outside the source frame are 0.
    """
    return warp_affine(images, matrices[:, :2, :], size, mode="bilinear", align_corners=True)


def mirror_permutation(n_nodes: int, pairs: Iterable[Sequence[int]]) -> np.ndarray:
    """``mirror[j]``: the node ``j`` becomes under a left/right flip, from the symmetric
    ``pairs`` of node indices (a node without a partner stays itself)."""
    mirror = np.arange(n_nodes)
    for a, b in pairs:
        mirror[a], mirror[b] = b, a
    return mirror


def swap_symmetric(points: torch.Tensor, flipped: torch.Tensor,
                   mirror: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Swap the node columns of flipped examples: ``points`` ``(B, n, k, 2)``; ``mirror[j]`` is
    the node that ``j`` becomes under a flip (``j`` itself when it has no symmetric partner)."""
    swapped = points[:, :, mirror]
    return torch.where(flipped[:, None, None, None], swapped, points)


def adjust_intensity(images: torch.Tensor, config: AugmentConfig,
                     generator: torch.Generator | None) -> torch.Tensor:  # fmt: skip
    """Random brightness, contrast and Gaussian noise per example, clipped to ``[0, 1]``."""
    n = images.shape[0]
    gain = _uniform(n, 1 - config.contrast, 1 + config.contrast, generator)[:, None, None, None]
    offset = _uniform(n, -config.brightness, config.brightness, generator)[:, None, None, None]
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    out = (images - mean) * gain + mean + offset
    if config.noise > 0:
        std = _uniform(n, 0, config.noise, generator)[:, None, None, None]
        out = out + torch.randn(images.shape, generator=generator) * std
    return out.clamp(0.0, 1.0)


#: Where a pasted animal's anchor lands from the centred one's, as fractions of the animals'
#: mean size (``animal_size``). Flies in clip.slp are 122 px across their labelled nodes; while
#: two touch (frames 1300-1499) their thoraxes are 72-95 px apart (0.6-0.78). 0.45-0.85 spans
#: bodies pressed together (55 px) to legs touching (104 px); closer placements (0.3) stacked
#: the flies and erased most of the centred one under the donor's cut-out.
ENCOUNTER_DISTANCE = (0.45, 0.85)
#: Radius of the cut-out around the donor's skeleton, as a fraction of its size, with the soft
#: edge below: on a fly (122 px) weight 1 to 15 px from its body axis and legs, 0 beyond 24 px,
#: about half its abdomen's width, so the body comes whole while the straight node-to-node
#: segments of bent legs still catch the legs; the synthetic bugs' parts (3-6 px around their
#: nodes, size 32 px) come whole too.
ENCOUNTER_RADIUS = 0.12
#: The mask falls from 1 to 0 over this further fraction of the size: a hard edge would be a
#: seam the model could learn to spot pasted animals by.
ENCOUNTER_SOFT_EDGE = 0.08


def animal_size(points: torch.Tensor) -> torch.Tensor:
    """Diagonal of the bounding box of each animal's visible nodes: ``(..., k, 2)`` -> ``(...)``
    (0 with a single visible node, NaN with none).

    A size any skeleton has (no head or tail node needs naming); for flies it is about twice
    the head-to-abdomen length, legs included.
    """
    visible = torch.isfinite(points).all(dim=-1, keepdim=True)
    low = torch.where(visible, points, torch.inf).amin(dim=-2)
    high = torch.where(visible, points, -torch.inf).amax(dim=-2)
    size = torch.linalg.vector_norm(high - low, dim=-1)
    return torch.where(visible.any(dim=(-2, -1)), size, torch.nan)


def encounter_matrices(donor_anchors: torch.Tensor, centres: torch.Tensor, scales: torch.Tensor,
                       distances: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """``(n, 3, 3)`` matrices from the donors' frames into the crops: the donor's anchor goes
    ``distances`` from ``centres`` (the centred animals' anchors, crop pixels) in a random
    direction, the donor turned by a random angle and resized by ``scales`` (the crops' own
    frame-to-crop zoom, so both animals keep their relative size).

    ``draws`` ``(n, 2)`` in ``[0, 1)``: rotation and direction, drawn by the caller so that
    every random number of a batch comes from its one generator in a fixed order.
    """
    angle = draws[:, 0] * 2 * math.pi
    direction = draws[:, 1] * 2 * math.pi
    cos, sin = torch.cos(angle) * scales, torch.sin(angle) * scales
    linear = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    offset = distances[:, None] * torch.stack([torch.cos(direction), torch.sin(direction)], -1)
    m = torch.eye(3).repeat(len(draws), 1, 1)
    m[:, :2, :2] = linear
    m[:, :2, 2] = centres + offset - (linear @ donor_anchors[:, :, None])[..., 0]
    return m


def skeleton_mask(queries: torch.Tensor, points: torch.Tensor, edges: torch.Tensor,
                  radius: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Soft cut-out of an animal at ``queries`` ``(B, N, 2)``: 1 within ``radius`` ``(B,)`` of
    its visible nodes ``points`` ``(B, k, 2)`` or the skeleton ``edges`` ``(E, 2)`` between
    them, falling linearly to 0 over a further ``soft`` ``(B,)``. Returns ``(B, N)``.

    Every query's distance to every segment at once, as ``(B, N, S)`` products (a crop's
    pixels make ``N`` large, so the few full-size passes are written out by hand). An edge
    with one end missing shrinks to its visible node, and nodes on no edge are segments of
    length 0, so every visible node counts.
    """
    k = points.shape[1]
    soft = soft.clamp_min(1e-6)  # coinciding nodes give an animal of size 0
    edges = edges.reshape(-1, 2)
    on_edge = torch.zeros(k, dtype=torch.bool)
    on_edge[edges.flatten()] = True
    lone = torch.nonzero(~on_edge)[:, 0]
    segments = torch.cat([edges, lone[:, None].expand(-1, 2)])
    a, b = points[:, segments[:, 0]], points[:, segments[:, 1]]  # (B, S, 2)
    a = torch.where(torch.isfinite(a), a, b)
    b = torch.where(torch.isfinite(b), b, a)  # both ends missing: NaN, never near
    d = b - a
    length2 = (d * d).sum(-1, keepdim=True).transpose(1, 2)  # (B, 1, S)
    ad = (a * d).sum(-1, keepdim=True)
    a2 = (a * a).sum(-1, keepdim=True)
    # [x, y, 1] @ [[d, -2a], [-a.d, |a|^2]]: (q - a).d and |q - a|^2 - |q|^2 in one product.
    q1 = torch.cat([queries, torch.ones_like(queries[..., :1])], dim=-1)  # (B, N, 3)
    coeffs = torch.cat([torch.cat([d, -ad], -1), torch.cat([-2 * a, a2], -1)], dim=1)
    products = q1 @ coeffs.transpose(1, 2)  # (B, N, 2S)
    n_seg = len(segments)
    qd, qa2 = products[..., :n_seg], products[..., n_seg:]  # (q - a).d, |q - a|^2 - |q|^2
    t = (qd / length2.clamp_min(1e-12)).clamp_(0.0, 1.0)
    dist2 = (t * length2).sub_(2 * qd).mul_(t).add_(qa2)  # |q - a - t d|^2 - |q|^2
    nearest = dist2.nan_to_num_(nan=torch.inf).amin(dim=-1) + (queries * queries).sum(-1)
    dist = nearest.clamp_min(0.0).sqrt()
    return ((radius[:, None] + soft[:, None] - dist) / soft[:, None]).clamp(0.0, 1.0)
