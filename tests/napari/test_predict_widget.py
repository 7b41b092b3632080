"""The *Predict* dock in a real viewer, with a tiny model trained once on synthetic animals.

The synthetic video's ground truth is exact, so the tests check where points land, not just
that some appear: on the right frames, near the right body parts.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import attrs
import numpy as np
import pytest
import sleap_io as sio
import torch
from gui import idle, press

from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.skeleton import save_skeleton
from napari_pose.core.synthetic import SyntheticData, make_synthetic, to_labels, write_video
from napari_pose.napari.session import projects
from napari_pose.nn.data import load_frames
from napari_pose.nn.inference import Predictor
from napari_pose.nn.models import UNetConfig
from napari_pose.nn.pipelines import default_stages
from napari_pose.nn.train import TrainConfig, train

pytestmark = pytest.mark.gui

N_FRAMES = 200
TINY = UNetConfig(filters=8, filters_rate=1.5, max_stride=16, output_stride=2)


@attrs.frozen
class Setup:
    """A synthetic video, its project (first 60 frames labelled) and a model trained on it."""

    data: SyntheticData
    video: Path
    project: Path
    model: Path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    folder = tmp_path_factory.mktemp("predict")
    data = make_synthetic(n_frames=N_FRAMES, size=64, n_animals=1, seed=2)
    write_video(data.frames, folder / "v.mp4")
    labels = to_labels(data, str(folder / "v.mp4"), labelled_frames=slice(0, 60))
    save_labels(labels, folder / "p.slp")
    frames = load_frames(labels, range(0, 60))
    stages = {kind: attrs.evolve(stage, model=attrs.evolve(stage.model, backbone=attrs.evolve(
        TINY, output_stride=stage.model.backbone.output_stride)))
        for kind, stage in default_stages(frames, "single_instance").items()}  # fmt: skip
    config = TrainConfig(pipeline="single_instance", epochs=4, steps_per_epoch=40, batch_size=8,
                         learning_rate=3e-3, device="cpu", frames=range(0, 60))  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as fast for a tiny model, and many times faster on busy cores
    try:
        for _ in train(labels, folder / "model", config, stages=stages):
            pass
    finally:
        torch.set_num_threads(threads)
    return Setup(data, folder / "v.mp4", folder / "p.slp", folder / "model")


def _dock(make_napari_viewer, path: Path, model: Path | None = None):
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
    if model is not None:
        widget.model.value = model
    widget.device.value = "cpu"
    return viewer, widget


def _run(qtbot, widget) -> None:
    press(qtbot, widget.start_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)


def _frames(layer) -> set[int]:
    return set(np.round(layer.data[:, 0]).astype(int).tolist())


def _errors(layer, data: SyntheticData) -> np.ndarray:
    """Distance in pixels of every predicted point to the true position of its node."""
    frame = np.round(layer.data[:, 0]).astype(int)
    node = layer.features["node"].cat.codes.to_numpy()
    truth = data.points[frame, 0, node]  # (x, y)
    return np.hypot(layer.data[:, 2] - truth[:, 0], layer.data[:, 1] - truth[:, 1])


def test_a_range_lands_near_the_truth_and_saves_as_slp(make_napari_viewer, qtbot, tmp_path, setup):
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    assert widget.image.value is viewer.layers["v"]
    assert widget.first.native.isHidden() and widget.last.native.isHidden()
    widget.frames.value = "range"
    assert not widget.first.native.isHidden() and not widget.last.native.isHidden()
    widget.first.value, widget.last.value = 0, 19
    _run(qtbot, widget)

    layer = widget.predictions_layer
    assert layer.name == "v predictions [model]" and layer in viewer.layers
    assert _frames(layer) == set(range(20))
    assert np.median(_errors(layer, setup.data)) < 4
    assert widget.progress.value == 100
    assert len(viewer.layers["v predictions [model] skeleton"].data) > 0

    widget.save_path.value = tmp_path / "predictions.slp"
    press(qtbot, widget.save_button)
    saved = sio.load_slp(str(tmp_path / "predictions.slp"))
    assert len(saved.labeled_frames) == 20
    assert all(isinstance(inst, sio.PredictedInstance)
               for lf in saved.labeled_frames for inst in lf.instances)  # fmt: skip
    assert sorted(lf.frame_idx for lf in saved.labeled_frames) == list(range(20))


def test_current_frame_predicts_only_the_frame_on_screen(make_napari_viewer, qtbot, setup):
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    viewer.dims.set_current_step(0, 7)
    assert widget.frames.value == "current frame"
    _run(qtbot, widget)
    assert _frames(widget.predictions_layer) == {7}

    viewer.dims.set_current_step(0, 9)  # predicting again adds the new frame, keeps frame 7
    _run(qtbot, widget)
    assert _frames(widget.predictions_layer) == {7, 9}


def test_cancel_keeps_what_was_predicted(make_napari_viewer, qtbot, setup, monkeypatch):
    predict = Predictor.predict

    def slow(self, frames):  # a video long enough to cancel on any machine
        time.sleep(0.02)
        return predict(self, frames)

    monkeypatch.setattr(Predictor, "predict", slow)
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    widget.frames.value = "all"
    widget.batch_size.value = 1
    press(qtbot, widget.start_button)
    assert not widget.start_button.enabled and widget.cancel_button.enabled
    qtbot.waitUntil(lambda: widget.predictions_layer is not None
                    and len(widget.predictions_layer.data) > 0, timeout=60_000)  # fmt: skip
    press(qtbot, widget.cancel_button)
    qtbot.waitUntil(lambda: idle(widget), timeout=60_000)

    assert 0 < len(_frames(widget.predictions_layer)) < N_FRAMES
    assert widget.progress.value < 100 and "cancelled" in widget.status.value


def test_confidence_maps_are_lazy_and_peak_on_the_animal(make_napari_viewer, qtbot, setup):
    import dask.array as da

    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    press(qtbot, widget.maps_button)
    layer = viewer.layers["v confidence maps [model]"]
    assert isinstance(layer.data, da.Array) and layer.data.shape == (N_FRAMES, 64, 64)
    assert layer.data.chunksize[0] == 1 and layer.colormap.name == "inferno"
    assert tuple(layer.contrast_limits) == (0, 1) and layer.blending == "additive"
    maps = np.asarray(layer.data[5])
    assert maps.shape == (64, 64) and maps.dtype == np.float32
    y, x = np.unravel_index(np.argmax(maps), maps.shape)
    assert np.hypot(*(setup.data.points[5, 0] - [x, y]).T).min() < 4


def test_suggested_and_labelled_frames_come_from_the_open_project(make_napari_viewer, qtbot, setup):
    viewer, widget = _dock(make_napari_viewer, setup.project, setup.model)
    widget.image.value = viewer.layers["v"]
    widget.frames.value = "suggested"
    _run(qtbot, widget)
    suggested = {s.frame_idx for s in sio.load_slp(str(setup.project)).suggestions}
    assert suggested and _frames(widget.predictions_layer) == suggested

    widget.frames.value = "labelled"
    _run(qtbot, widget)
    assert _frames(widget.predictions_layer) == suggested | set(range(60))


def test_bad_input_is_reported_and_leaves_the_widgetidle(make_napari_viewer, qtbot, setup,
                                                          tmp_path, monkeypatch):  # fmt: skip
    from napari_pose.napari._qt import predict_widget as _predict_widget

    errors: list[str] = []
    monkeypatch.setattr(_predict_widget, "show_error", errors.append)
    viewer, widget = _dock(make_napari_viewer, setup.video, tmp_path)
    _run(qtbot, widget)
    assert len(errors) == 1 and str(tmp_path) in errors[0]
    assert widget.status.value == "failed" and widget.predictions_layer is None

    widget.model.value = setup.model
    widget.frames.value = "suggested"  # a bare video has no project, so no suggestions
    press(qtbot, widget.start_button)
    assert len(errors) == 2 and "no open pose project" in errors[1] and idle(widget)


def test_tracking_after_a_run_gives_identities_that_save(make_napari_viewer, qtbot, tmp_path,
                                                        setup):  # fmt: skip
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    widget.frames.value = "range"
    widget.first.value, widget.last.value = 0, 29
    widget.track_box.value, widget.animals.value = True, 1
    assert widget.plane_axes.native.isHidden()  # a video's one plane axis is time
    _run(qtbot, widget)
    assert "1 tracks" in widget.status.value
    widget.save_path.value = tmp_path / "tracked.slp"
    press(qtbot, widget.save_button)
    saved = sio.load_slp(str(tmp_path / "tracked.slp"))
    assert len(saved.tracks) == 1
    assert all(
        inst.track is saved.tracks[0] for lf in saved.labeled_frames for inst in lf.instances
    )


#: Frames an older model predicted in the project of ``_with_old_predictions``.
OLD_FRAMES = [100, 101, 102, 103, 104, 110]


def _with_old_predictions(setup: Setup, folder: Path) -> Path:
    """The project with an older model's predictions (score 0.5, a pixel off) on ``OLD_FRAMES``."""
    labels = load_labels(setup.project, lazy=False)
    skeleton, video = labels.skeletons[0], labels.videos[0]
    for frame in OLD_FRAMES:
        old = sio.PredictedInstance.from_numpy(setup.data.points[frame, 0] + 1, skeleton,
                                               point_scores=np.full(5, 0.5), score=0.5)  # fmt: skip
        labels.append(sio.LabeledFrame(video=video, frame_idx=frame, instances=[old]))
    save_labels(labels, folder / "q.slp")
    return folder / "q.slp"


