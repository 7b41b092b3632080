"""Pseudo-labels: which frames, what two predictions agree on, the half-turn mapping, and a
tiny training run with a second round on the synthetic video."""

from __future__ import annotations

import re
import threading
import time

import attrs
import numpy as np
import pytest
import sleap_io as sio
import torch

from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
from napari_pose.nn import package, pseudo
from napari_pose.nn.augment import AugmentConfig
from napari_pose.nn.data import LabelledFrames, load_frames, make_batch
from napari_pose.nn.models import UNetConfig
from napari_pose.nn.pipelines import default_stages, stage_loss
from napari_pose.nn.predict import FramePrediction
from napari_pose.nn.train import TrainConfig, _StageRun, train, validate_stage

TINY = UNetConfig(filters=8, filters_rate=1.5, max_stride=16, output_stride=2)


# ---------------------------------------------------------------- which frames
def test_frame_choice_leaves_out_labelled_frames_and_the_validation_window(tmp_path):
    data = make_synthetic(n_frames=120, size=64, n_animals=1, seed=2)
    labels = to_labels(data, str(tmp_path / "v.mp4"), labelled_frames=slice(0, None, 4))
    labelled = pseudo.labelled_keys(labels)
    assert labelled[:, 1].tolist() == list(range(0, 120, 4))
    stride = pseudo.labelling_stride(labelled)
    assert stride == 4
    validation = np.array([[0, 48], [0, 40], [0, 44]])  # in any order, as training keeps them
    frames = pseudo.candidate_frames([120], np.array([0]), labelled, validation, stride)
    chosen = frames[:, 1]
    assert not set(chosen) & set(range(0, 120, 4))  # no labelled frame
    assert not set(chosen) & set(range(36, 53))  # nor one within a stride of the window
    assert set(chosen) == set(range(120)) - set(range(0, 120, 4)) - set(range(36, 53))

    picks = chosen[pseudo.spread(len(chosen), 10)]
    assert len(picks) == 10 and np.all(np.diff(picks) > 0)  # in frame order, for the decoder
    gaps = np.diff(picks)
    across = gaps.argmax()  # the gap across the validation window
    assert picks[across] < 36 and picks[across + 1] > 52
    assert np.ptp(np.delete(gaps, across)) <= 1  # evenly spread elsewhere
    assert len(pseudo.spread(len(chosen), 10_000)) == len(chosen)

    # A run on every 8th frame of 0-99: the labels it skips count as unlabelled, and nothing
    # outside its span is used.
    used = range(0, 100, 8)
    labelled = pseudo.labelled_keys(labels, used)
    assert labelled[:, 1].tolist() == [0, 8, 16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96]
    frames = pseudo.candidate_frames([120], np.array([0]), labelled, validation, 8, used)
    assert 4 in frames[:, 1] and frames[:, 1].max() == 99
    assert not set(frames[:, 1]) & set(range(32, 57))


def test_frames_are_read_in_order_as_the_video_holds_them(tmp_path):
    data = make_synthetic(n_frames=30, size=64, n_animals=1, seed=1)
    write_video(data.frames, tmp_path / "v.mp4")
    labels = to_labels(data, str(tmp_path / "v.mp4"), labelled_frames=slice(0, None, 10))
    keys = np.array([[0, 3], [0, 7], [0, 21], [0, 29]])
    images = list(pseudo.read_frames(labels.videos, keys, channels=1))
    assert all(image.shape == (64, 64, 1) for image in images)
    np.testing.assert_array_equal(np.stack(images)[..., 0], data.frames[keys[:, 1]])
    assert pseudo.video_lengths(labels.videos, np.array([0])) == [30]


# ---------------------------------------------------------------- what is kept
def _prediction(points: np.ndarray, scores: np.ndarray | float = 0.9) -> FramePrediction:
    points = np.asarray(points, np.float32)
    point_scores = np.broadcast_to(np.asarray(scores, np.float32), points.shape[:2]).copy()
    return FramePrediction(points, point_scores, point_scores.mean(axis=1))


