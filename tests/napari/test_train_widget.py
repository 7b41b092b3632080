"""The *Train model* dock in a real viewer: train to the end, cancel, and reject bad input."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from gui import idle, press

from napari_pose.core.io import save_labels
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video

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
    assert "mAP" in widget.results.value and str(tmp_path / "model") in widget.results.value
    for name in ("config.yaml", "single_instance.pt", "training_log.csv", "metrics.json",
                 "skeleton.json"):  # fmt: skip
        assert (tmp_path / "model" / name).exists(), name
    widget.plot.grab()  # paints with data without raising
    assert widget.predict_button.enabled
    press(qtbot, widget.predict_button)
    predict = [w for w in viewer.window.dock_widgets.values() if hasattr(w, "maps_button")]
    assert predict and str(predict[0].model.value) == str(tmp_path / "model")


def test_cancel_stops_early_and_leaves_napari_usable(make_napari_viewer, qtbot, tmp_path):
    viewer, widget = _dock(make_napari_viewer, _project(tmp_path))
    widget.epochs.value = 1000
    widget.device.value = "cpu"
    widget.output.value = tmp_path / "model"
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: len(widget.plot.train_loss) > 0, timeout=60_000)
    press(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)

    log = tmp_path / "model" / "training_log.csv"
    epochs = len(list(csv.DictReader(log.open()))) if log.exists() else 0
    assert epochs < 5
    assert "stopped" in widget.results.value or "mAP" in widget.results.value
    viewer.dims.set_current_step(0, 3)
    assert viewer.dims.current_step[0] == 3


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
