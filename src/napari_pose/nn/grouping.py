"""Bottom-up grouping: assemble detected nodes into animals with part-affinity fields.

For each skeleton edge, every (source peak, destination peak) pair is scored by the line
integral of the edge's PAF along the segment between them (vectorised over all pairs at once):
the mean projection of the field onto the segment's direction, sampled at ``n_samples`` points.
Pairs are matched one-to-one per edge with the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``), and the matched connections are merged into
instances edge by edge, as in OpenPose and SLEAP.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


@attrs.frozen
class GroupingConfig:
    """Acceptance rules for a connection between two peaks.

    Attributes:
        n_samples: Points sampled along each candidate segment.
        min_projection: A sample supports the connection when the PAF projects above this.
        min_support: Fraction of samples that must support it.
        max_length: Longest accepted segment in input pixels (``None``: no limit); longer
            candidates are penalised rather than cut off, as SLEAP does.
    """

    n_samples: int = 10
    min_projection: float = 0.2
    min_support: float = 0.8
    max_length: float | None = None


def line_integrals(pafs: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, stride: int,
                   config: GroupingConfig) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Scores and validity of every ``src`` x ``dst`` pair for one edge.

    Args:
        pafs: ``(2, h, w)`` the edge's field (x then y component).
        src: ``(m, 2)`` source peaks, ``(x, y)`` in input pixels.
        dst: ``(n, 2)`` destination peaks.

    Returns:
        ``(m, n)`` scores (mean projection minus a length penalty) and ``(m, n)`` validity.
    """
    h, w = pafs.shape[-2:]
    vec = dst[None, :, :] - src[:, None, :]  # (m, n, 2)
    length = vec.norm(dim=-1).clamp_min(1e-6)
    unit = vec / length[..., None]
    t = torch.linspace(0, 1, config.n_samples, device=pafs.device)
    samples = src[:, None, None, :] + t[None, None, :, None] * vec[:, :, None, :]  # (m,n,S,2)
    cells = (samples / stride).round().long()
    col = cells[..., 0].clamp(0, w - 1)
    row = cells[..., 1].clamp(0, h - 1)
    field = pafs[:, row, col]  # (2, m, n, S)
    projection = field[0] * unit[..., None, 0] + field[1] * unit[..., None, 1]
    score = projection.mean(dim=-1)
    if config.max_length is not None:
        score = score + torch.clamp(config.max_length / length - 1, max=0.0)
    support = (projection > config.min_projection).float().mean(dim=-1)
    return score, (support >= config.min_support) & (score > 0)


def group_instances(
    peaks: list[tuple[np.ndarray, np.ndarray]],
    pafs: torch.Tensor,
    edges: np.ndarray,
    stride: int,
    config: GroupingConfig | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group one frame's peaks into instances.

    Args:
        peaks: Per node, ``(xy (m, 2), values (m,))`` in input pixels.
        pafs: ``(2 * n_edges, h, w)`` the frame's fields.
        edges: ``(n_edges, 2)`` node indices.

    Returns:
        ``points`` ``(n, k, 2)`` (NaN where an instance has no such node), ``point_scores``
        ``(n, k)`` and instance ``scores`` ``(n,)`` (mean connection score times the fraction
        of edges found), best first.
    """
    config = config or GroupingConfig()
    k = len(peaks)
    assignment: list[np.ndarray] = []  # per instance: (k,) peak index or -1
    edge_score: list[float] = []
    owner = [np.full(len(xy), -1) for xy, _ in peaks]  # instance of each peak
    for e, (s, d) in enumerate(edges):
        src, dst = peaks[s][0], peaks[d][0]
        if len(src) == 0 or len(dst) == 0:
            continue
        score_t, valid_t = line_integrals(
            pafs[2 * e : 2 * e + 2],
            torch.as_tensor(src, dtype=torch.float32, device=pafs.device),
            torch.as_tensor(dst, dtype=torch.float32, device=pafs.device),
            stride,
            config,
        )
        score, valid = score_t.cpu().numpy(), valid_t.cpu().numpy()
        rows, cols = linear_sum_assignment(np.where(valid, -score, 1e6))
        for i, j in zip(rows, cols, strict=True):
            if not valid[i, j]:
                continue
            a, b = owner[s][i], owner[d][j]
            if a < 0 and b < 0:
                assignment.append(np.full(k, -1))
                edge_score.append(0.0)
                a = b = len(assignment) - 1
                assignment[a][s], assignment[a][d] = i, j
                owner[s][i] = owner[d][j] = a
            elif a >= 0 and b < 0 and assignment[a][d] < 0:
                assignment[a][d], owner[d][j] = j, a
            elif b >= 0 and a < 0 and assignment[b][s] < 0:
                assignment[b][s], owner[s][i], a = i, b, b
            elif a >= 0 and b >= 0 and a != b:
                merged = np.maximum(assignment[a], assignment[b])
                if ((assignment[a] >= 0) & (assignment[b] >= 0)).any():
                    continue  # both animals already have one of these nodes
                assignment[a] = merged
                edge_score[a] += edge_score[b]
                for node in np.flatnonzero(assignment[b] >= 0):
                    owner[node][assignment[b][node]] = a
                assignment[b] = np.full(k, -1)
                edge_score[b] = 0.0
            else:
                continue
            edge_score[a] += float(score[i, j])
    keep = [n for n, a in enumerate(assignment) if (a >= 0).any()]
    points = np.full((len(keep), k, 2), np.nan, dtype=np.float32)
    point_scores = np.full((len(keep), k), np.nan, dtype=np.float32)
    for row, n in enumerate(keep):
        for node in np.flatnonzero(assignment[n] >= 0):
            xy, values = peaks[node]
            points[row, node] = xy[assignment[n][node]]
            point_scores[row, node] = values[assignment[n][node]]
    n_edges = max(1, len(edges))
    scores = np.array([edge_score[n] / n_edges for n in keep], dtype=np.float32)
    order = np.argsort(-scores, kind="stable")
    return points[order], point_scores[order], scores[order]
