"""One round of the labelling loop (``napari.rounds``): retrain, predict the suggested frames,
suggest anew; without Qt on a bare ``ViewerModel``, then from the *Train model* dock."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.pose_arrays import concat
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
from napari_pose.napari import rounds
from napari_pose.napari.convert import POSE_KEY
from napari_pose.napari.drawing import redraw
from napari_pose.napari.labelling import PlaneFrames, image_of
from napari_pose.napari.predictions import merge_predictions
from napari_pose.nn import package

SUGGESTED = [12, 16, 20]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch, tmp_path):
    """Tiny models on one PyTorch thread (the machine is shared); autosaves in ``tmp_path``."""
    import torch

    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _project(folder: Path) -> Path:
    """A one-animal project (24 frames of 64 px), frames 0-9 labelled, three suggested."""
    data = make_synthetic(n_frames=24, size=64, n_animals=1, seed=0)
    write_video(data.frames, folder / "v.mp4")
    labels = to_labels(data, str(folder / "v.mp4"), labelled_frames=slice(0, 10))
    labels.suggestions = [sio.SuggestionFrame(video=labels.videos[0], frame_idx=f)
                          for f in SUGGESTED]  # fmt: skip
    path = folder / "p.slp"
    save_labels(labels, path)
    return path


def _tiny_stages(labels: sio.Labels) -> dict:
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.models import UNetConfig
    from napari_pose.nn.pipelines import default_stages

    tiny = UNetConfig(filters=4, max_stride=16, output_stride=2)
    return {k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=tiny))
            for k, s in default_stages(load_frames(labels), "single_instance").items()}  # fmt: skip


def _config():
    from napari_pose.nn.train import TrainConfig

    return TrainConfig(pipeline="single_instance", epochs=1, steps_per_epoch=2, batch_size=2,
                       device="cpu")  # fmt: skip


def _predict_config():
    """Every node found: a model trained two steps peaks below the default threshold."""
    from napari_pose.nn.inference import PredictConfig

    return PredictConfig(batch_size=4, peak_threshold=0.0, device="cpu", workers=1)


def _open(path: Path):
    from napari.components import ViewerModel

    from napari_pose.napari._reader import read_labels
    from napari_pose.napari.session import projects

    viewer = ViewerModel()
    for data, kwargs, kind in read_labels(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    (session,) = projects(viewer).sessions
    user = session.user_layers()[0]
    frames = PlaneFrames(image_of(viewer, user), user.metadata[POSE_KEY].plane_shape)
    return viewer, session, frames


def _drive(steps, session, before_merge=None):
    """Run a round as the dock does: merge what it yields; returns (result, progress list)."""
    seen = []
    while True:
        try:
            progress = next(steps)
        except StopIteration as end:
            return end.value, seen
        seen.append(progress)
        if progress.predictions is not None:
            if before_merge is not None:
                before_merge()
            merge_predictions(session, 0, progress.predictions, skip_labelled=True)
        if progress.suggestions is not None:
            rounds.add_suggestions(session, 0, progress.suggestions)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.is_file()}  # fmt: skip


def _predicted_frames(session) -> set[int]:
    layers = [l for l in session.points_layers() if l.metadata[POSE_KEY].predicted]
    if not layers:
        return set()
    binding = layers[0].metadata[POSE_KEY]
    return set(binding.merged(layers[0].data, layers[0].features).frame.tolist())


def _predictions_on(session, frame: int) -> list[int]:
    layer = [l for l in session.points_layers() if l.metadata[POSE_KEY].predicted][0]
    merged = layer.metadata[POSE_KEY].merged(layer.data, layer.features)
    return sorted(merged.instance_id[merged.frame == frame].tolist())


def _user_frames(session) -> list[int]:
    layer = session.user_layers()[0]
    return layer.metadata[POSE_KEY].merged(layer.data, layer.features).frame.tolist()


def test_round_folders_never_reuse_a_name(tmp_path):
    assert rounds.round_folder(tmp_path / "m") == tmp_path / "m-round-1"
    assert rounds.round_folder(tmp_path / "m-round-1") == tmp_path / "m-round-2"
    (tmp_path / "m-round-2").mkdir()
    assert rounds.round_folder(tmp_path / "m-round-1") == tmp_path / "m-round-3"


def test_round_frames_are_unlabelled_suggestions_or_a_strided_sample(tmp_path):
    labels = load_labels(_project(tmp_path))
    labels.suggestions.append(sio.SuggestionFrame(video=labels.videos[0], frame_idx=3))
    assert rounds.round_frames(labels, 0, 24) == SUGGESTED  # frame 3 is labelled
    labels.suggestions = []
    sample = rounds.round_frames(labels, 0, 24, sample=5)
    assert len(sample) == 5 and not set(sample) & set(range(10))


def test_two_rounds_train_predict_and_suggest_keeping_user_instances(tmp_path):
    viewer, session, frames = _open(_project(tmp_path))
    before = [(s.frame_idx) for s in session.labels.suggestions]

    # Round 1, from scratch.
    first = rounds.round_folder(tmp_path / "model")
    snapshot = session.current()
    steps = rounds.run_round(snapshot, frames, 0, first, _config(), stages=_tiny_stages(snapshot),
                             n_suggestions=3, predict_config=_predict_config())  # fmt: skip
    result, seen = _drive(steps, session)
    assert result.status == "done" and result.model == first == tmp_path / "model-round-1"
    assert package.read_config(first)["complete"]
    assert [p.phase for p in seen][-1] == "done"
    assert {"training", "predicting", "ranking"} <= {p.phase for p in seen}
    fractions = [p.fraction for p in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert _predicted_frames(session) == set(SUGGESTED)
    after = [s.frame_idx for s in session.labels.suggestions]
    assert set(before) < set(after)  # the model's suggestions joined the project's
    assert not set(after) & set(range(10))  # never a labelled frame
    assert session.dirty
    kept = _digest(first)

    # Round 2 continues from round 1 into a new folder; the user labels frame 12 meanwhile.
    second = rounds.round_folder(first)
    user = session.user_layers()[0]

    def label_frame_12() -> None:
        binding = user.metadata[POSE_KEY]
        arrays = binding.merged(user.data, user.features)
        added = attrs.evolve(arrays.select(np.array([0])), frame=np.array([12]),
                             instance_id=np.array([999]))  # fmt: skip
        binding.arrays = concat([arrays, added]).sorted()
        redraw(viewer, user, binding)

    on_12 = _predictions_on(session, 12)
    snapshot = session.current()
    steps = rounds.run_round(snapshot, frames, 0, second, _config(), start_from=first,
                             predict_config=_predict_config())  # fmt: skip
    result, _ = _drive(steps, session, before_merge=label_frame_12)
    assert result.status == "done" and second == tmp_path / "model-round-2"
    recorded = package.read_config(second)
    assert recorded["training"]["started_from"] == str(first.resolve())
    assert _digest(first) == kept  # round 1 is untouched
    assert 12 in _user_frames(session)  # the user's instance is still there
    # Round 2 wrote nothing on the frame the user labelled meanwhile (round 1's prediction
    # there stays as it was), and replaced its predictions on the other suggested frames.
    assert _predictions_on(session, 12) == on_12
    assert {16, 20} <= _predicted_frames(session)
    # ... and what was labelled when round 2 started is in its training labels, not later work.
    assert 12 not in rounds.labelled_frames(snapshot, 0)


def test_cancel_during_training_stops_promptly_and_leaves_the_previous_model(tmp_path):
    from napari_pose.nn.train import train

    path = _project(tmp_path)
    labels = load_labels(path)
    previous = tmp_path / "model"
    assert list(train(labels, previous, _config(), stages=_tiny_stages(labels)))[-1].stage == "done"
    kept = _digest(previous)
    viewer, session, frames = _open(path)
    predictions_before = _predicted_frames(session)
    suggestions_before = list(session.labels.suggestions)

    stop = threading.Event()
    config = attrs.evolve(_config(), epochs=50, steps_per_epoch=None)  # long, unless stopped
    out = rounds.round_folder(previous)
    steps = rounds.run_round(session.current(), frames, 0, out, config, start_from=previous,
                             stop=stop)  # fmt: skip
    after_stop = 0
    asked = None
    result = None
    while True:
        try:
            progress = next(steps)
        except StopIteration as end:
            result = end.value
            break
        assert progress.predictions is None and progress.suggestions is None
        if asked is None and progress.train is not None and progress.train.loss is not None:
            asked = time.monotonic()
            stop.set()
        elif asked is not None:
            after_stop += 1
    assert asked is not None and time.monotonic() - asked < 20
    assert result.status == "cancelled" and result.model == out
    assert _digest(previous) == kept
    assert _predicted_frames(session) == predictions_before
    assert session.labels.suggestions == suggestions_before


@pytest.mark.gui
def test_retrain_and_predict_from_the_train_dock(make_napari_viewer, qtbot, tmp_path,
                                                 monkeypatch):  # fmt: skip
    """*Retrain and predict* continues from the model chosen in the dock into
    ``<model>-round-1``, merges predictions on the suggested frames into the project and adds
    the new model's suggestions; a second click continues from round 1."""
    import functools

    from gui import idle, press

    from napari_pose.nn.train import train

    path = _project(tmp_path)
    labels = load_labels(path)
    start = tmp_path / "A"
    assert list(train(labels, start, _config(), stages=_tiny_stages(labels)))[-1].stage == "done"
    monkeypatch.setattr(rounds, "run_round",
                        functools.partial(rounds.run_round, predict_config=_predict_config()))  # fmt: skip
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Train model")
    widget.start_from.value = start
    widget.epochs.value = 1
    widget.device.value = "cpu"
    widget.pipeline.value = "single_instance"
    from napari_pose.napari.session import projects

    (session,) = projects(viewer).sessions
    before = [s.frame_idx for s in session.labels.suggestions]

    press(qtbot, widget.round_button)
    assert not widget.round_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: idle(widget), timeout=120_000)

    assert widget.status.value.startswith("done"), widget.status.value
    assert widget.progress.value == 100 and widget.progress.label == "done"
    first = tmp_path / "A-round-1"
    assert package.read_config(first)["training"]["started_from"] == str(start.resolve())
    assert set(SUGGESTED) <= _predicted_frames(session)
    assert [s.frame_idx for s in session.labels.suggestions] != before
    assert str(first) in widget.results.value and widget.predict_button.enabled

    press(qtbot, widget.round_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=120_000)
    second = tmp_path / "A-round-2"
    assert package.read_config(second)["training"]["started_from"] == str(first.resolve())


@pytest.mark.gui
def test_cancelling_a_round_in_the_dock_keeps_the_previous_model(make_napari_viewer, qtbot,
                                                                  tmp_path):  # fmt: skip
    from gui import idle, press

    from napari_pose.napari.session import projects
    from napari_pose.nn.train import train

    path = _project(tmp_path)
    labels = load_labels(path)
    start = tmp_path / "A"
    assert list(train(labels, start, _config(), stages=_tiny_stages(labels)))[-1].stage == "done"
    kept = _digest(start)
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Train model")
    widget.start_from.value = start
    widget.device.value = "cpu"
    (session,) = projects(viewer).sessions

    press(qtbot, widget.round_button)
    qtbot.waitUntil(lambda: len(widget.plot.train_loss) > 0, timeout=60_000)
    asked = time.monotonic()
    press(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)
    assert time.monotonic() - asked < 10
    assert widget.progress.label == "cancelled", widget.status.value
    assert "previous model is unchanged" in widget.results.value
    assert widget.latest_model() == start and _digest(start) == kept
    assert _predicted_frames(session) == set() and not widget.predict_button.enabled
