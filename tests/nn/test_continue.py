"""Continue training: a new run on the project's current labels that starts from a package."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

import attrs
import numpy as np
import pytest
import sleap_io as sio
import torch

from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.skeleton import save_skeleton
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video
from napari_pose.nn import package
from napari_pose.nn.data import load_frames
from napari_pose.nn.models import UNetConfig, build_model
from napari_pose.nn.pipelines import crop_size, default_stages
from napari_pose.nn.train import TrainConfig, evaluate_package, train

TINY = UNetConfig(filters=8, filters_rate=1.5, max_stride=16, output_stride=2)


def _tiny(stages):
    return {k: attrs.evolve(s, model=attrs.evolve(s.model, backbone=attrs.evolve(
        TINY, output_stride=s.model.backbone.output_stride,
        in_channels=s.model.backbone.in_channels))) for k, s in stages.items()}  # fmt: skip


def _project(folder: Path, n_animals: int = 1) -> Path:
    data = make_synthetic(n_frames=40, size=64, n_animals=n_animals, seed=2)
    write_video(data.frames, folder / "v.mp4")
    save_labels(to_labels(data, str(folder / "v.mp4")), folder / "p.slp")
    return folder / "p.slp"


@pytest.fixture(scope="module")
def package_a(tmp_path_factory) -> tuple[Path, Path]:
    """A one-animal project and package A: a tiny single-instance model trained 6 epochs."""
    folder = tmp_path_factory.mktemp("continue")
    path = _project(folder)
    labels = load_labels(path)
    stages = _tiny(default_stages(load_frames(labels), "single_instance"))
    config = TrainConfig(pipeline="single_instance", epochs=6, steps_per_epoch=8, batch_size=8,
                         learning_rate=3e-3)  # fmt: skip
    events = list(train(labels, folder / "A", config, stages=stages))
    assert events[-1].stage == "done"
    return path, folder / "A"


def _parameters(state: dict, model_names: set[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if k in model_names}


def _param_names(folder: Path) -> set[str]:
    model = package.load_package(folder)  # fused for prediction: rebuild the unfused names
    built = build_model(model.stages["single_instance"].model, pretrained=False)
    return {name for name, _ in built.named_parameters()}


def test_every_stage_starts_from_the_packages_best_weights(package_a, tmp_path):
    """With a learning rate of 0 no step moves a parameter: B's weights are its start."""
    path, a = package_a
    labels = load_labels(path)
    still = TrainConfig(preset="large", epochs=1, steps_per_epoch=2, batch_size=4,
                        learning_rate=0.0)  # fmt: skip
    events = list(train(labels, tmp_path / "B", still, start_from=a))
    assert events[-1].stage == "done"
    names = _param_names(a)
    start = _parameters(package.load_torch(package.weights_path(a, "single_instance")), names)
    after = _parameters(package.load_torch(package.weights_path(tmp_path / "B",
                                                                "single_instance")), names)  # fmt: skip
    assert start.keys() == after.keys() and len(start) > 10
    assert all(torch.equal(start[k], after[k]) for k in start)

    recorded, own = package.read_config(tmp_path / "B"), package.read_config(a)
    assert recorded["training"]["started_from"] == str(a.resolve())
    assert recorded["complete"] and recorded["pipeline"] == own["pipeline"]
    assert recorded["stages"] == own["stages"]  # the package's model and inputs, not a preset's
    assert recorded["training"]["preset"] == own["training"]["preset"] == "small"
    # A normal, complete package: it loads and predicts.
    metrics = evaluate_package(package.load_package(tmp_path / "B"), load_frames(labels))
    assert metrics["n_gt"] == 40


def test_one_epoch_from_a_package_validates_far_better_than_from_scratch(package_a, tmp_path):
    """After one short epoch a continued run finds the animal where A left off; the same
    epoch from scratch finds nothing yet (measured with stride 2 and sigma 2.5: median error
    0.53 px against none, val loss 0.0034 against 0.0047; A's best 0.0032)."""
    path, a = package_a
    labels = load_labels(path)
    stages = package.load_package(a).stages
    config = TrainConfig(pipeline="single_instance", epochs=1, steps_per_epoch=4, batch_size=8,
                         learning_rate=3e-3)  # fmt: skip

    def first_validation(out: Path, **kwargs) -> dict:
        events = list(train(labels, out, config, **kwargs))
        return next(e.validation for e in events if e.validation is not None)

    scratch = first_validation(tmp_path / "scratch", stages=stages)
    continued = first_validation(tmp_path / "B", start_from=a)
    log = package.read_log(a)
    a_best = min(float(row["val_loss"]) for row in log)
    a_error = np.nanmin([float(row["dist_median_px"]) for row in log])
    assert continued["val_loss"] < 0.85 * scratch["val_loss"], (continued, scratch)
    assert continued["val_loss"] < 1.2 * a_best, (continued, a_best)
    assert continued["dist_median_px"] < 1.5 * a_error, (continued, a_error)  # where A left off
    assert not scratch["dist_median_px"] < 2 * continued["dist_median_px"]  # NaN: none found