def _model_with_nodes(setup: Setup, folder: Path, names: list[str]) -> Path:
    """A copy of the trained model whose skeleton file calls its outputs ``names``."""
    copy = folder / "other model"
    shutil.copytree(setup.model, copy)
    save_skeleton(sio.Skeleton(names), copy / "skeleton.json")
    return copy


def _points(layer, frame: int) -> dict[str, tuple[float, ...]]:
    """Node name -> point of the one instance a layer has on ``frame``."""
    on_frame = layer.data[:, 0] == frame
    assert layer.features["instance"][on_frame].nunique() == 1
    return dict(zip(layer.features["node"][on_frame], map(tuple, layer.data[on_frame])))


def test_merge_replaces_the_projects_predictions_on_those_frames_and_saves(
        make_napari_viewer, qtbot, tmp_path, setup):  # fmt: skip
    viewer, widget = _dock(make_napari_viewer, _with_old_predictions(setup, tmp_path), setup.model)
    widget.image.value = viewer.layers["v"]
    user, predictions = viewer.layers["v labels"], viewer.layers["v predictions"]
    user_points = user.data.copy()
    old_100 = _points(predictions, 100)
    widget.frames.value = "range"
    widget.first.value, widget.last.value = 105, 114
    widget.track_box.value, widget.animals.value = True, 1
    _run(qtbot, widget)
    dock = widget.predictions_layer
    assert list(projects(viewer).listed()) == ["q.slp"]  # the dock's own layer is no project
    new_110 = _points(dock, 110)
    score_110 = dock.features["instance_score"][dock.data[:, 0] == 110].iloc[0]

    press(qtbot, widget.merge_button)
    assert dock not in viewer.layers and "v predictions [model] skeleton" not in viewer.layers
    assert widget.predictions_layer is None
    assert "merged 10 predicted instances on 10 frames into" in widget.status.value
    assert _frames(predictions) == set(range(100, 115))
    assert _points(predictions, 110) == new_110  # the older prediction there is replaced
    assert _points(predictions, 100) == old_100  # those on frames not predicted again stay
    np.testing.assert_array_equal(user.data, user_points)

    _, project_dock = viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    project_dock.save_path.value = tmp_path / "saved.slp"
    press(qtbot, project_dock.save)
    saved = sio.load_slp(str(tmp_path / "saved.slp"))
    predicted = {lf.frame_idx: lf.predicted_instances for lf in saved.labeled_frames
                 if lf.predicted_instances}  # fmt: skip
    assert sorted(predicted) == list(range(100, 115))
    assert all(len(instances) == 1 for instances in predicted.values())
    assert [predicted[f][0].score for f in range(100, 105)] == [0.5] * 5
    assert predicted[110][0].score == pytest.approx(score_110)
    assert [t.name for t in saved.tracks] == ["animal_0", "track_0"]
    assert all(predicted[f][0].track is saved.tracks[1] for f in range(105, 115))
    assert sum(len(lf.user_instances) for lf in saved.labeled_frames) == 60


