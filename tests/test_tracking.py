"""Identity tracking and identity metrics on real data, and the track/evaluate commands."""

from __future__ import annotations

import json

import attrs
import numpy as np
import pytest

from napari_pose.cli import main
from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.pose_arrays import arrays_to_labels, labels_to_arrays
from napari_pose.nn.metrics import identity_metrics
from napari_pose.nn.tracking import TrackerConfig, similarity, track


def _as_untracked_predictions(arrays):
    return attrs.evolve(arrays, predicted=np.ones(len(arrays), bool),
                        score=np.ones(len(arrays), np.float32),
                        track=np.full(len(arrays), -1, np.int32), tracks=[])  # fmt: skip


@pytest.fixture(scope="module")
def clip(sleap_dir):
    return labels_to_arrays(load_labels(sleap_dir / "tracks" / "clip.slp"))


@pytest.mark.parametrize("kind", ["oks", "centroid", "iou"])
def test_similarity_prefers_the_same_animal(kind):
    a = np.array([[[0.0, 0.0], [10.0, 0.0], [10.0, 8.0]]])
    b = np.concatenate([a + 1.0, a + 40.0])
    sim = similarity(kind, a, b)
    assert sim.shape == (1, 2) and sim[0, 0] > sim[0, 1] >= 0


@pytest.mark.parametrize("kalman", [False, True])
def test_clip_ground_truth_poses_are_tracked_without_identity_switches(clip, kalman):
    untracked = _as_untracked_predictions(clip)
    tracked = track(untracked, TrackerConfig(max_tracks=2, kalman=kalman))
    assert len(tracked.tracks) == 2 and (tracked.track >= 0).all()
    truth = attrs.evolve(clip, predicted=np.zeros(len(clip), bool))
    metrics = identity_metrics(truth, tracked)
    assert metrics["id_switches"] == 0
    assert metrics["mota"] == pytest.approx(1.0) and metrics["idf1"] == pytest.approx(1.0)


def test_identity_metrics_count_a_swap(clip):
    truth = attrs.evolve(clip, predicted=np.zeros(len(clip), bool))
    swapped = clip.track.copy()
    late = clip.frame >= 700
    swapped[late] = 1 - swapped[late]  # one identity swap of both flies at frame 700
    metrics = identity_metrics(truth, attrs.evolve(clip, track=swapped))
    assert metrics["id_switches"] == 2
    assert metrics["idf1"] == pytest.approx(800 / 1500, abs=0.01)  # the longer part agrees


def test_fragmented_predictions_are_joined_up_to_the_track_limit(sleap_dir):
    labels = load_labels(sleap_dir / "hdf5_format_v1" / "centered_pair_predictions.slp")
    arrays = labels_to_arrays(labels)
    tracked = track(_as_untracked_predictions(arrays), TrackerConfig(max_tracks=2))
    used = set(tracked.track[tracked.track >= 0].tolist())
    assert used == {0, 1} and (tracked.track >= 0).mean() > 0.95
    frames_with_two = np.unique(tracked.frame, return_counts=True)[1] == 2
    assert frames_with_two.mean() > 0.5


def test_track_and_evaluate_commands(sleap_dir, clip, tmp_path, capsys):
    predictions = arrays_to_labels(_as_untracked_predictions(clip))
    save_labels(predictions, tmp_path / "pred.slp")
    assert main(["track", str(tmp_path / "pred.slp"), "-o", str(tmp_path / "tracked.slp"),
                 "--max-tracks", "2"]) == 0  # fmt: skip
    assert "2 tracks" in capsys.readouterr().out
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(sleap_dir / "tracks" / "clip.slp"), str(tmp_path / "tracked.slp"),
                 "--frames", "1300-1499", "--json", str(out)]) == 0  # fmt: skip
    metrics = json.loads(out.read_text())
    for key in ("oks_map", "oks_mar", "dist_median_px", "dist_p95_px", "pck_5px",
                "id_switches", "mota", "idf1"):  # fmt: skip
        assert key in metrics, key
    assert metrics["oks_map"] == pytest.approx(1.0) and metrics["id_switches"] == 0
    assert metrics["n_gt"] == 400
