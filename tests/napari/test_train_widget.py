"""The *Train model* dock in a real viewer: train to the end, cancel, and reject bad input."""

from __future__ import annotations

import csv
import math
import time
from pathlib import Path

import pytest
from gui import idle, press

from napari_pose.core.io import save_labels
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
from napari_pose.nn import package
from napari_pose.nn.train import Progress

pytestmark = pytest.mark.gui


def _project(tmp_path: Path, predicted: bool = False) -> Path:
    """A tiny one-animal project (24 frames of 64 px) saved as .slp beside its video."""
    data = make_synthetic(n_frames=24, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    path = tmp_path / ("predicted.slp" if predicted else "p.slp")
    save_labels(to_labels(data, str(tmp_path / "v.mp4"), predicted=predicted), path)
    return path


def _dock(make_napari_viewer, path: Path | None = None):
    viewer = make_napari_viewer()
    if path is not None:
        viewer.open(str(path), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Train model")
    return viewer, widget


def test_training_runs_to_the_end_and_shows_results(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _dock(make_napari_viewer, _project(tmp_path))
    assert widget.project.value == "p.slp"
    widget.pipeline.value = "single_instance"
    widget.epochs.value = 2
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "model"
    press(qtbot, widget.start_button)
    assert not widget.start_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: idle(widget), timeout=120_000)

    assert widget.progress.value == 100
    assert len(widget.plot.train_loss) > 0
    assert len(widget.plot.val_loss) == 2 and len(widget.plot.val_error) == 2
    # The figures shown while training say which frames, kept out of training, they score.
    assert widget.plot.headline().startswith("validation (frames ")
    assert "of v.mp4" in widget.plot.headline() and "median error" in widget.plot.headline()
    assert "mAP" in widget.results.value and str(tmp_path / "model") in widget.results.value
    for name in ("config.yaml", "single_instance.pt", "training_log.csv", "metrics.json",
                 "skeleton.json"):  # fmt: skip
        assert (tmp_path / "model" / name).exists(), name
    widget.plot.grab()  # paints with data without raising
    assert widget.predict_button.enabled
    press(qtbot, widget.predict_button)
    predict = [w for w in viewer.window.dock_widgets.values() if hasattr(w, "maps_button")]
    assert predict and str(predict[0].model.value) == str(tmp_path / "model")


def test_cancel_stops_within_seconds_says_cancelled_and_leaves_napari_usable(
    make_napari_viewer, qtbot, tmp_path
):
    """With the dock's defaults (a 15-minute time budget), Cancel ends training within a few
    seconds and the dock says the run was cancelled and can be resumed, not that it is done."""
    viewer, widget = _dock(make_napari_viewer, _project(tmp_path))
    assert widget.time_limit.value == 15  # the default is a time budget, not a count of epochs
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "model"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: len(widget.plot.train_loss) > 0, timeout=60_000)
    asked = time.monotonic()
    press(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)
    # Three seconds: one step of the small model (tens of ms here) and Qt delivering the
    # worker's last signals; before, a cancelled run validated and evaluated first.
    assert time.monotonic() - asked < 3.0

    assert "cancelled" in widget.status.value and "done" not in widget.status.value
    assert "resum" in widget.results.value and str(tmp_path / "model") in widget.results.value
    assert package.read_config(tmp_path / "model")["training"]["time_limit"] == 15
    log = tmp_path / "model" / "training_log.csv"
    assert (len(list(csv.DictReader(log.open()))) if log.exists() else 0) < 5
    viewer.dims.set_current_step(0, 3)
    assert viewer.dims.current_step[0] == 3


def test_a_model_that_found_no_animals_is_reported_plainly(make_napari_viewer):
    """Metrics without a single detection (NaN errors) read as advice, never as "nan px"."""
    _, widget = _dock(make_napari_viewer)
    nothing = {"val_loss": 1e-3, "oks_map": 0.0, "dist_median_px": math.nan,
               "dist_p90_px": math.nan, "pck_5px": 0.0, "n_gt": 3, "n_pred": 0}  # fmt: skip
    widget._show(Progress("single_instance", 1, 40, 40, 1e-3, 0.5, 1.0, validation=nothing))
    widget._show(Progress("done", fraction=1.0, validation={**nothing, "n_val_frames": 3}))
    shown = f"{widget.status.value} {widget.results.value}".lower()
    assert "nan" not in shown
    assert "no animals" in widget.results.value and "label more frames" in widget.results.value
    widget.plot.grab()  # paints a NaN error without raising


def test_labels_without_user_instances_give_a_clear_error(make_napari_viewer, qtbot, tmp_path,
                                                          monkeypatch):  # fmt: skip
    from napari_pose.napari._qt import train_widget as _train_widget

    errors: list[str] = []
    monkeypatch.setattr(_train_widget, "show_error", errors.append)
    viewer, widget = _dock(make_napari_viewer)
    widget.labels_file.value = _project(tmp_path, predicted=True)
    widget.output.value = tmp_path / "model"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)

    assert len(errors) == 1 and "no user-labelled instances" in errors[0]
    assert widget.status.value == "failed"


