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

The random draws come from the ``generator`` passed in (seeded, so training runs repeat);
``None`` draws from torch's global generator.
"""

from __future__ import annotations

import math
from typing import Any

import attrs
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
    """

    rotation: float = 180.0
    scale: tuple[float, float] = attrs.field(default=(0.9, 1.1), converter=tuple)
    translate: float = 0.03
    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.2
    noise: float = 0.02

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML."""
        data = attrs.asdict(self)
        data["scale"] = list(self.scale)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        """Inverse of ``to_dict``."""
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
