"""Model suggestions (``nn.uncertainty``): each signal on made-up poses, their combination,
spacing and cancellation on a stand-in model, and one run of a tiny trained package."""

from __future__ import annotations

import math

import numpy as np
import pytest

from napari_pose.core.synthetic import make_synthetic
from napari_pose.nn import uncertainty as un
from napari_pose.nn.predict import FramePrediction
from tiny_models import train_tiny

K = 5


def pose(*animals, score: float = 0.9, missing: tuple[int, ...] = ()) -> FramePrediction:
    """Animals as ``(x, y)`` centres, nodes 2 px apart along x, every peak ``score``."""
    if not animals:
        return FramePrediction.empty(K)
    points = np.array([[[x + 2 * j, y] for j in range(K)] for x, y in animals], np.float32)
    scores = np.full(points.shape[:2], score, np.float32)
    for node in missing:
        points[:, node] = np.nan
        scores[:, node] = np.nan
    mean = np.nanmean(scores, axis=1).astype(np.float32)
    return FramePrediction(points, scores, mean)


def shifted(prediction: FramePrediction, dx: float, node: int | None = None) -> FramePrediction:
    points = prediction.points.copy()
    if node is None:
        points[..., 0] += dx
    else:
        points[:, node, 0] += dx
    return FramePrediction(points, prediction.point_scores, prediction.scores)


# ------------------------------------------------------------------------ each signal alone
def test_confidence_is_the_least_sure_usual_animal_and_counts_missing_nodes_as_zero():
    sure, unsure = un.confidence(pose((10, 10), score=0.9), 1), un.confidence(
        pose((10, 10), score=0.3), 1)  # fmt: skip
    assert sure[0] == pytest.approx(0.1) and unsure[0] == pytest.approx(0.7)
    assert unsure[1] == pytest.approx(0.3)
    assert un.confidence(pose((10, 10), missing=(0, 1)), 1)[0] > sure[0]
    assert un.confidence(pose(), 2) == (1.0, 0.0)
    # A third, weak detection is the count signal's business, not the confidence's.
    three = FramePrediction(*[np.concatenate([a, b]) for a, b in zip(
        (pose((10, 10), (40, 40)).points, pose((10, 10), (40, 40)).point_scores,
         pose((10, 10), (40, 40)).scores),
        (pose((70, 70), score=0.1).points, pose((70, 70), score=0.1).point_scores,
         pose((70, 70), score=0.1).scores), strict=True)])  # fmt: skip
    assert un.confidence(three, 2)[0] == pytest.approx(0.1)


def test_disagreement_is_the_median_matched_node_distance():
    a = pose((10, 10), (50, 50))
    b = FramePrediction(a.points[::-1].copy(), a.point_scores, a.scores)  # other order
    assert un.disagreement(a, b) == 0
    assert un.disagreement(a, shifted(b, 3.0)) == pytest.approx(3.0)
    assert un.disagreement(a, shifted(b, 20.0, node=0)) == 0  # one node of five: median
    assert math.isinf(un.disagreement(a, pose()))
    assert math.isnan(un.disagreement(pose(), pose()))


def test_count_surprise_against_the_usual_count_and_the_neighbours():
    counts = np.array([2, 2, 3, 2, 2, 1, 1, 1, 1])
    near = np.ones(len(counts) - 1, bool)
    neighbours = un.neighbour_counts(counts, near)
    surprise = un.count_surprise(counts, 2, neighbours)
    assert surprise[2] == 1 and surprise[:2].max() < 1
    assert surprise[7] == 1  # one animal where the model usually finds two
    near[1] = False  # samples 1 and 2 too far apart to be neighbours
    assert un.neighbour_counts(counts, near)[1] == 2  # sample 0 only


def test_jump_is_the_largest_node_move_relative_to_the_animal():
    a = pose((10, 10))
    relative, px = un.jump(a, shifted(a, 24.0, node=3))
    assert px == pytest.approx(24.0) and relative == pytest.approx(24.0 / 8.0)
    assert un.jump(a, shifted(a, 1.0))[0] < relative
    assert math.isnan(un.jump(a, pose())[0])


def test_each_signal_alone_moves_its_frame_to_the_top():
    clean = [pose((10 + i, 10)) for i in range(12)]
    frames = np.arange(0, 120, 10)
    cases = {
        "confidence": (3, pose((13, 10), score=0.2), "low point scores (median 0.20)"),
        "count": (5, pose((15, 10), (60, 60)), "2 animals where"),
        "jump": (7, shifted(pose((17, 10)), 30.0, node=2), "node jumps 31 px from frame 60"),
    }
    for name, (index, replacement, reason) in cases.items():
        plain = list(clean)
        plain[index] = replacement
        found = un.signals(frames, plain, plain, usual=1)
        score, reasons = un.combine(found, 1)
        assert int(np.argmax(score)) == index, name
        assert reason in reasons[index], (name, reasons[index])
    turned = list(clean)
    turned[9] = shifted(clean[9], 6.3)
    score, reasons = un.combine(un.signals(frames, clean, turned, 1), 1, "half-turned")
    assert int(np.argmax(score)) == 9
    assert "disagrees with its half-turned view by 6.3 px" in reasons[9]


def test_rank_normalise_ignores_scale_and_keeps_nan():
    ranks = un.rank_normalise(np.array([0.0, 0.0, 5.0, np.nan, np.inf, 1000.0]))
    np.testing.assert_allclose(ranks[[0, 1, 2, 4, 5]], [0, 0, 2 / 4, 1, 3 / 4])
    assert np.isnan(ranks[3])
    np.testing.assert_allclose(un.rank_normalise(np.array([1e-6, 2e-6, 3e-6])), [0, 0.5, 1])