def test_merge_matches_nodes_by_name_and_adds_a_predictions_layer(make_napari_viewer, qtbot,
                                                                  tmp_path, setup):  # fmt: skip
    nodes = sio.load_slp(str(setup.project)).skeletons[0].node_names
    reordered = [nodes[1], nodes[0], *nodes[2:]]
    viewer, widget = _dock(make_napari_viewer, setup.project,
                           _model_with_nodes(setup, tmp_path, reordered))  # fmt: skip
    widget.image.value = viewer.layers["v"]
    assert "v predictions" not in viewer.layers  # the project has no predictions yet
    viewer.dims.set_current_step(0, 150)
    _run(qtbot, widget)
    predicted = _points(widget.predictions_layer, 150)

    press(qtbot, widget.merge_button)
    merged = viewer.layers["v predictions"]  # made as the reader makes it, with its edges
    assert list(merged.features["node"].cat.categories) == nodes
    assert _points(merged, 150) == predicted
    assert len(viewer.layers["v predictions skeleton"].data) == 4


def test_a_model_with_other_nodes_is_refused_and_nothing_changes(make_napari_viewer, qtbot,
                                                                 tmp_path, setup, monkeypatch):  # fmt: skip
    from napari_pose.napari._qt import predict_widget as _predict_widget

    errors: list[str] = []
    monkeypatch.setattr(_predict_widget, "show_error", errors.append)
    nodes = sio.load_slp(str(setup.project)).skeletons[0].node_names
    other = _model_with_nodes(setup, tmp_path, ["snout", *nodes[1:]])
    viewer, widget = _dock(make_napari_viewer, setup.project, other)
    widget.image.value = viewer.layers["v"]
    widget.frames.value = "suggested"  # frames of the project: refused before running
    press(qtbot, widget.start_button)
    assert idle(widget) and widget.predictions_layer is None and len(errors) == 1
    for part in (str(other), str(setup.project), "nodes missing in the project: snout",
                 f"nodes missing in the model: {nodes[0]}"):  # fmt: skip
        assert part in errors[0]

    widget.frames.value = "current frame"  # predicting is fine, merging is not
    _run(qtbot, widget)
    user = viewer.layers["v labels"]
    user_points = user.data.copy()
    press(qtbot, widget.merge_button)
    assert errors[1:] == errors[:1]
    assert widget.predictions_layer in viewer.layers and "v predictions" not in viewer.layers
    np.testing.assert_array_equal(user.data, user_points)


