"""Confidence-map and part-affinity-field targets land where the keypoints are."""

from __future__ import annotations

import math

import torch

from napari_pose.nn.targets import confidence_maps, part_affinity_fields


def test_confidence_map_peaks_at_each_node_and_skips_missing():
    points = torch.tensor([[[40.0, 20.0], [float("nan"), float("nan")]],
                           [[8.0, 48.0], [60.0, 4.0]]])  # fmt: skip
    maps = confidence_maps(points, (16, 16), stride=4, sigma=2.0)
    assert maps.shape == (2, 16, 16)
    peaks = maps.flatten(1).topk(2, dim=1).indices
    cells = {(int(i) // 16, int(i) % 16) for i in peaks[0]}
    assert cells == {(5, 10), (12, 2)}  # (y/4, x/4) of both instances' node 0
    assert maps[1].argmax() == 1 * 16 + 15  # only instance 1 has node 1, at (4, 60)
    assert math.isclose(float(maps.max()), 1.0)
    # A node off-grid by half a cell still peaks at the nearest cell, below 1.
    off = confidence_maps(torch.tensor([[[42.0, 20.0]]]), (16, 16), 4, 2.0)[0]
    assert off.argmax() == 5 * 16 + 10 or off.argmax() == 5 * 16 + 11
    assert float(off.max()) < 1.0


def test_pafs_point_along_limbs_only():
    points = torch.tensor([[[8.0, 32.0], [56.0, 32.0]]])  # a horizontal limb, y = 32
    edges = torch.tensor([[0, 1]])
    pafs = part_affinity_fields(points, edges, (16, 16), stride=4, width=3.0)
    assert pafs.shape == (2, 16, 16)
    on = pafs[:, 8, 4:14]  # row y=32, x from 16 to 52
    torch.testing.assert_close(on[0], torch.ones(10))  # x component 1
    torch.testing.assert_close(on[1], torch.zeros(10))
    assert pafs[:, 2].abs().sum() == 0 and pafs[:, 14].abs().sum() == 0  # far from the limb
    # A missing node means no field for that edge.
    missing = torch.tensor([[[8.0, 32.0], [float("nan"), float("nan")]]])
    assert part_affinity_fields(missing, edges, (16, 16), 4, 3.0).abs().sum() == 0