def test_a_package_with_other_nodes_is_refused_before_anything_is_done(package_a, tmp_path):
    path, a = package_a
    labels = load_labels(path)
    other = tmp_path / "other"
    shutil.copytree(a, other)
    nodes = labels.skeletons[0].node_names
    save_skeleton(sio.Skeleton(["snout", *nodes[1:]]), other / "skeleton.json")
    run = train(labels, tmp_path / "B", TrainConfig(epochs=1), start_from=other)
    with pytest.raises(PoseFileError) as error:
        next(run)  # before the first progress: nothing decoded, nothing trained
    text = str(error.value)
    assert str(other) in text and "snout" in text and nodes[0] in text
    assert "nodes missing in the labels: snout" in text
    assert not (tmp_path / "B").exists()

    reordered = tmp_path / "reordered"
    shutil.copytree(a, reordered)
    save_skeleton(sio.Skeleton([*nodes[1:], nodes[0]]), reordered / "skeleton.json")
    with pytest.raises(PoseFileError, match="another order"):
        next(train(labels, tmp_path / "B", TrainConfig(epochs=1), start_from=reordered))

    with pytest.raises(PoseFileError, match="no model folder here"):
        next(train(labels, tmp_path / "B", TrainConfig(epochs=1), start_from=tmp_path / "nope"))
    with pytest.raises(PoseFileError, match="single_instance model"):
        next(train(labels, tmp_path / "B", TrainConfig(pipeline="topdown"), start_from=a))
    assert not (tmp_path / "B").exists()


def test_start_from_and_resume_together_and_the_same_folder_are_errors(package_a, tmp_path):
    path, a = package_a
    labels = load_labels(path)
    with pytest.raises(ValueError, match="cannot be combined"):
        next(train(labels, tmp_path / "B", TrainConfig(epochs=1), start_from=a, resume=True))
    weights = package.weights_path(a, "single_instance")
    before = hashlib.sha256(weights.read_bytes()).hexdigest()
    with pytest.raises(PoseFileError, match="another folder") as error:
        next(train(labels, a / ".", TrainConfig(epochs=1), start_from=a))
    assert str(a) in str(error.value)
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == before


@pytest.fixture(scope="module")
def topdown_a(tmp_path_factory) -> tuple[Path, Path, int, int]:
    """A two-animal project and a tiny top-down package A trained on crops 16 px smaller
    than its animals need: the labels, A, the crop size needed and A's."""
    folder = tmp_path_factory.mktemp("topdown")
    path = _project(folder, n_animals=2)
    labels = load_labels(path)
    data = load_frames(labels)
    stages = _tiny(default_stages(data, "topdown"))
    crop = stages["centered_instance"]
    needed = crop_size(data, crop.anchor, crop.augment, crop.model.backbone.max_stride)
    small = needed - 16
    stages["centered_instance"] = attrs.evolve(crop, input_size=(small, small))
    config = TrainConfig(pipeline="topdown", epochs=1, steps_per_epoch=2, batch_size=4)
    assert list(train(labels, folder / "A", config, stages=stages))[-1].stage == "done"
    return path, folder / "A", needed, small


def test_a_larger_animal_keeps_the_packages_crop_size_and_says_so(topdown_a, tmp_path):
    """Top-down: A was trained on crops smaller than the animals need; B keeps A's crop
    size (its weights fit it), says so, and trains and evaluates to a complete package."""
    path, a, needed, small = topdown_a
    labels = load_labels(path)
    config = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4)
    events = list(train(labels, tmp_path / "B", config, start_from=a))
    assert events[-1].stage == "done"
    notes = [e.message for e in events if "px crops" in e.message]
    assert notes and f"need {needed} px crops" in notes[0] and f"the {small} px crops" in notes[0]
    recorded = package.read_config(tmp_path / "B")
    assert recorded["stages"]["centered_instance"]["input_size"] == [small, small]
    assert package.load_package(tmp_path / "B").pipeline == "topdown"


def test_a_resumed_continued_run_starts_its_unbegun_stages_from_the_package(topdown_a,
                                                                            tmp_path):  # fmt: skip
    """Cancelled during the centroid stage, a continued run resumes the centroid from its
    checkpoint and starts the centred-instance stage from A's weights, not from scratch."""
    path, a, _, _ = topdown_a
    labels = load_labels(path)
    stop = threading.Event()
    # Two epochs: the centroid's cancelled first epoch counts as trained, and its second
    # validates and saves its best weights.
    config = TrainConfig(epochs=2, steps_per_epoch=2, batch_size=4, learning_rate=0.0)
    for event in train(labels, tmp_path / "B", config, start_from=a, stop=stop):
        if event.loss is not None:
            stop.set()
    assert event.stage == "cancelled"
    assert not package.checkpoint_path(tmp_path / "B", "centered_instance").exists()
    events = list(train(labels, tmp_path / "B", config, resume=True))
    assert events[-1].stage == "done"
    recorded = package.read_config(tmp_path / "B")
    assert recorded["training"]["started_from"] == str(a.resolve())
    names = {name for name, _ in build_model(
        package.load_package(a).stages["centered_instance"].model,
        pretrained=False).named_parameters()}  # fmt: skip
    start, after = (package.load_torch(package.weights_path(m, "centered_instance"))
                    for m in (a, tmp_path / "B"))  # fmt: skip
    assert all(torch.equal(start[k], after[k]) for k in names)