def test_merge_without_an_open_project_says_how_to_keep_the_predictions(
        make_napari_viewer, qtbot, setup, monkeypatch):  # fmt: skip
    from napari_pose.napari._qt import predict_widget as _predict_widget

    errors: list[str] = []
    monkeypatch.setattr(_predict_widget, "show_error", errors.append)
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    _run(qtbot, widget)
    assert projects(viewer).listed() == {}  # nothing to train on or to merge into
    press(qtbot, widget.merge_button)
    assert errors == [
        "no open pose project labels 'v'; open it first or Save predictions to a file"
    ]
    assert widget.predictions_layer in viewer.layers


def test_a_stack_is_tracked_along_its_time_axis_each_depth_apart(make_napari_viewer, qtbot,
                                                                 setup, monkeypatch):  # fmt: skip
    """A (t, z) stack: the dock offers its axes from the layer, tracks each depth over time,
    and refuses letters that do not fit."""
    from napari_pose.napari._qt import predict_widget as _predict_widget

    errors: list[str] = []
    monkeypatch.setattr(_predict_widget, "show_error", errors.append)
    viewer = make_napari_viewer()
    # z0 shows even frames of the synthetic video, z1 odd ones: one animal per plane, and two
    # different animals' paths when the planes are read in flat (t, z) order.
    stack = setup.data.frames[:40].reshape(20, 2, 64, 64)
    image = viewer.add_image(stack, name="stack", axis_labels=("t", "z", "y", "x"))
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
    widget.model.value, widget.device.value = setup.model, "cpu"
    assert widget.image.value is image and not widget.plane_axes.native.isHidden()
    assert widget.plane_axes.value == "TZ"

    widget.plane_axes.value = "TT"
    press(qtbot, widget.start_button)
    assert len(errors) == 1 and "'stack' has 2 axes before y, x" in errors[0] and idle(widget)

    widget.plane_axes.value = "tz"
    widget.frames.value = "all"
    widget.track_box.value, widget.animals.value = True, 1
    _run(qtbot, widget)
    binding = widget.predictions_layer.metadata["napari_pose"]
    arrays = binding.arrays
    assert sorted(set(arrays.frame.tolist())) == list(range(40))
    names = np.array([t.name for t in arrays.tracks])[arrays.track]
    depth = arrays.frame % 2
    assert set(names[depth == 0]) == {"z0 track_0"} and set(names[depth == 1]) == {"z1 track_1"}
    layer_z = np.round(widget.predictions_layer.data[:, 1]).astype(int)
    assert set(widget.predictions_layer.features["track"][layer_z == 1]) == {"z1 track_1"}