def _tiny_model(labels_path: Path, out: Path) -> Path:
    """A tiny single-instance package trained for one short epoch on ``labels_path``."""
    import attrs

    from napari_pose.core.io import load_labels
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.models import UNetConfig
    from napari_pose.nn.pipelines import default_stages
    from napari_pose.nn.train import TrainConfig, train

    labels = load_labels(labels_path)
    stages = default_stages(load_frames(labels), "single_instance")
    tiny = UNetConfig(filters=4, max_stride=16, output_stride=2)
    stages = {k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=tiny))
              for k, s in stages.items()}  # fmt: skip
    config = TrainConfig(pipeline="single_instance", epochs=1, steps_per_epoch=2, batch_size=4)
    assert list(train(labels, out, config, stages=stages))[-1].stage == "done"
    return out


def test_training_continues_from_a_chosen_model(make_napari_viewer, qtbot, tmp_path,
                                                monkeypatch):  # fmt: skip
    """*Continue from model*: the dock's run starts from that package (its tiny model, not
    the dock's model size) and the new package records it; a model with other nodes is
    refused in one message before anything is trained."""
    import shutil

    import sleap_io as sio

    from napari_pose.core.skeleton import save_skeleton
    from napari_pose.napari._qt import train_widget as _train_widget

    path = _project(tmp_path)
    start = _tiny_model(path, tmp_path / "A")
    viewer, widget = _dock(make_napari_viewer, path)
    assert widget._chosen(widget.start_from) is None  # empty: from scratch
    widget.start_from.value = start
    widget.epochs.value = 1
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "B"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=120_000)

    assert widget.status.value.startswith("done"), widget.status.value
    recorded = package.read_config(tmp_path / "B")
    assert recorded["complete"] and recorded["training"]["started_from"] == str(start.resolve())
    assert recorded["stages"] == package.read_config(start)["stages"]
    assert widget.predict_button.enabled

    errors: list[str] = []
    monkeypatch.setattr(_train_widget, "show_error", errors.append)
    other = tmp_path / "other"
    shutil.copytree(start, other)
    nodes = package.load_package(start).skeleton.node_names
    save_skeleton(sio.Skeleton(["snout", *nodes[1:]]), other / "skeleton.json")
    widget.start_from.value = other
    widget.output.value = tmp_path / "C"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)
    assert len(errors) == 1 and str(other) in errors[0] and "snout" in errors[0]
    assert widget.status.value == "failed" and not (tmp_path / "C").exists()