def test_agreeing_nodes_are_kept_and_disagreeing_ones_left_out():
    rng = np.random.default_rng(0)
    animals = rng.uniform(20, 200, size=(2, 5, 2)).astype(np.float32)
    noise = rng.uniform(-0.7, 0.7, size=(2, 5, 2)).astype(np.float32)
    second = animals + noise
    second[1, 4] += [5.0, 0.0]  # a wing 5 px away: left out
    # The second prediction lists the animals the other way round: they are matched.
    found = pseudo.agree(_prediction(animals), _prediction(second[::-1]), min_nodes=4,
                         max_instances=2)  # fmt: skip
    assert found.complete and found.points.shape == (2, 5, 2)
    np.testing.assert_allclose(found.points[0], animals[0] + noise[0] / 2, atol=1e-5)
    assert np.isnan(found.points[1, 4]).all() and np.isfinite(found.points[1, :4]).all()

    # Both agree, but one animal's peaks are weak on three of five nodes: fewer than 70% sure.
    scores = np.full((2, 5), 0.9)
    scores[1, :3] = 0.3
    found = pseudo.agree(_prediction(animals, scores), _prediction(animals), min_nodes=4,
                         max_instances=2)  # fmt: skip
    assert len(found.points) == 1 and not found.complete
    np.testing.assert_allclose(found.points[0], animals[0])

    # The anchor node must be kept: the crop and centroid target sit on it.
    moved = animals.copy()
    moved[0, 1] += [0.0, 3.0]
    found = pseudo.agree(_prediction(animals), _prediction(moved), min_nodes=4, max_instances=2,
                         anchor=1)  # fmt: skip
    assert len(found.points) == 1 and not found.complete


def _labelled_like(animals: np.ndarray) -> LabelledFrames:
    """A one-frame ``LabelledFrames`` labelled with ``animals`` (two nodes)."""
    return LabelledFrames(sio.Skeleton(["a", "b"]), [sio.Video("x.mp4")], np.array([[0, 0]]),
                          [np.zeros((64, 64, 1), np.uint8)], [animals])  # fmt: skip


def test_a_frame_with_a_missed_animal_is_not_used_for_whole_frame_models():
    animals = np.array([[[10, 10], [12, 12]], [[50, 50], [52, 52]]], np.float32)
    # The turned frame's prediction missed the second animal: the first is still a good crop,
    # but a whole-frame model would be taught that the second is background.
    found = pseudo.agree(_prediction(animals), _prediction(animals[:1]), min_nodes=2,
                         max_instances=2)  # fmt: skip
    assert len(found.points) == 1 and not found.complete
    # A detection of one pass that the other did not confirm is a doubtful frame too.
    odd = animals.copy()
    odd[1] += 30.0
    found = pseudo.agree(_prediction(animals), _prediction(odd), min_nodes=2, max_instances=2)
    assert len(found.points) == 1 and not found.complete

    template = _labelled_like(animals)
    agreements = [
        pseudo.agree(_prediction(animals), _prediction(animals), min_nodes=2, max_instances=2),
        found,
        pseudo.agree(
            _prediction(animals), _prediction(animals[:0]), min_nodes=2, max_instances=2
        ),  # fmt: skip
    ]
    images = [np.full((64, 64, 1), i, np.uint8) for i in range(3)]
    kept = pseudo.collect(template, np.array([[0, 5], [0, 6], [0, 7]]), images, agreements)
    assert kept.looked_at == 3 and kept.frames.keys[:, 1].tolist() == [5, 6]
    assert kept.complete.tolist() == [True, False] and kept.n_instances == 3
    whole = pseudo.training_frames(template, kept, crops=False)
    crops = pseudo.training_frames(template, kept, crops=True)
    assert len(whole) == len(template) + 1 and len(crops) == len(template) + 2
    assert whole.images[-1] is images[0] and crops.points[-1].shape == (1, 2, 2)


def test_min_nodes_follows_what_labels_usually_show():
    points = np.zeros((3, 10, 2), np.float32)
    points[:, 7:] = np.nan  # three nodes never labelled visible
    assert pseudo.min_nodes([points]) == 5  # 70% of 7, rounded up


# ---------------------------------------------------------------- the half turn
def test_the_half_turn_maps_back_exactly():
    """Markers drawn at a synthetic animal's nodes on a frame that is not square are found at
    the same place in the frame and in its half turn, once mapped back."""
    data = make_synthetic(n_frames=1, size=64, n_animals=1, seed=4)
    frame = np.pad(data.frames[0], ((0, 0), (0, 14)))  # 64 x 78: height and width differ
    truth = np.round(data.points[0, 0]).astype(int)  # (k, 2) x, y
    markers = 250 - np.arange(len(truth))  # node j is the only pixel of value 250 - j
    frame[frame >= markers.min()] = 0
    frame[truth[:, 1], truth[:, 0]] = markers
    turned = np.rot90(frame, 2)
    height, width = frame.shape
    assert (turned[height - 1 - truth[:, 1], width - 1 - truth[:, 0]] == markers).all()

    def find_markers(images: list[np.ndarray]) -> list[FramePrediction]:
        found = []
        for image in images:
            ys, xs = np.nonzero(image[..., 0][..., None] == markers)[:2]
            order = np.argsort(image[ys, xs, 0])[::-1]
            found.append(_prediction(np.stack([xs[order], ys[order]], -1)[None], 1.0))
        return found

    ((first, second),) = pseudo.predict_both_ways([frame[..., None]], find_markers)
    np.testing.assert_array_equal(first.points[0], truth)
    np.testing.assert_array_equal(second.points[0], truth)
    back = pseudo.rotate_back(pseudo.rotate_back(first, height, width), height, width)
    np.testing.assert_array_equal(back.points, first.points)