def test_spaced_keeps_suggestions_apart():
    frames = np.arange(100)
    score = np.where(frames < 10, 1.0, 0.0) + frames / 1000  # the best are all together
    chosen = frames[un.spaced(frames, score, 5, spacing=10)]
    assert len(chosen) == 5 and chosen[0] == 9
    assert np.diff(np.sort(chosen)).min() >= 10


def test_turned_back_undoes_the_turn():
    frame = np.zeros((1, 48, 64, 1), np.uint8)
    frame[0, 20, 15] = 255
    for degrees in (20.0, 180.0):
        turned = un.turned_frames(frame, degrees)[0, ..., 0]
        y, x = np.unravel_index(turned.argmax(), turned.shape)
        found = FramePrediction(np.array([[[x, y]]], np.float32), np.ones((1, 1), np.float32),
                                np.ones(1, np.float32))  # fmt: skip
        back = un.turned_back(found, 48, 64, degrees).points[0, 0]
        assert np.hypot(*(back - [15, 20])) < 1.0, degrees


# ------------------------------------------------------------------------ the whole run
class Stand_in:  # noqa: N801
    """A 'model' that puts every node at the brightest pixel, sure in proportion to how
    smooth the frame is, and finds nothing in a flat frame."""

    channels, max_instances = 1, 1

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, frames: np.ndarray) -> list[FramePrediction]:
        self.calls += 1
        out = []
        for frame in frames[..., 0].astype(np.float32):
            if frame.std() < 1:
                out.append(FramePrediction.empty(K))
                continue
            roughness = float(np.abs(np.diff(frame, axis=1)).mean())
            score = float(np.clip(1 - roughness / 40, 0.05, 1))
            y, x = np.unravel_index(frame.argmax(), frame.shape)
            points = np.tile(np.array([x, y], np.float32), (1, K, 1))
            out.append(FramePrediction(points, np.full((1, K), score, np.float32),
                                       np.array([score], np.float32)))  # fmt: skip
        return out


@pytest.fixture(scope="module")
def damaged_video():
    frames = make_synthetic(n_frames=40, size=64, n_animals=1, seed=3).frames.copy()
    rng = np.random.default_rng(0)
    frames[12] = rng.integers(0, 256, frames[12].shape, dtype=np.uint8)  # heavy noise
    frames[30] = 128  # blank
    return frames


def test_damaged_frames_rank_above_clean_ones(damaged_video):
    chosen = un.run_to_end(un.rank_frames(Stand_in(), damaged_video, n=4, spacing=1))
    assert {s.frame for s in chosen[:2]} == {12, 30}
    reasons = {s.frame: s.reason for s in chosen}
    assert "no animal found" in reasons[30]
    assert all(s.reason for s in chosen) and chosen[0].score >= chosen[-1].score


def test_progress_exclusion_and_default_spacing(damaged_video):
    steps = un.rank_frames(Stand_in(), damaged_video, n=3, exclude=[12], batch_size=8)
    progress = []
    while True:
        try:
            progress.append(next(steps))
        except StopIteration as stop:
            chosen = stop.value
            break
    assert progress[0] == (0, 39) and progress[-1] == (39, 39) and len(progress) == 6
    frames = sorted(s.frame for s in chosen)
    assert 12 not in frames and np.diff(frames).min() >= 40 // (4 * 3)


def test_closing_stops_between_batches(damaged_video):
    model = Stand_in()
    steps = un.rank_frames(model, damaged_video, n=3, batch_size=4)
    next(steps), next(steps)  # started, one batch done
    steps.close()  # what a cancelled napari worker does
    assert model.calls == 1


def test_bad_arguments_are_refused(damaged_video):
    with pytest.raises(ValueError, match="non-negative"):
        un.run_to_end(un.rank_frames(Stand_in(), damaged_video, n=-1))
    assert un.run_to_end(un.rank_frames(Stand_in(), damaged_video, frames=[])) == []


@pytest.fixture(scope="module")
def tiny_package(tmp_path_factory):
    """A tiny single-instance model trained two steps: ranking runs through a real package."""

    from napari_pose.core.synthetic import to_labels, write_video

    folder = tmp_path_factory.mktemp("uncertainty")
    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=1)
    write_video(data.frames, folder / "v.mp4")
    labels = to_labels(data, str(folder / "v.mp4"), labelled_frames=slice(0, 8))
    train_tiny(labels, folder / "model")
    return folder / "model"


def test_a_model_package_ranks_frames_with_reasons(tiny_package, damaged_video):
    chosen = un.run_to_end(un.rank_frames(tiny_package, damaged_video, n=3, spacing=5))
    assert len(chosen) == 3 and all(s.reason for s in chosen)
    frames = sorted(s.frame for s in chosen)
    assert np.diff(frames).min() >= 5


def test_a_folder_that_is_no_model_is_a_clear_error(tmp_path, damaged_video):
    from napari_pose.core.errors import PoseFileError

    with pytest.raises(PoseFileError):
        un.run_to_end(un.rank_frames(tmp_path, damaged_video, n=3))


def test_differences_below_a_signals_floor_do_not_rank():
    clean = [pose((10, 10)) for _ in range(6)]
    turned = list(clean)
    turned[2] = shifted(clean[2], 0.5)  # half a pixel: a label's own error
    frames = np.arange(0, 60, 10)
    score, reasons = un.combine(un.signals(frames, clean, turned, 1), 1)
    np.testing.assert_array_equal(score, score[0])
    assert "disagrees" not in reasons[2]