@pytest.mark.parametrize("old_predictions", [True, False],
                         ids=["into its predictions layer", "into a new one"])  # fmt: skip
def test_merged_tracks_join_the_projects_trajectories_and_the_merge_is_an_edit(
        make_napari_viewer, qtbot, tmp_path, setup, old_predictions):  # fmt: skip
    """The project's Tracks layer is redrawn with the merged tracks, also when the merge made the
    project's predictions layer, and the merge is announced for the autosaver and close guard."""
    from napari_pose.napari.convert import POSE_KEY, TRACKS_KEY

    path = _with_old_predictions(setup, tmp_path) if old_predictions else setup.project
    viewer, widget = _dock(make_napari_viewer, path, setup.model)
    widget.image.value = viewer.layers["v"]
    (session,) = projects(viewer).listed().values()
    (before,) = [layer for layer in viewer.layers if TRACKS_KEY in layer.metadata]
    user_trajectory = before.data.copy()  # the user labels' animal_0, on frames 0-59
    widget.frames.value = "range"
    widget.first.value, widget.last.value = 105, 114
    widget.track_box.value, widget.animals.value = True, 1
    _run(qtbot, widget)

    edited: list = []
    session.edited.connect(lambda: edited.append(True))
    press(qtbot, widget.merge_button)
    assert edited == [True] and session.dirty

    predictions = viewer.layers["v predictions"]
    (tracks,) = [layer for layer in viewer.layers if TRACKS_KEY in layer.metadata]
    assert predictions.metadata[POSE_KEY] in tracks.metadata[TRACKS_KEY].bindings
    # Track 1 (the merged track_0) through each merged frame's centroid; animal_0 as it was.
    centroids = [[1, f, *predictions.data[predictions.data[:, 0] == f, 1:].mean(axis=0)]
                 for f in range(105, 115)]  # fmt: skip
    np.testing.assert_allclose(tracks.data[tracks.data[:, 0] == 1], centroids)
    np.testing.assert_array_equal(tracks.data[tracks.data[:, 0] == 0], user_trajectory)
    # Border colours cover the track the merge added: one per track, then white (untracked).
    assert len(session.labels.tracks) == 2
    for layer in (viewer.layers["v labels"], predictions):
        assert len(layer.border_color_cycle) == 3


@pytest.mark.parametrize("n_merges", [1, 5, 25])
def test_every_merge_comes_back_after_a_kill(
    make_napari_viewer, qtbot, tmp_path, setup, monkeypatch, n_merges
):
    from gui import survives_a_kill

    from napari_pose.napari import session as session_module

    monkeypatch.setattr(session_module, "AUTOSAVE_DELAY_S", 0.2)  # the debounce, made short
    project = tmp_path / "p.slp"
    project.write_bytes(setup.project.read_bytes())
    viewer, widget = _dock(make_napari_viewer, project, setup.model)
    widget.image.value = viewer.layers["v"]
    widget.frames.value = "range"
    for i in range(n_merges):
        widget.first.value = widget.last.value = 100 + i
        _run(qtbot, widget)
        press(qtbot, widget.merge_button)
    (session,) = projects(viewer).listed().values()
    assert session.dirty and len(session.current().labeled_frames) == 60 + n_merges
    assert survives_a_kill(qtbot, session)


