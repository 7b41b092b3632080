"""Close-encounter augmentation: a second animal pasted against the centred one of a crop.

Synthetic frames (exact keypoints, bright heads and dark abdomens) make every claim checkable:
where the donor lands, which pixels change, which target nodes it hides.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import sleap_io as sio
import torch
import yaml
from scipy.ndimage import map_coordinates

from napari_pose.core.synthetic import ABDOMEN, HEAD, THORAX, SyntheticData, make_synthetic
from napari_pose.nn.augment import (
    AugmentConfig,
    adjust_intensity,
    random_affine,
    skeleton_mask,
    swap_symmetric,
    transform_points,
    warp,
)
from napari_pose.nn.data import (
    Encounters,
    LabelledFrames,
    anchor_points,
    crop_matrices,
    make_batch,
    paste_encounters,
)

SIZE = (128, 128)
#: Geometric augmentation only, so a batch with encounters differs from one without only where
#: an animal was pasted.
GEOMETRY = AugmentConfig(brightness=0.0, contrast=0.0, noise=0.0)


def _frames(*videos: SyntheticData, channels: int = 1) -> LabelledFrames:
    """Every frame of each synthetic video as labelled frames (one ``sio.Video`` per part)."""
    images, points, keys = [], [], []
    for v, video in enumerate(videos):
        images += [np.repeat(frame[..., None], channels, axis=-1) for frame in video.frames]
        visible = np.where(video.visible[..., None], video.points, np.nan)
        points += list(visible.astype(np.float32))
        keys += [(v, i) for i in range(len(video.frames))]
    return LabelledFrames(videos[0].skeleton, [sio.Video(f"v{v}.mp4") for v in range(len(videos))],
                          np.array(keys), images, points)  # fmt: skip


@pytest.fixture(scope="module")
def data() -> LabelledFrames:
    return _frames(make_synthetic(n_frames=4, size=256, n_animals=2, seed=1))


def _batch(data: LabelledFrames, rows: np.ndarray, encounter: float, seed: int,
           config: AugmentConfig = GEOMETRY, crop: bool = True):  # fmt: skip
    return make_batch(data, rows, size=SIZE, scale=1.0, anchor=THORAX, crop=crop,
                      augment=attrs.evolve(config, encounter=encounter),
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip


def _paste(data: LabelledFrames, rows: np.ndarray, seed: int):
    """Plain augmented crops, and the same crops after ``paste_encounters`` (probability 1)."""
    plain = _batch(data, rows, 0.0, seed)
    pasted = paste_encounters(data, rows, plain.images, plain.points, plain.anchors[:, 0],
                              plain.matrices, anchor=THORAX, probability=1.0,
                              generator=torch.Generator().manual_seed(seed))  # fmt: skip
    return plain, pasted


def _donor_nodes(data: LabelledFrames, pasted: Encounters) -> torch.Tensor:
    """``(B, k, 2)`` the pasted animals' keypoints in crop pixels."""
    donor = torch.from_numpy(np.concatenate(data.points)[pasted.donors])
    return transform_points(donor, pasted.matrices)


def _distance_to(points: torch.Tensor) -> torch.Tensor:
    """``(B, h, w)`` distance of every crop pixel to ``points`` ``(B, 2)``."""
    ys, xs = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).float()
    return torch.linalg.vector_norm(pixels - points[:, None, None], dim=-1)


def _animal_size(data: LabelledFrames) -> float:
    """The largest bounding-box diagonal of a labelled animal, in frame pixels."""
    points = np.concatenate(data.points)
    return float(np.linalg.norm(np.nanmax(points, 1) - np.nanmin(points, 1), axis=-1).max())


def test_every_crop_gets_an_animal_next_to_the_centre_and_the_rest_is_untouched(data):
    rows = np.tile(data.instances(), (2, 1))
    plain = _batch(data, rows, 0.0, seed=0)
    batch = _batch(data, rows, 1.0, seed=0)
    # Beyond float rounding: the intensity step, though it changes nothing, subtracts and adds
    # back the image mean, which the pasted animal moves.
    changed = (batch.images - plain.images).abs().amax(dim=1) > 1e-5
    distance = _distance_to(plain.anchors[:, 0])
    # Crops zoom by up to 1.1. The donor's anchor lands within 0.85 of an animal's size of the
    # centred one, its nodes within a size of its anchor, its cut-out 0.2 of a size around them.
    size = 1.1 * _animal_size(data)
    assert (changed & (distance < size)).flatten(1).any(dim=1).all()
    far = distance > 2.1 * size
    assert far.any() and not changed[far].any()
    # Through paste_encounters itself: every pixel outside the cut-out keeps its exact value,
    # and the donor is another animal than the centred one.
    _, pasted = _paste(data, rows, seed=0)
    changed = (pasted.images != plain.images).any(dim=1)
    assert changed.flatten(1).any(dim=1).all() and not changed[pasted.masks == 0].any()
    counts = np.array([len(p) for p in data.points])
    own = (np.cumsum(counts) - counts)[rows[:, 0]] + rows[:, 1]
    assert (pasted.donors >= 0).all() and (pasted.donors != own).all()


