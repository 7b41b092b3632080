"""Peak finding on confidence maps, with sub-pixel refinement, vectorised in torch.

``global_peaks`` takes the single best cell of each map (single-instance and centred-instance
models: one animal per map); ``local_peaks`` keeps every local maximum above a threshold
(centroid and bottom-up models: any number of animals). Both refine the grid cell by fitting a
parabola to the log of the map at the peak and its two neighbours along x and along y: the log
of a Gaussian is a parabola, so for the maps the models are trained to draw the fit is exact,
and it costs three reads per peak instead of a patch.

Coordinates are returned in input pixels, ``(x, y)``: grid cell ``(i, j)`` times the stride
(the convention of ``targets``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def _refine(maps: torch.Tensor, b: torch.Tensor, c: torch.Tensor, i: torch.Tensor,
            j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Sub-cell offsets ``(dx, dy)`` in ``[-0.5, 0.5]`` of peaks at cells ``(b, c, i, j)``."""
    h, w = maps.shape[-2:]

    def log(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        # The log of the five cells read per peak only, not of the whole maps.
        return maps[b, c, rows, cols].clamp_min(_EPS).log()

    def offset(before: torch.Tensor, at: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        curvature = before - 2 * at + after
        delta = 0.5 * (before - after) / torch.where(curvature < -_EPS, curvature, -1.0)
        return torch.where(curvature < -_EPS, delta, 0.0).clamp(-0.5, 0.5)

    at = log(i, j)
    dx = offset(log(i, (j - 1).clamp_min(0)), at, log(i, (j + 1).clamp_max(w - 1)))
    dy = offset(log((i - 1).clamp_min(0), j), at, log((i + 1).clamp_max(h - 1), j))
    # At the border a neighbour is the peak itself; no refinement toward the outside.
    dx = torch.where((j == 0) | (j == w - 1), 0.0, dx)
    dy = torch.where((i == 0) | (i == h - 1), 0.0, dy)
    return dx, dy


def global_peaks(maps: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best cell of every map: ``xy`` ``(B, C, 2)`` in input pixels and values ``(B, C)``."""
    batch, channels, h, w = maps.shape
    values, flat = maps.reshape(batch, channels, -1).max(dim=-1)
    i, j = flat // w, flat % w
    b = torch.arange(batch, device=maps.device)[:, None].expand(-1, channels)
    c = torch.arange(channels, device=maps.device)[None, :].expand(batch, -1)
    dx, dy = _refine(maps, b, c, i, j)
    xy = torch.stack([j + dx, i + dy], dim=-1) * stride
    return xy, values


def local_peaks(
    maps: torch.Tensor, stride: int, threshold: float = 0.2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every local maximum (3x3 non-maximum suppression) above ``threshold``.

    Returns flat tensors over all peaks: batch index ``(n,)``, channel ``(n,)``, ``xy`` ``(n, 2)``
    in input pixels and value ``(n,)``, ordered by batch, then channel, then position.
    """
    pooled = F.max_pool2d(maps, kernel_size=3, stride=1, padding=1)
    b, c, i, j = torch.nonzero((maps == pooled) & (maps > threshold), as_tuple=True)
    dx, dy = _refine(maps, b, c, i, j)
    xy = torch.stack([j + dx, i + dy], dim=-1) * stride
    return b, c, xy, maps[b, c, i, j]
