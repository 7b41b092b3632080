"""SLEAP-style pose metrics: OKS, greedy matching, mAP/mAR, distances and PCK.

Small hand-built frames pin each definition; the real fly clip checks the whole path from
sleap_io labels to numbers against ground truth and against a real model's predictions.
"""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.nn.metrics import (
    FramePoses,
    compare,
    evaluate,
    labels_to_frames,
    match_frame,
    match_videos,
    oks,
)

RNG = np.random.default_rng(0)


def _random_frames(n_frames: int = 6, n_inst: int = 3, k: int = 5) -> dict:
    """Ground truth: well-separated instances spanning ~150 px, all nodes visible."""
    frames = {}
    for f in range(n_frames):
        centres = np.arange(n_inst)[:, None, None] * 300.0 + 100.0
        frames[("v", f)] = FramePoses.from_points(centres + RNG.uniform(-75, 75, (n_inst, k, 2)))
    return frames


def _shifted(frames: dict, offset: tuple[float, float], score: float = 0.9) -> dict:
    return {
        key: FramePoses.from_points(fp.points + np.array(offset), np.full(len(fp.points), score))
        for key, fp in frames.items()
    }


# --------------------------------------------------------------------------------------------
# OKS and matching
# --------------------------------------------------------------------------------------------


def test_oks_hand_computed():
    # gt box 10 x 20 -> area 200; the third node is invisible and must be ignored.
    gt = np.array([[[0.0, 0.0], [10.0, 20.0], [500.0, 500.0]]])
    visible = np.array([[True, True, False]])
    pred = np.array(
        [[[1.0, 0.0], [np.nan, np.nan], [0.0, 0.0]], [[0.0, 0.0], [10.0, 22.0], [0.0, 0.0]]]
    )
    norm = (2 * 0.025) ** 2 * 2 * (200 + np.spacing(1))
    expected = np.array([[(np.exp(-1 / norm) + 0.0) / 2, (1.0 + np.exp(-4 / norm)) / 2]])
    np.testing.assert_allclose(oks(gt, pred, visible), expected, rtol=1e-12)


def test_oks_explicit_scale_and_no_visible_nodes():
    gt = np.zeros((2, 2, 2))
    gt[0, 1] = [3.0, 4.0]
    pred = gt[:1] + [3.0, 4.0]  # node 0 is 5 px off, node 1 is 5 px off too
    visible = np.array([[True, True], [False, False]])
    got = oks(gt, pred, visible, sigma=0.1, scale=np.array([50.0, 50.0]))
    np.testing.assert_allclose(got[0, 0], np.exp(-25 / (0.04 * 2 * (50 + np.spacing(1)))))
    assert got[1, 0] == 0.0  # nothing to compare: OKS 0, not NaN


def test_match_frame_swapped_instances():
    gt = np.array([[[0.0, 0.0], [30.0, 30.0]], [[200.0, 200.0], [230.0, 230.0]]])
    pred = gt[::-1] + 1.0  # listed in the other order
    pairs, values = match_frame(gt, pred, np.ones((2, 2), bool), np.array([0.5, 0.9]))
    assert sorted(map(tuple, pairs.tolist())) == [(0, 1), (1, 0)]
    assert np.all(values > 0.5)  # 1 px off on a 30 px box: exp(-2 / 4.5)


def test_match_frame_greedy_takes_best_pair_first():
    # pred 0 sits on gt 0; pred 1 is 8 px off gt 0 (tiny but positive OKS) and far from gt 1
    # (OKS underflows to 0). Greedy gives gt 0 to pred 0 and leaves pred 1 unmatched, where an
    # optimal assignment would have traded gt 0 to pred 1 to place both.
    gt = np.array([[[0.0, 0.0], [20.0, 20.0]], [[60.0, 0.0], [80.0, 20.0]]])
    pred = np.stack([gt[0], gt[0] + 8.0])
    pairs, values = match_frame(gt, pred, np.ones((2, 2), bool))
    assert pairs.tolist() == [[0, 0]]
    assert values.tolist() == [1.0]