def test_pasted_animal_lies_where_its_transformed_keypoints_say(data):
    rows = np.tile(data.instances(), (2, 1))
    plain, pasted = _paste(data, rows, seed=1)
    nodes = _donor_nodes(data, pasted)
    pixel = nodes.round().long()
    inside = ((pixel >= 0) & (pixel < SIZE[0])).all(dim=-1)
    assert inside[:, [HEAD, ABDOMEN]].float().mean() > 0.8
    b, j = torch.nonzero(inside, as_tuple=True)
    x, y = pixel[b, j].T
    value = pasted.images[b, 0, y, x]
    # The same pixels sampled straight from the donors' frames (bilinear, as the warp does).
    back = transform_points(pixel[b, j][:, None].float(), torch.linalg.inv(pasted.matrices[b]))
    frames = data.instances()[pasted.donors[b.numpy()], 0]
    expected = [map_coordinates(data.images[f][..., 0] / 255.0, [[xy[1]], [xy[0]]], order=1)[0]
                for f, xy in zip(frames, back[:, 0].numpy(), strict=True)]  # fmt: skip
    np.testing.assert_allclose(value.numpy(), expected, atol=1e-4)
    assert (pasted.masks[b, y, x] == 1).all()
    # And they show the right parts: the synthetic head is bright, the abdomen dark.
    assert (value[j == HEAD] > 0.7).all() and (value[j == ABDOMEN] < 0.35).all()


def test_targets_are_the_centred_animal_with_covered_nodes_missing(data):
    rows = np.tile(data.instances(), (4, 1))
    plain = _batch(data, rows, 0.0, seed=2)
    batch = _batch(data, rows, 1.0, seed=2)
    assert batch.points.shape == plain.points.shape == (len(rows), 1, data.n_nodes, 2)
    kept = torch.isfinite(batch.points).all(dim=-1)
    was = torch.isfinite(plain.points).all(dim=-1)
    assert not (kept & ~was).any()
    assert torch.equal(batch.points[kept], plain.points[kept])  # never the donor's nodes
    hidden = was & ~kept
    assert hidden.any() and (kept.sum(dim=-1) > 0).all()
    assert torch.equal(batch.anchors, plain.anchors)
    # Hidden exactly where the donor's cut-out weighs over 1/2 (read off the pixel mask).
    plain, pasted = _paste(data, rows, seed=2)
    assert torch.equal(torch.isnan(pasted.points).any(dim=-1)[:, 0],
                       torch.isnan(plain.points).any(dim=-1)[:, 0] | pasted.occluded)  # fmt: skip
    grid = plain.points[:, 0].nan_to_num(-10.0) / (SIZE[0] - 1) * 2 - 1
    weight = torch.nn.functional.grid_sample(pasted.masks[:, None], grid[:, None],
                                             align_corners=True)[:, 0, 0]  # fmt: skip
    assert pasted.occluded.any()
    assert (weight[pasted.occluded] > 0.4).all() and (weight[~pasted.occluded] < 0.6).all()


def test_encounters_repeat_with_the_seed(data):
    rows = data.instances()
    first, again = (
        _batch(data, rows, 1.0, 7, AugmentConfig()),
        _batch(data, rows, 1.0, 7, AugmentConfig()),
    )
    assert torch.equal(first.images, again.images)
    torch.testing.assert_close(first.points, again.points, rtol=0, atol=0, equal_nan=True)
    other = _batch(data, rows, 1.0, 8, AugmentConfig())
    assert not torch.equal(first.images, other.images)


def test_no_encounter_gives_the_batch_of_before(data):
    """``encounter=0`` draws nothing more: the batch is the one made before the option existed
    (rebuilt here step by step); whole frames and single-animal projects never change."""
    rows, config = data.instances(), AugmentConfig()
    batch = _batch(data, rows, 0.0, 4, config)
    generator = torch.Generator().manual_seed(4)
    own = [data.points[f][[j]] for f, j in rows]
    centres = torch.from_numpy(np.concatenate([anchor_points(p, THORAX) for p in own]))
    extra, flipped = random_affine(len(rows), SIZE, config, generator, can_flip=True)
    matrices = extra @ crop_matrices(centres.float(), 1.0, SIZE[0])
    points = swap_symmetric(torch.from_numpy(np.stack(own)), flipped, torch.from_numpy(data.mirror))
    frames = torch.from_numpy(np.stack([data.images[f] for f in rows[:, 0]])).permute(0, 3, 1, 2)
    images = adjust_intensity(warp(frames.float() / 255, matrices, SIZE), config, generator)
    assert torch.equal(batch.images, images)
    torch.testing.assert_close(batch.points, transform_points(points, matrices), rtol=0, atol=0,
                               equal_nan=True)  # fmt: skip

    frames_only = np.arange(len(data))
    assert torch.equal(_batch(data, frames_only, 1.0, 5, crop=False).images,
                       _batch(data, frames_only, 0.0, 5, crop=False).images)  # fmt: skip
    alone = _frames(make_synthetic(n_frames=1, size=256, n_animals=1, seed=3))
    one = alone.instances()
    assert torch.equal(_batch(alone, one, 1.0, 5).images, _batch(alone, one, 0.0, 5).images)


