"""Training targets: confidence maps and part-affinity fields, vectorised in torch.

Targets are drawn on the model's output grid: cell ``(i, j)`` of a map at output stride ``s``
sits at input pixel ``(i * s, j * s)`` (SLEAP's convention, pixel centres at integers), so a
peak found on the grid maps back to input pixels by multiplying by the stride.

Both functions take points as ``(..., n_instances, k, 2)``: a batch of examples padded to the
same number of instances with NaN rows, so a whole batch is drawn in one call.
"""

from __future__ import annotations

import torch


def grid(height: int, width: int, stride: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Input-pixel coordinates ``(ys, xs)`` of the output grid's cells, each ``(h, w)``."""
    ys = torch.arange(height, device=device, dtype=torch.float32) * stride
    xs = torch.arange(width, device=device, dtype=torch.float32) * stride
    grid_ys, grid_xs = torch.meshgrid(ys, xs, indexing="ij")
    return grid_ys, grid_xs


def confidence_maps(points: torch.Tensor, shape: tuple[int, int], stride: int,
                    sigma: float) -> torch.Tensor:  # fmt: skip
    """One Gaussian map per node, the maximum over instances: ``(..., k, h, w)`` in ``[0, 1]``.

    Args:
        points: ``(..., n_instances, k, 2)`` ``(x, y)`` in input pixels; NaN for missing or
            occluded nodes (and padding rows), which get no peak.
        shape: ``(h, w)`` of the output grid.
        stride: Output stride of the model.
        sigma: Gaussian spread in input pixels.
    """
    if points.shape[-3] == 0:
        return torch.zeros((*points.shape[:-3], points.shape[-2], *shape), device=points.device)
    ys, xs = grid(*shape, stride, device=points.device)
    x = points[..., 0, None, None]  # (..., n, k, 1, 1)
    y = points[..., 1, None, None]
    d2 = (xs - x) ** 2 + (ys - y) ** 2
    maps = torch.exp(-d2 / (2 * sigma**2)).nan_to_num(0.0)
    return maps.amax(dim=-4)


def part_affinity_fields(points: torch.Tensor, edges: torch.Tensor, shape: tuple[int, int],
                         stride: int, width: float) -> torch.Tensor:  # fmt: skip
    """Unit vectors along each skeleton edge near its limb: ``(..., 2 * n_edges, h, w)``.

    Channels are ``(x, y)`` per edge in skeleton order. A cell gets an edge's direction when
    it lies within ``width`` pixels of the segment between the two nodes of an instance; cells
    on limbs of several instances get their mean direction.

    Args:
        points: ``(..., n_instances, k, 2)`` ``(x, y)`` in input pixels, NaN where missing.
        edges: ``(n_edges, 2)`` node indices (source, destination).
    """
    ys, xs = grid(*shape, stride, device=points.device)
    src = points[..., edges[:, 0], :]  # (..., n, e, 2)
    dst = points[..., edges[:, 1], :]
    vec = dst - src
    length = vec.norm(dim=-1, keepdim=True)  # (..., n, e, 1)
    unit = vec / length.clamp_min(1e-6)
    px = xs - src[..., 0, None, None]  # (..., n, e, h, w)
    py = ys - src[..., 1, None, None]
    along = px * unit[..., 0, None, None] + py * unit[..., 1, None, None]
    across = (px * unit[..., 1, None, None] - py * unit[..., 0, None, None]).abs()
    on_limb = (along >= -width) & (along <= length[..., None] + width) & (across <= width)
    on_limb &= torch.isfinite(length[..., None]) & (length[..., None] > 0)
    weight = on_limb.float()  # (..., n, e, h, w)
    count = weight.sum(dim=-4).clamp_min(1.0)  # (..., e, h, w)
    directions = unit.nan_to_num(0.0)[..., None, None, :]  # (..., n, e, 1, 1, 2)
    field = (weight[..., None] * directions).sum(dim=-5) / count[..., None]  # (..., e, h, w, 2)
    field = field.movedim(-1, -3)  # (..., e, 2, h, w)
    return field.reshape(*field.shape[:-4], -1, *shape)
