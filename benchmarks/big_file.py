"""Build large SLEAP prediction files by tiling real ones, for I/O and labelling benchmarks.

``clip.predictions.slp`` has a 2-node skeleton, so the 13-node file our benchmarks ask for tiles
the poses of ``clip.slp`` (2 flies x 13 nodes, 1500 frames) as *predicted* instances, with point
scores from a seeded generator. The HDF5 tables are written directly (no object per instance),
so a 100,000-frame file takes about a second to make.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np

PRED_POINT_DTYPE = np.dtype(
    [("x", "<f8"), ("y", "<f8"), ("visible", "?"), ("complete", "?"), ("score", "<f8")]
)


def tile_as_predictions(source: Path, dest: Path, n_frames: int, seed: int = 0) -> Path:
    """Write ``dest``: the instances of ``source`` repeated over ``n_frames`` frames, predicted."""
    shutil.copyfile(source, dest)
    with h5py.File(dest, "r+") as f:
        frames, inst, points = f["frames"][:], f["instances"][:], f["points"][:]
        n_src = len(frames)
        reps = -(-n_frames // n_src)
        k = np.arange(reps)

        frames_out = np.tile(frames, reps)
        rep_f = np.repeat(k, n_src).astype(np.uint64)
        frames_out["frame_id"] += rep_f * n_src
        frames_out["frame_idx"] += rep_f * n_src
        frames_out["instance_id_start"] += rep_f * len(inst)
        frames_out["instance_id_end"] += rep_f * len(inst)
        frames_out = frames_out[:n_frames]
        n_inst = int(frames_out["instance_id_end"][-1])

        inst_out = np.tile(inst, reps)
        rep_i = np.repeat(k, len(inst)).astype(np.uint64)
        inst_out["instance_id"] += rep_i.astype(np.int64) * len(inst)
        inst_out["frame_id"] += rep_i * n_src
        inst_out["point_id_start"] += rep_i * len(points)
        inst_out["point_id_end"] += rep_i * len(points)
        inst_out["instance_type"] = 1  # predicted
        inst_out["from_predicted"] = -1
        inst_out["score"] = 1.0
        inst_out = inst_out[:n_inst]
        n_points = int(inst_out["point_id_end"][-1])

        pred = np.zeros(len(points), PRED_POINT_DTYPE)
        for name in ("x", "y", "visible", "complete"):
            pred[name] = points[name]
        pred_out = np.tile(pred, reps)[:n_points]
        pred_out["score"] = np.random.default_rng(seed).uniform(0.5, 1.0, n_points)

        for name, table in (("frames", frames_out), ("instances", inst_out),
                            ("pred_points", pred_out), ("points", points[:0])):  # fmt: skip
            del f[name]
            f.create_dataset(name, data=table, maxshape=(None,), chunks=True)
    return dest