def test_match_frame_ties_go_to_higher_score():
    gt = np.array([[[0.0, 0.0], [20.0, 20.0]]])
    pred = np.stack([gt[0] + [1.0, 0.0], gt[0] - [1.0, 0.0]])  # equally good
    visible = np.ones((1, 2), bool)
    assert match_frame(gt, pred, visible, np.array([0.2, 0.8]))[0].tolist() == [[0, 1]]
    assert match_frame(gt, pred, visible, np.array([0.8, 0.2]))[0].tolist() == [[0, 0]]


def test_match_frame_empty():
    pairs, values = match_frame(np.zeros((2, 3, 2)), np.zeros((0, 3, 2)), np.ones((2, 3), bool))
    assert pairs.shape == (0, 2) and values.shape == (0,)


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def test_perfect_predictions():
    gt = _random_frames()
    result = evaluate(gt, _shifted(gt, (0.0, 0.0)))
    assert result["oks_map"] == pytest.approx(1.0)
    assert result["oks_mar"] == pytest.approx(1.0)
    assert result["dist_median_px"] == 0.0 and result["dist_p95_px"] == 0.0
    assert result["pck_2px"] == 1.0
    assert result["n_gt"] == result["n_pred"] == result["n_matched"] == 18


def test_three_pixel_offset():
    gt = _random_frames()
    result = evaluate(gt, _shifted(gt, (3.0, 0.0)))
    assert result["dist_median_px"] == 3.0
    assert result["dist_mean_px"] == pytest.approx(3.0)
    assert result["per_node_dist_median"] == pytest.approx([3.0] * 5)
    assert result["pck_2px"] == 0.0
    assert result["pck_5px"] == 1.0 and result["pck_10px"] == 1.0
    assert result["n_matched"] == 18
    assert 0.0 < result["oks_map"] < 1.0  # OKS ~0.9: passes low thresholds, fails 0.95


def test_missing_predictions_lower_recall_not_precision():
    gt = _random_frames()
    pred = _shifted(gt, (0.0, 0.0))
    pred = {k: FramePoses(fp.points[:2], fp.visible[:2], fp.scores[:2]) for k, fp in pred.items()}
    del pred[("v", 0)]  # a whole frame without predictions: its 3 instances are misses
    result = evaluate(gt, pred)
    # 10 of 18 gt instances found, every prediction right: recall 10/18, precision 1.
    assert result["oks_mar"] == pytest.approx(10 / 18)
    assert result["n_matched"] == 10 and result["n_pred"] == 10
    # Precision is 1 up to recall 10/18 (recall points 0.00..0.55: 56 of 101), 0 after.
    assert result["oks_map"] == pytest.approx(56 / 101)
    assert result["pck_10px"] == pytest.approx(10 / 18)  # unmatched gt nodes count as misses
    assert result["dist_median_px"] == 0.0


def test_extra_predictions_lower_precision_not_recall():
    gt = _random_frames()
    pred = _shifted(gt, (0.0, 0.0), score=0.9)
    far = FramePoses.from_points(np.full((1, 5, 2), 5000.0), np.array([0.95]))  # outranks all
    pred = {
        k: FramePoses(
            np.concatenate([fp.points, far.points]),
            np.concatenate([fp.visible, far.visible]),
            np.concatenate([fp.scores, far.scores]),
        )
        for k, fp in pred.items()
    }
    result = evaluate(gt, pred)
    assert result["oks_mar"] == pytest.approx(1.0)
    assert result["n_pred"] == 24 and result["n_matched"] == 18
    assert result["oks_map"] < 0.9  # high-scoring false positives come first in the ranking
    # Low-scoring extras cost nothing: precision is 1 until every gt instance is found.
    low = {
        k: FramePoses(fp.points, fp.visible, np.r_[fp.scores[:-1], 0.1]) for k, fp in pred.items()
    }
    assert evaluate(gt, low)["oks_map"] == pytest.approx(1.0)


