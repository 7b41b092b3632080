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


def _stack_of_two_animals_per_z(n_t=10, n_z=2):
    """Predictions in a (t, z) stack: two animals in each z-section, in different places per
    section, moving over time; rows in a shuffled order. Returns the arrays and each row's
    animal (``2 * z + a``)."""
    import sleap_io as sio

    from napari_pose.core.pose_arrays import PoseArrays

    shape = np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 8.0]])
    t, z, a = (g.ravel() for g in np.meshgrid(np.arange(n_t), np.arange(n_z), np.arange(2),
                                              indexing="ij"))  # fmt: skip
    start = np.stack([10.0 + 50 * a + 25 * z, 20.0 + 40 * z], axis=-1)
    xy = shape + (start + np.stack([np.zeros_like(t), 3.0 * t * (1 - 2 * z)], axis=-1))[:, None]
    skeleton = sio.Skeleton(["head", "thorax", "tail"])
    arrays = PoseArrays.empty(skeleton, [sio.Video(filename="stack.tif", open_backend=False)], [],
                              len(t))  # fmt: skip
    order = np.random.default_rng(1).permutation(len(t))
    arrays = attrs.evolve(arrays, frame=np.ravel_multi_index((t, z), (n_t, n_z))[order],
                          xy=xy[order], predicted=np.ones(len(t), bool),
                          score=np.ones(len(t), np.float32),
                          visible=np.ones(xy.shape[:2], bool)[order])  # fmt: skip
    return arrays, (2 * z + a)[order]


def test_stack_planes_are_tracked_per_z_along_time():
    from napari_pose.nn.tracking import track_planes

    arrays, animal = _stack_of_two_animals_per_z()
    config = TrackerConfig(max_tracks=2)
    tracked = track_planes(arrays, {0: ((10, 2), "TZ")}, config)
    assert [t.name for t in tracked.tracks] == ["z0 track_0", "z0 track_1", "z1 track_2",
                                                "z1 track_3"]  # fmt: skip
    by_id = np.argsort(arrays.instance_id)
    rows = by_id[tracked.instance_id]  # each tracked row's row in ``arrays``
    np.testing.assert_array_equal(tracked.frame, arrays.frame[rows])  # frames as they were
    np.testing.assert_array_equal(tracked.xy, arrays.xy[rows])
    assert np.all(np.diff(tracked.frame) >= 0) and (tracked.track >= 0).all()
    pairs = set(zip(tracked.track.tolist(), animal[rows].tolist(), strict=True))
    assert len(pairs) == 4 and len({a for _, a in pairs}) == 4  # one animal per track: no switch
    assert all(tracked.tracks[t].name.startswith(f"z{a // 2} ") for t, a in pairs)
    # Tracking the flat plane order instead jumps between sections (and animals) every frame.
    flat = track(arrays, config)
    assert len(set(zip(flat.track.tolist(), animal[by_id[flat.instance_id]].tolist()))) > 4


@pytest.mark.parametrize(
    "planes", [{}, {0: ((1500,), "T")}, {0: ((1500,), "Z")}, {3: ((5, 2), "TZ")}]
)
def test_stack_tracking_is_plain_tracking_when_frames_are_time(clip, planes):
    """No stack, a stack with only a time axis, or none (no time to follow): ``track``."""
    from napari_pose.core.pose_arrays import _ROW_FIELDS
    from napari_pose.nn.tracking import track_planes

    untracked = _as_untracked_predictions(clip)
    config = TrackerConfig(max_tracks=2)
    expected, tracked = track(untracked, config), track_planes(untracked, planes, config)
    assert [t.name for t in tracked.tracks] == [t.name for t in expected.tracks]
    for name in _ROW_FIELDS:
        np.testing.assert_array_equal(getattr(tracked, name), getattr(expected, name), name)


def test_a_stack_of_one_section_is_tracked_as_a_video(clip):
    """A (t, 1) stack goes through the regrouping and comes back as ``track`` made it."""
    from napari_pose.core.pose_arrays import _ROW_FIELDS
    from napari_pose.nn.tracking import track_planes

    untracked = _as_untracked_predictions(clip)
    config = TrackerConfig(max_tracks=2)
    tracked = track_planes(untracked, {0: ((int(clip.frame.max()) + 1, 1), "TZ")}, config)
    expected = track(untracked, config)
    assert [t.name for t in tracked.tracks] == [f"z0 {t.name}" for t in expected.tracks]
    for name in _ROW_FIELDS:
        np.testing.assert_array_equal(getattr(tracked, name), getattr(expected, name), name)
