"""Tiny model packages for tests that need a trained model but not a good one (seconds)."""

from __future__ import annotations

from pathlib import Path

import attrs
import sleap_io as sio
import torch

from napari_pose.nn.data import load_frames
from napari_pose.nn.models import UNetConfig
from napari_pose.nn.pipelines import default_stages
from napari_pose.nn.train import TrainConfig, train

TINY = UNetConfig(filters=4, max_stride=16, output_stride=2)


def train_tiny(labels: sio.Labels, out: Path) -> Path:
    """Train a 4-filter single-instance model on ``labels`` for two steps into ``out``, on one
    thread (the other core stays free for the rest of the suite)."""
    stages = {k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=TINY))
              for k, s in default_stages(load_frames(labels), "single_instance").items()}  # fmt: skip
    config = TrainConfig(pipeline="single_instance", epochs=1, steps_per_epoch=2, batch_size=2,
                         device="cpu")  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        list(train(labels, out, config, stages=stages))
    finally:
        torch.set_num_threads(threads)
    return out
