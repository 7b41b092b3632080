"""Hard examples for the centred-instance model: crops centred towards a neighbouring animal,
and online hard keypoint mining in the loss (issue 12's levers for animals that touch)."""

from __future__ import annotations

import numpy as np
import pytest
import sleap_io as sio
import torch

from napari_pose.core.synthetic import THORAX, make_synthetic
from napari_pose.nn.augment import AugmentConfig
from napari_pose.nn.data import LabelledFrames, anchor_points, make_batch
from napari_pose.nn.models import ModelConfig
from napari_pose.nn.pipelines import StageConfig, stage_loss

SIZE = (128, 128)
#: No warp, no intensity change: a crop's pixels are the frame's, shifted.
STILL = AugmentConfig(rotation=0.0, scale=(1.0, 1.0), translate=0.0, flip=False,
                      brightness=0.0, contrast=0.0, noise=0.0)  # fmt: skip


@pytest.fixture(scope="module")
def data() -> LabelledFrames:
    video = make_synthetic(n_frames=6, size=256, n_animals=2, seed=3)
    points = list(np.where(video.visible[..., None], video.points, np.nan).astype(np.float32))
    return LabelledFrames(video.skeleton, [sio.Video("v.mp4")], np.array([(0, i) for i in range(6)]),
                          [frame[..., None] for frame in video.frames], points)  # fmt: skip


def _crops(data: LabelledFrames, rows: np.ndarray, towards: float, seed: int = 0):
    config = AugmentConfig(**{**STILL.to_dict(), "towards_neighbour": towards})
    return make_batch(data, rows, size=SIZE, scale=1.0, anchor=THORAX, crop=True, augment=config,
                      generator=torch.Generator().manual_seed(seed))  # fmt: skip


def test_crops_move_part_of_the_way_to_the_nearest_other_animal(data):
    rows = data.instances()
    plain, shifted = _crops(data, rows, 0.0), _crops(data, rows, 1.0)
    centre = (SIZE[0] - 1) / 2
    own = shifted.anchors[:, 0].numpy()  # the crop's own animal, in crop pixels
    assert np.allclose(plain.anchors[:, 0].numpy(), centre, atol=1e-3)
    for row, (frame, j) in enumerate(rows):
        anchors = anchor_points(data.points[frame], THORAX)
        towards = anchors[1 - j] - anchors[j]  # two animals: the other one is the neighbour
        moved = centre - own[row]  # where the crop centre went, from its animal
        fraction = moved @ towards / (towards @ towards)
        assert 0.10 - 1e-3 <= fraction <= 0.45 + 1e-3
        assert np.allclose(moved, fraction * towards, atol=1e-2)  # straight towards it
        # The targets are still the crop's own animal, moved with the crop.
        assert np.allclose(shifted.points[row].numpy() - own[row],
                           plain.points[row].numpy() - centre, equal_nan=True, atol=1e-3)  # fmt: skip


def test_no_shift_gives_the_batch_of_before_and_a_lone_animal_stays_centred(data):
    rows = data.instances()
    plain = _crops(data, rows, 0.0, seed=4)
    again = make_batch(data, rows, size=SIZE, scale=1.0, anchor=THORAX, crop=True, augment=STILL,
                       generator=torch.Generator().manual_seed(4))  # fmt: skip
    assert torch.equal(plain.images, again.images)
    alone = LabelledFrames(data.skeleton, data.videos, data.keys[:1], data.images[:1],
                           [data.points[0][:1]])  # fmt: skip
    lone = _crops(alone, alone.instances(), 1.0)
    assert np.allclose(lone.anchors[0, 0].numpy(), (SIZE[0] - 1) / 2, atol=1e-3)


def test_towards_neighbour_is_a_probability():
    with pytest.raises(ValueError):
        AugmentConfig(towards_neighbour=1.5)
    assert AugmentConfig.from_dict({"flip": False}).towards_neighbour == 0.0


def test_hard_keypoint_mining_weighs_the_node_a_model_misses():
    target = torch.zeros(1, 4, 8, 8)
    concentrated = target.clone()
    concentrated[0, 0] = 0.2  # one node wholly wrong
    spread = target.clone()
    spread[0, :] = 0.1  # every node a little wrong: the same plain mean squared error
    plain = [stage_loss({"confmaps": o}, {"confmaps": target}) for o in (concentrated, spread)]
    assert torch.isclose(plain[0], plain[1])
    hard = [stage_loss({"confmaps": o}, {"confmaps": target}, hard_keypoints=1.0)
            for o in (concentrated, spread)]  # fmt: skip
    assert hard[0] > hard[1] > plain[1]
    # An unknown node is left out of the hard half as of the mean.
    known = torch.tensor([[0.0, 1.0, 1.0, 1.0]])
    assert stage_loss({"confmaps": concentrated}, {"confmaps": target}, known, 1.0) == 0


def test_stage_config_records_hard_keypoints():
    stage = StageConfig(kind="centered_instance", model=ModelConfig(), input_size=(64, 64),
                        hard_keypoints=2.0)  # fmt: skip
    assert StageConfig.from_dict(stage.to_dict()).hard_keypoints == 2.0
    old = stage.to_dict()
    del old["hard_keypoints"]  # a package written before the option
    assert StageConfig.from_dict(old).hard_keypoints == 0.0