# ---------------------------------------------------------------- a training run
@pytest.fixture(scope="module")
def sparse_project(tmp_path_factory):
    """120 frames of one animal at 64 px, labelled every fourth frame: 90 unlabelled frames."""
    folder = tmp_path_factory.mktemp("sparse")
    data = make_synthetic(n_frames=120, size=64, n_animals=1, seed=2)
    write_video(data.frames, folder / "v.mp4")
    save_labels(to_labels(data, str(folder / "v.mp4"), labelled_frames=slice(0, None, 4)),
                folder / "p.slp")  # fmt: skip
    return folder / "p.slp"


def _tiny_stages(labels):
    """Tiny stages at stride 2 with 2.5 px maps: a model trained for seconds at the defaults'
    stride 4 and 3.5 px places its peaks too loosely for its two passes to agree, and what is
    tested here is the plumbing."""
    stages = default_stages(load_frames(labels), "single_instance")
    return {k: attrs.evolve(s, sigma=2.5, model=attrs.evolve(s.model, backbone=attrs.evolve(
        TINY, in_channels=s.model.backbone.in_channels))) for k, s in stages.items()}  # fmt: skip


@pytest.fixture
def lenient(monkeypatch):
    """A model trained for seconds is not sure enough for the real thresholds (its peaks are
    about 0.5): what is tested here is the plumbing, the thresholds are tested above."""
    monkeypatch.setattr(pseudo, "MIN_SCORE", 0.2)
    monkeypatch.setattr(pseudo, "AGREE_PX", 3.0)
    monkeypatch.setattr(pseudo, "MIN_NODES", 0.6)


def _run(labels, out, config, stages=None, stop_when=None, resume=False):
    """The events of a training run, and its longest step (seconds since the event before)."""
    stop = threading.Event()
    events, longest, last = [], 0.0, time.monotonic()
    for event in train(labels, out, config, stages=stages, resume=resume, stop=stop):
        now = time.monotonic()
        if event.loss is not None and event.validation is None:
            longest = max(longest, now - last)
        events.append(event)
        last = now
        if stop_when is not None and stop_when(event):
            stop.set()
    return events, longest


def test_a_second_round_trains_on_pseudo_labels_and_is_no_worse(sparse_project, tmp_path,
                                                                lenient):  # fmt: skip
    """By epochs (what is trained then does not depend on how busy the machine is): round
    one, pseudo-labels, round two cancelled in its first epoch, then resumed: round two starts
    again from the best weights, finds pseudo-labels again, and the saved model validates at
    least as well as round one's."""
    labels = load_labels(sparse_project)
    stages = _tiny_stages(labels)
    config = TrainConfig(pipeline="single_instance", epochs=5, batch_size=8, steps_per_epoch=8,
                         learning_rate=3e-3, val_fraction=0.2, pseudo_labels=0.3,
                         device="cpu")  # fmt: skip
    assert config.round_two_epochs == 2  # 5 * 0.3 / 0.7, rounded
    out = tmp_path / "m"
    events, _ = _run(labels, out, config, stages,
                     stop_when=lambda e: "(round two): epoch" in e.message)  # fmt: skip
    assert events[-1].stage == "cancelled"
    ckpt = package.load_torch(package.checkpoint_path(out, "single_instance"))
    assert ckpt["round"] == 2 and ckpt["epoch"] == 5  # the cancelled epoch was not validated
    fractions = [e.fraction for e in events[:-1]]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.7  # round one: 70% of the run

    resumed, _ = _run(labels, out, config, resume=True)
    assert resumed[-1].stage == "done"
    steps = [e for e in resumed if e.loss is not None]
    assert all("(round two)" in e.message for e in steps)  # round one is not trained again
    assert sorted({e.epoch for e in steps}) == [6, 7]  # two epochs after the 5th
    (round_two,) = [e.message for e in resumed if e.message.startswith("round two:")]
    n_used = int(re.search(r"and (\d+) pseudo-labelled frames", round_two).group(1))
    assert n_used > 0
    recorded = package.read_config(out)["training"]
    assert recorded["pseudo_labels"] == 0.3 and recorded["round"] == 2
    assert recorded["n_pseudo_frames"] == n_used and recorded["n_pseudo_instances"] == n_used
    assert recorded["n_pseudo_complete_frames"] == n_used  # one animal: every kept frame
    assert package.read_config(out)["complete"]
    log = package.read_log(out)
    assert [row["round"] for row in log] == ["1"] * 5 + ["2"] * 2

    # The saved weights validate at least as well as round one's best, on the same frames.
    data = load_frames(labels)
    where = {tuple(key): i for i, key in enumerate(data.keys.tolist())}
    scored = data.subset([where[tuple(key)] for key in recorded["val_frames"]])
    run = _StageRun(stages["single_instance"], config, torch.device("cpu"), 0)
    weights = package.load_torch(package.weights_path(out, "single_instance"))
    run.model.load_state_dict(weights)
    final, _, _ = validate_stage(run, scored, 1, config.batch_size)
    round_one = min(float(row["val_loss"]) for row in log if row["round"] == "1")
    assert final <= round_one * (1 + 1e-4)