def test_the_other_docks_follow_the_projects_new_model(make_napari_viewer, qtbot, tmp_path,
                                                       monkeypatch):  # fmt: skip
    """A run that finishes makes its package the project's model: the Predict dock's empty
    model field takes it; the Label dock's empty "propose from model" field stays empty
    (proposals stay off), but once it holds the project's model it follows the next one and
    says so; a cancelled run changes nothing."""
    import functools
    import shutil

    import attrs

    from napari_pose.napari._qt import train_widget as _train_widget
    from napari_pose.napari.session import projects
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.models import UNetConfig
    from napari_pose.nn.pipelines import default_stages
    from napari_pose.nn.train import train

    def tiny(labels, out, config, **kwargs):  # a tiny model, two steps an epoch
        if kwargs.get("start_from") is None:
            tiny_unet = UNetConfig(filters=4, max_stride=16, output_stride=2)
            kwargs["stages"] = {
                k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=tiny_unet))
                for k, s in default_stages(load_frames(labels), "single_instance").items()
            }
        config = attrs.evolve(config, steps_per_epoch=2, batch_size=2)
        return train(labels, out, config, **kwargs)

    monkeypatch.setattr(_train_widget, "train", tiny)
    viewer, widget = _dock(make_napari_viewer, _project(tmp_path))
    _, predict = viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    (session,) = projects(viewer).sessions
    assert label.session is session and predict.model.value in (None, Path("."), Path(""))
    widget.pipeline.value = "single_instance"
    widget.epochs.value = 1
    widget.device.value = "cpu"
    run = functools.partial(_train_to_the_end, qtbot, widget)

    first = run(tmp_path / "A")
    assert session.model == first
    assert predict.model.value == first  # empty: predict with the project's latest model
    assert str(label.propose_model.value) in ("", ".")  # empty means off: it stays off
    assert label.labeller is not None and label.labeller.proposer.folder is None

    label.propose_model.value = first  # the user proposes from the project's model
    mine = tmp_path / "mine"
    shutil.copytree(first, mine)
    predict.model.value = mine  # a folder the user chose: theirs to keep
    widget.start_from.value = first  # continue training, into a new folder
    second = run(tmp_path / "B")
    assert session.model == second
    assert label.propose_model.value == second
    assert label.labeller.proposer.folder == second
    assert "proposals now from B" in label.status.value
    assert predict.model.value == mine

    predict.model.value = second
    widget.epochs.value = 1000  # long enough to be cancelled
    widget.output.value = tmp_path / "C"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: len(widget.plot.train_loss) > 0, timeout=60_000)
    press(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)
    assert "cancelled" in widget.status.value
    assert session.model == second and label.propose_model.value == second
    assert predict.model.value == second


def _train_to_the_end(qtbot, widget, out: Path) -> Path:
    widget.output.value = out
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)
    assert widget.status.value.startswith("done"), widget.status.value
    return out


def test_a_round_makes_its_model_the_projects_and_the_docks_follow(make_napari_viewer, qtbot,
                                                                   tmp_path, monkeypatch):  # fmt: skip
    """*Retrain and predict* into ``<model>-round-1``: the project's model is the round's, and
    the Label and Predict docks that held the previous one follow it."""
    import functools

    from napari_pose.napari import rounds
    from napari_pose.napari.session import projects
    from napari_pose.nn.inference import PredictConfig

    path = _project(tmp_path)
    start = _tiny_model(path, tmp_path / "A")
    monkeypatch.setattr(rounds, "run_round", functools.partial(
        rounds.run_round, predict_config=PredictConfig(batch_size=4, device="cpu", workers=1)))  # fmt: skip
    viewer, widget = _dock(make_napari_viewer, path)
    _, predict = viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
    _, label = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    (session,) = projects(viewer).sessions
    session.set_model(start)  # as if the dock had trained it
    label.propose_model.value = start
    assert predict.model.value == start
    widget.start_from.value = start
    widget.epochs.value = 1
    widget.device.value = "cpu"
    widget.pipeline.value = "single_instance"
    press(qtbot, widget.round_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)

    assert widget.status.value.startswith("done"), widget.status.value
    first = tmp_path / "A-round-1"
    assert session.model == first
    assert label.propose_model.value == first and predict.model.value == first
    assert "proposals now from A-round-1" in label.status.value