def test_augment_config_yaml_round_trip_with_and_without_encounter():
    config = AugmentConfig(rotation=30.0, encounter=0.25)
    text = yaml.safe_dump(config.to_dict())
    assert "encounter: 0.25" in text
    assert AugmentConfig.from_dict(yaml.safe_load(text)) == config
    old = config.to_dict()
    del old["encounter"]  # a config.yaml written before the option existed
    loaded = AugmentConfig.from_dict(yaml.safe_load(yaml.safe_dump(old)))
    assert loaded.encounter == 0.0 and loaded == attrs.evolve(config, encounter=0.0)
    with pytest.raises(ValueError):
        AugmentConfig(encounter=1.5)


def test_encounters_on_rgb_frames_of_different_sizes():
    data = _frames(make_synthetic(n_frames=3, size=256, seed=1),
                   make_synthetic(n_frames=3, size=192, seed=2), channels=3)  # fmt: skip
    # The second video's frames end just right of the first animal's thorax: pasting that
    # animal must leave out what its frame does not show.
    for f in range(3, 6):
        data.images[f] = data.images[f][:, : int(data.points[f][0, THORAX, 0]) + 2]
    rows = np.tile(data.instances(), (3, 1))
    plain, pasted = _paste(data, rows, seed=3)
    assert pasted.images.shape == (len(rows), 3, *SIZE)
    assert (pasted.images != plain.images).flatten(1).any(dim=1).all()
    # Grey frames in three channels stay grey: every channel got the same donor pixels.
    assert torch.equal(pasted.images[:, 0], pasted.images[:, 1])
    assert torch.equal(pasted.images[:, 0], pasted.images[:, 2])
    donor_frames = data.instances()[pasted.donors, 0]
    assert {data.keys[f, 0] for f in donor_frames} == {0, 1}  # donors from both videos
    # No pixel from beyond a donor's frame edge is pasted (the warp would make it black).
    ys, xs = torch.meshgrid(torch.arange(SIZE[0]), torch.arange(SIZE[1]), indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).float().reshape(1, -1, 2).expand(len(rows), -1, 2)
    source = transform_points(pixels, torch.linalg.inv(pasted.matrices))
    wh = torch.tensor([data.images[f].shape[1::-1] for f in donor_frames], dtype=torch.float32)
    beyond = ((source < 0) | (source > wh[:, None] - 1)).any(dim=-1).reshape(-1, *SIZE)
    nodes = _donor_nodes(data, pasted).round().long()
    b, j = torch.nonzero(((nodes >= 0) & (nodes < SIZE[0])).all(dim=-1), as_tuple=True)
    assert beyond[b, nodes[b, j, 1], nodes[b, j, 0]].any()  # some donors are cut by their frame
    assert not (pasted.masks[beyond] > 0).any()


def test_skeleton_mask_is_the_soft_distance_to_the_nearest_limb():
    """Against a plain (B, N, S, 2) computation, with missing nodes and a node on no edge."""
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(3, 6, 2, generator=generator) * 100
    points[0, 2] = points[1, 0] = torch.nan
    edges = torch.tensor([[0, 1], [1, 2], [1, 3], [3, 4]])  # node 5 on no edge
    queries = torch.rand(3, 400, 2, generator=generator) * 100
    radius, soft = torch.tensor([8.0, 4.0, 12.0]), torch.tensor([5.0, 2.0, 6.0])
    mask = skeleton_mask(queries, points, edges, radius, soft)

    segments = torch.cat([edges, torch.arange(6)[:, None].expand(6, 2)])
    a, b = points[:, None, segments[:, 0]], points[:, None, segments[:, 1]]  # (B, 1, S, 2)
    q = queries[:, :, None]
    t = (((q - a) * (b - a)).sum(-1) / ((b - a) ** 2).sum(-1).clamp_min(1e-12)).clamp(0, 1)
    distance = torch.linalg.vector_norm(q - a - t[..., None] * (b - a), dim=-1)
    nearest = distance.nan_to_num(nan=torch.inf).amin(dim=-1)
    expected = ((radius[:, None] + soft[:, None] - nearest) / soft[:, None]).clamp(0, 1)
    torch.testing.assert_close(mask, expected, atol=1e-3, rtol=0)
    assert (mask == 1).any() and ((mask > 0) & (mask < 1)).any() and (mask == 0).any()