#: What the time limit may be overrun by besides 10% and one step (see test_training.py).
SLACK_S = 0.5


def test_a_second_round_keeps_to_the_time_limit(sparse_project, tmp_path, lenient):
    labels = load_labels(sparse_project)
    budget = 10.0
    config = TrainConfig(pipeline="single_instance", epochs=1000, batch_size=8,
                         steps_per_epoch=4, learning_rate=3e-3, val_fraction=0.2,
                         time_limit=budget / 60, pseudo_labels=0.3, device="cpu")  # fmt: skip
    start = time.monotonic()
    events, longest = _run(labels, tmp_path / "m", config, _tiny_stages(labels))
    wall = time.monotonic() - start
    assert wall <= budget * 1.1 + longest + SLACK_S, (wall, longest)
    assert events[-1].stage == "done"
    # How many frames are posed depends on how fast this machine is now; that the phases ran,
    # and said so, does not.
    messages = [e.message for e in events]
    assert any(m.startswith("pseudo-labelling ") or m.startswith("no unlabelled frames were")
               for m in messages)  # fmt: skip
    assert any(m.startswith("kept ") for m in messages)
    assert any(m.startswith("round two:") for m in messages)
    recorded = package.read_config(tmp_path / "m")["training"]
    assert recorded["round"] == 2 and recorded["n_pseudo_predicted"] >= 0


def test_pseudo_labels_must_leave_round_one_time():
    with pytest.raises(ValueError, match="pseudo_labels"):
        TrainConfig(pseudo_labels=1.0)
    assert TrainConfig().to_dict()["pseudo_labels"] == 0.0


def test_nodes_pseudo_labels_leave_out_are_left_out_of_the_loss():
    """A node two predictions disagreed on is unknown, not hidden: training it as absent would
    teach the model to miss the hard nodes pseudo-labels are for. Its maps weigh nothing in the
    loss, also after a flip moves it to its partner's column; known nodes weigh as before."""
    skeleton = sio.Skeleton(["head", "wingL", "wingR"])
    points = np.array([[[20.0, 20.0], [np.nan, np.nan], [26.0, 24.0]]], np.float32)
    kept = pseudo.Agreement(points, complete=True)
    template = LabelledFrames(skeleton, [], np.zeros((0, 2), np.int64), [], [])
    found = pseudo.collect(template, np.array([[0, 5]]), [np.zeros((48, 48, 1), np.uint8)],
                           [kept])  # fmt: skip
    assert found.frames.unknown[0].tolist() == [[False, True, False]]
    labelled = LabelledFrames(skeleton, [], np.array([[0, 1]]), [np.zeros((48, 48, 1), np.uint8)],
                              [points.copy()])  # fmt: skip
    both = pseudo.training_frames(labelled, found, crops=True)
    assert [u.tolist() for u in both.unknown] == [[[False] * 3], [[False, True, False]]]

    examples = np.array([[0, 0], [1, 0]])
    batch = make_batch(both, examples, size=(32, 32), scale=1.0, crop=True)
    assert batch.known.tolist() == [[1, 1, 1], [1, 0, 1]]
    flips = AugmentConfig(rotation=0, scale=(1, 1), translate=0, flip=True, brightness=0,
                          contrast=0, noise=0)  # fmt: skip
    for seed in range(8):  # a flipped example's unknown wingL sits in wingR's column
        flipped = make_batch(both, examples[1:], size=(32, 32), scale=1.0, crop=True,
                             augment=flips, generator=torch.Generator().manual_seed(seed))  # fmt: skip
        unknown = 2 if np.isfinite(flipped.points[0, 0, 1]).all() else 1
        assert flipped.known[0, unknown] == 0 and flipped.known[0].sum() == 2

    target = torch.rand(2, 3, 8, 8)
    wrong = target.clone()
    wrong[1, 1] += 5.0  # only the unknown node's map is off
    assert stage_loss({"confmaps": wrong}, {"confmaps": target}, batch.known) == 0
    assert stage_loss({"confmaps": wrong}, {"confmaps": target}) > 0
    ones = torch.ones(2, 3)
    assert torch.isclose(stage_loss({"confmaps": wrong}, {"confmaps": target}, ones),
                         stage_loss({"confmaps": wrong}, {"confmaps": target}))  # fmt: skip