def test_one_animals_box_limits_detection_and_tracking(make_napari_viewer, qtbot, setup,
                                                       monkeypatch):  # fmt: skip
    """*animals per frame* is how many animals detection keeps per frame and the most tracks;
    at 0 both follow the model's training labels, whose number the dock shows for the model."""
    from napari_pose.napari._qt import predict_widget as _predict_widget

    limits: list[tuple[str, int]] = []
    predict_video, track_planes = _predict_widget.predict_video, _predict_widget.track_planes

    def recorded_video(predictor, *args, **kwargs):
        limits.append(("detection", predictor.max_instances))
        return predict_video(predictor, *args, **kwargs)

    def recorded_tracks(arrays, planes, config):
        limits.append(("tracks", config.max_tracks))
        return track_planes(arrays, planes, config)

    monkeypatch.setattr(_predict_widget, "predict_video", recorded_video)
    monkeypatch.setattr(_predict_widget, "track_planes", recorded_tracks)
    viewer, widget = _dock(make_napari_viewer, setup.video)
    assert widget.animals.value == 0 and widget.trained_animals.native.isHidden()
    widget.model.value = setup.model
    assert not widget.trained_animals.native.isHidden()
    assert widget.trained_animals.value == "0: as in the training labels, up to 1 per frame"
    widget.track_box.value = True
    _run(qtbot, widget)
    widget.animals.value = 3
    _run(qtbot, widget)
    assert limits == [("detection", 1), ("tracks", 1), ("detection", 3), ("tracks", 3)]
    widget.model.value = setup.model.parent  # no model there: nothing to say
    assert widget.trained_animals.native.isHidden()


def test_mirrored_frames_and_refinement_are_the_users_choice(make_napari_viewer, qtbot, setup,
                                                            monkeypatch):  # fmt: skip
    """*average with mirrored frames* reaches the model (a new load: it wraps the networks)
    and *refine along tracks* refines the tracked poses; both off by default."""
    from napari_pose.napari._qt import predict_widget as _predict_widget
    from napari_pose.nn.tta import FlipAveraged

    seen: list[tuple[str, object]] = []
    predict_video, refine_tracks = _predict_widget.predict_video, _predict_widget.refine_tracks

    def recorded_video(predictor, *args, **kwargs):
        flipped = all(isinstance(m, FlipAveraged) for m in predictor.package.models.values())
        seen.append(("flip", flipped))
        return predict_video(predictor, *args, **kwargs)

    def recorded_refine(arrays):
        seen.append(("refine", len(arrays)))
        return refine_tracks(arrays)

    monkeypatch.setattr(_predict_widget, "predict_video", recorded_video)
    monkeypatch.setattr(_predict_widget, "refine_tracks", recorded_refine)
    viewer, widget = _dock(make_napari_viewer, setup.video)
    assert not widget.flip_tta.value and not widget.refine_box.value
    widget.model.value = setup.model
    widget.track_box.value = True
    _run(qtbot, widget)
    widget.flip_tta.value = widget.refine_box.value = True
    _run(qtbot, widget)
    assert seen[0] == ("flip", False) and seen[1] == ("flip", True)
    assert [kind for kind, _ in seen] == ["flip", "flip", "refine"] and seen[2][1] > 0


def test_frames_with_more_animals_than_the_box_allows_are_a_warning(
        make_napari_viewer, qtbot, setup, monkeypatch):  # fmt: skip
    from napari_pose.napari._qt import predict_widget as _predict_widget

    warned: list[str] = []
    monkeypatch.setattr(_predict_widget, "show_warning", warned.append)
    predict_batch = Predictor._predict_batch

    def three_found(self, batch):  # the model found 3 animals in every frame
        return [attrs.evolve(p, n_candidates=3) for p in predict_batch(self, batch)]

    monkeypatch.setattr(Predictor, "_predict_batch", three_found)
    viewer, widget = _dock(make_napari_viewer, setup.video, setup.model)
    widget.frames.value = "range"
    widget.first.value, widget.last.value = 0, 9
    widget.animals.value = 2
    _run(qtbot, widget)
    assert warned == [
        "10 of 10 frames held more than 2 animals (the model found up to 3) and only the best "
        "2 of each were kept; if frames can hold more, raise the animals per frame: --animals "
        "N (napari-pose predict) or 'animals per frame' in the Predict dock"
    ]
    widget.animals.value = 3
    _run(qtbot, widget)
    assert len(warned) == 1


def test_the_model_field_follows_the_projects_model_unless_the_user_chose_another(
    make_napari_viewer, sample_project, tmp_path
):
    from napari_pose.napari.session import projects

    viewer, widget = _dock(make_napari_viewer, sample_project)
    (session,) = projects(viewer).sessions
    first, second, third, mine = (tmp_path / n for n in ("first", "second", "third", "mine"))
    session.set_model(first)
    assert widget.model.value == first  # empty: the project's latest model
    session.set_model(second)
    assert widget.model.value == second  # it held the previous one
    widget.model.value = mine
    session.set_model(third)
    assert widget.model.value == mine