def test_missing_nodes_counted_separately():
    gt = _random_frames(n_frames=1, n_inst=1)
    pred_points = gt[("v", 0)].points.copy()
    pred_points[0, :2] = np.nan
    result = evaluate(gt, {("v", 0): FramePoses.from_points(pred_points)})
    assert result["n_missing_pred_nodes"] == 2
    assert result["dist_median_px"] == 0.0
    assert result["pck_2px"] == pytest.approx(3 / 5)
    assert np.isnan(result["per_node_dist_median"][0]) and np.isnan(result["per_node_dist_p90"][0])
    assert result["vis_recall"] == pytest.approx(3 / 5) and result["vis_precision"] == 1.0


def test_nodes_predicted_where_ground_truth_is_occluded_lower_visibility_precision():
    gt = _random_frames(n_frames=1, n_inst=1)
    truth = gt[("v", 0)]
    occluded = truth.visible.copy()
    occluded[0, 0] = False  # the labeller marked node 0 occluded; the model placed it anyway
    result = evaluate({("v", 0): FramePoses(truth.points, occluded, truth.scores)},
                      {("v", 0): FramePoses.from_points(truth.points)})  # fmt: skip
    assert result["vis_precision"] == pytest.approx(4 / 5) and result["vis_recall"] == 1.0


def test_evaluate_needs_ground_truth():
    with pytest.raises(ValueError, match="no ground-truth"):
        evaluate({}, {})


# --------------------------------------------------------------------------------------------
# sleap_io labels: the real fly clip
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(data_dir) -> tuple[sio.Labels, sio.Labels]:
    tracks = data_dir / "sleap" / "tracks"
    return (
        sio.load_slp(str(tracks / "clip.slp")),
        sio.load_slp(str(tracks / "clip.predictions.slp")),
    )


def test_labels_to_frames(clip):
    gt_labels, pred_labels = clip
    gt = labels_to_frames(gt_labels, predicted=False)
    assert len(gt) == 1500
    key = next(iter(gt))
    lf = gt_labels.labeled_frames[0]
    assert key == (str(lf.video.filename), lf.frame_idx)
    np.testing.assert_array_equal(gt[key].points, np.stack([i.numpy() for i in lf.user_instances]))
    assert not gt[key].visible[1, 7]  # a node the labeller left out
    assert labels_to_frames(gt_labels, predicted=True) == {}
    two = labels_to_frames(gt_labels, predicted=False, nodes=["head", "thorax"])[key]
    assert two.points.shape == (2, 2, 2)
    np.testing.assert_allclose(two.area, gt[key].area)  # OKS scale: the whole fly, not 2 nodes
    xy = lf.user_instances[0].numpy()
    np.testing.assert_allclose(two.area[0], np.prod(np.nanmax(xy, 0) - np.nanmin(xy, 0)))

    pred = labels_to_frames(pred_labels, predicted=True, nodes=["thorax", "head"])
    first = pred_labels.labeled_frames[0]
    np.testing.assert_array_equal(
        pred[(str(first.video.filename), first.frame_idx)].points[:, 0],
        np.stack([i.numpy()[1] for i in first.predicted_instances]),
    )
    np.testing.assert_allclose(
        pred[(str(first.video.filename), first.frame_idx)].scores,
        [i.score for i in first.predicted_instances],
    )
    with pytest.raises(ValueError, match="no node"):
        labels_to_frames(pred_labels, nodes=["abdomen"])


def test_clip_against_itself(clip):
    gt = labels_to_frames(clip[0], predicted=False)
    result = evaluate(gt, gt)
    assert result["oks_map"] == pytest.approx(1.0)
    assert result["oks_mar"] == pytest.approx(1.0)
    assert result["dist_p95_px"] == 0.0
    assert result["n_gt"] == result["n_matched"] == 3000


