"""Tracking benchmark: tracker speed and identity accuracy on real data.

    .venv/bin/python benchmarks/bench_tracking.py [--data ../shared/data]

(a) Speed: frames/s of ``nn.tracking.track`` on the 1100 frames of
    centered_pair_predictions.slp (two animals, fragmented tracks; tracks removed first),
    per similarity, with and without constant-velocity prediction. Target: faster than
    1,000 frames/s.
(b) Identity: clip.slp's ground-truth poses with the tracks removed, tracked again and scored
    against the true tracks (ID switches, MOTA, IDF1). Target: zero ID switches. Also
    clip.predictions.slp (a model's head/thorax predictions) against clip.slp's tracks.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import attrs
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def _untracked(arrays):
    return attrs.evolve(arrays, predicted=np.ones(len(arrays), bool),
                        track=np.full(len(arrays), -1, np.int32), tracks=[])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()

    from napari_pose.core.io import load_labels
    from napari_pose.core.pose_arrays import labels_to_arrays
    from napari_pose.nn.metrics import compare, identity_metrics
    from napari_pose.nn.tracking import TrackerConfig, track

    pair = labels_to_arrays(load_labels(args.data / "sleap" / "hdf5_format_v1"
                                        / "centered_pair_predictions.slp"))  # fmt: skip
    pair = _untracked(pair)
    n_frames = len(np.unique(pair.frame))
    speed = {}
    for similarity in ("oks", "centroid", "iou"):
        for kalman in (False, True):
            config = TrackerConfig(similarity=similarity, max_tracks=2, kalman=kalman)
            start = time.perf_counter()
            track(pair, config)
            speed[f"{similarity}{' + kalman' if kalman else ''}"] = round(
                n_frames / (time.perf_counter() - start)
            )

    clip = labels_to_arrays(load_labels(args.data / "sleap" / "tracks" / "clip.slp"))
    truth = attrs.evolve(clip, predicted=np.zeros(len(clip), bool))
    retracked = track(_untracked(clip), TrackerConfig(max_tracks=2))
    own = identity_metrics(truth, retracked)

    pred = labels_to_arrays(load_labels(args.data / "sleap" / "tracks" / "clip.predictions.slp"))
    pred = pred.select(pred.predicted)
    keys = ("id_switches", "mota", "idf1", "oks_map")

    def scored(arrays):  # on the nodes both have (head, thorax), OKS scaled by the whole fly
        metrics, _ = compare(truth, arrays, predicted_frames_only=False)
        return {key: metrics[key] for key in keys}

    as_given = scored(pred)
    retracked_pred = scored(track(_untracked(pred), TrackerConfig(max_tracks=2)))
    print(json.dumps({
        "tracker_frames_per_s (centered_pair, 1100 frames)": speed,
        "clip ground truth, tracks removed and re-tracked": own,
        "clip.predictions.slp, its own tracks": as_given,
        "clip.predictions.slp, re-tracked by us": retracked_pred,
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
