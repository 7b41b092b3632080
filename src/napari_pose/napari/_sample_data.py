"""napari *Open Sample* entries, made by ``core.synthetic`` so the plugin needs no downloads.

The project sample is written to disk (video + ``.slp``) and opened through the real reader, so
it behaves exactly like a user's project: it can be edited, saved and reopened.
"""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir

from napari_pose.core.synthetic import make_synthetic, write_sample_project
from napari_pose.napari._reader import read_labels
from napari_pose.napari.convert import LayerData


def sample_folder() -> Path:
    """Where generated samples live: ``$NAPARI_POSE_CACHE`` or the user cache folder."""
    return Path(os.environ.get("NAPARI_POSE_CACHE") or user_cache_dir("napari-pose")) / "sample"


def sample_video() -> list[LayerData]:
    """The synthetic two-animal video alone, in memory."""
    frames = make_synthetic().frames
    return [(frames, {"name": "synthetic", "contrast_limits": (0, 255)}, "image")]


def sample_project() -> list[LayerData]:
    """The synthetic video with its exact ground-truth labels, as a project on disk."""
    return read_labels(write_sample_project(sample_folder()))