def test_clip_against_model_predictions(clip):
    nodes = ["head", "thorax"]
    gt = labels_to_frames(clip[0], predicted=False, nodes=nodes)
    pred = labels_to_frames(clip[1], predicted=True, nodes=nodes)
    shared = gt.keys() & pred.keys()
    assert len(shared) > 1000
    result = evaluate({k: gt[k] for k in shared}, pred)
    # Measured: mAP 0.105, mAR 0.116, median 5.0 px (head 26.1, thorax 5.0), p95 59 px,
    # PCK@2/5/10 px 0.002/0.451/0.550, 2916 of 3000 matched, 112 missing predicted nodes. The
    # model finds nearly every fly, puts thoraxes ~5 px off and places "head" ~26 px from where
    # the proofread labels do, so OKS (sigma 0.025) rarely reaches 0.5: a low but real mAP.
    assert result["n_gt"] == 3000 and result["n_pred"] == 2948
    assert result["n_matched"] >= 0.95 * result["n_gt"]
    assert 0.05 < result["oks_map"] < 0.2
    assert result["oks_map"] < result["oks_mar"] < 0.2
    head, thorax = result["per_node_dist_median"]
    assert 3.0 < thorax < 7.0 and 20.0 < head < 35.0
    assert 3.0 < result["dist_median_px"] < 7.0
    assert result["dist_median_px"] < result["dist_p90_px"] < result["dist_p95_px"] < 100.0
    assert 0.0 < result["pck_2px"] < 0.05 < result["pck_5px"] < result["pck_10px"] < 0.8
    assert 0 < result["n_missing_pred_nodes"] < 0.05 * 2 * result["n_matched"]


def test_compare_gives_accuracy_identity_and_worst_frames(clip):
    gt = labels_to_arrays(clip[0])
    swapped = gt.track.copy()
    late = gt.frame >= 700
    swapped[late] = 1 - swapped[late]
    moved = gt.xy.copy()
    moved[gt.frame == 42] += 30.0  # one frame far off
    metrics, per_frame = compare(gt, attrs.evolve(gt, track=swapped, xy=moved))
    assert metrics["id_switches"] == 2 and metrics["n_gt"] == 3000
    assert metrics["oks_mar"] > 0.99
    assert min(per_frame, key=per_frame.get)[1] == 42 and len(per_frame) == 1500
    assert sum(v == pytest.approx(1.0) for v in per_frame.values()) == 1499

    # Predictions of some frames only are compared on those frames.
    pred = labels_to_arrays(clip[1])
    some = pred.select(pred.frame < 100)
    metrics, per_frame = compare(gt, some)
    assert len(per_frame) == len(np.unique(some.frame)) and metrics["n_gt"] <= 200


def test_videos_match_by_file_name_frame_count_and_folders():
    """Copies and moves match; another length, another name or a tie between two cameras'
    videos of one name match nothing."""

    def video(name: str, n_frames: int | None = 100) -> sio.Video:
        shape = None if n_frames is None else [n_frames, 64, 64, 1]
        return sio.Video(filename=name, backend_metadata={"shape": shape} if shape else {},
                         open_backend=False)  # fmt: skip

    truth = [video("/data/cam1/trial.mp4"), video("/data/cam2/trial.mp4"), video("C:\\x\\a.mp4")]
    predicted = [
        video("/scratch/cam2/trial.mp4"),  # moved: its folder tells the cameras apart
        video("/scratch/trial.mp4"),  # which camera? a tie
        video("/data/cam1/trial.mp4", 99),  # another recording of the same name
        video("/data/cam1/other.mp4"),
        video("/copy/a.mp4", None),  # length not recorded: the name decides
    ]
    assert match_videos(truth, predicted).tolist() == [1, -1, -1, -1, 2]


def test_json_ready_writes_missing_figures_as_null():
    """metrics.json and evaluate --json stay valid JSON when a figure is NaN (nothing found)."""
    import json
    import math

    from napari_pose.nn.metrics import json_ready

    figures = {"oks_map": math.nan, "per_node": [math.inf, 1.5], "n_gt": 3}
    assert json.loads(json.dumps(json_ready(figures), allow_nan=False)) == {
        "oks_map": None,
        "per_node": [None, 1.5],
        "n_gt": 3,
    }
