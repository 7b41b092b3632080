"""Train a pipeline's models from user labels into a model package.

``train`` is a generator: it yields a ``Progress`` after every optimisation step and a richer
one (with validation metrics) after every epoch, so the dock widget (in a ``thread_worker``)
and the CLI (with a progress bar) drive the same code and stay responsive. Stop it early with
``TrainConfig``'s time limit or a ``threading.Event``; what was trained so far is kept.

Per stage: frames are split into train and validation sets (seeded, by frame, so both crops of
one frame land on the same side), AdamW with reduce-on-plateau on the validation loss, early
stopping, the best epoch's weights kept, and a checkpoint after each epoch so ``resume=True``
continues an interrupted run where it stopped. Examples are drawn in a seeded order that
depends only on (seed, stage, epoch), so a resumed run sees what an uninterrupted one would.
On CPU the model runs ``channels_last`` (measured faster for these convnets); on CUDA also
with automatic mixed precision.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import sleap_io as sio
import torch

from napari_pose.nn import package
from napari_pose.nn.data import LabelledFrames, anchor_points, load_frames, split_frames
from napari_pose.nn.metrics import FramePoses, evaluate, instance_area
from napari_pose.nn.models import PoseModel, build_model
from napari_pose.nn.pipelines import (
    PIPELINES,
    StageConfig,
    default_pipeline,
    default_stages,
    stage_batch,
    stage_examples,
    stage_loss,
    stage_targets,
)
from napari_pose.nn.predict import (
    FramePrediction,
    find_centroids,
    frames_to_tensor,
    instances_by_frame,
    predict_bottomup,
    predict_centered,
    predict_single_instance,
    predict_topdown,
)

#: Share of a time budget given to each stage of a two-stage pipeline.
_TIME_SHARE = {"centroid": 0.25, "centered_instance": 0.75}
#: Fewest steps in an epoch: validation runs after each, and on a small project one pass over
#: the examples is so short that validating would take a fifth of the time.
_MIN_STEPS = 40
#: Frames per forward pass when validating whole frames.
_VAL_BATCH = 4


@attrs.frozen
class TrainConfig:
    """Training settings (the model and inputs are in each ``StageConfig``).

    Attributes:
        pipeline: ``single_instance``, ``topdown``, ``bottomup``, or ``None`` to choose from the
            labels (one animal per frame: single instance; more: top-down).
        preset: Size of the pose model (``small``, ``medium``, ``large``).
        epochs: Most epochs per stage.
        time_limit: Budget in minutes for the whole pipeline (``None``: no limit); a two-stage
            pipeline gives 25% to the centroid stage and 75% to the centred-instance stage.
        batch_size: Examples per step.
        steps_per_epoch: Steps per epoch (``None``: one pass over the training examples, at
            least 40 steps, so tiny projects still get meaningful epochs).
        learning_rate: AdamW's initial learning rate.
        weight_decay: AdamW's weight decay.
        patience: Epochs without validation improvement before stopping.
        plateau_patience: Epochs without improvement before halving the learning rate.
        val_fraction: Share of labelled frames held out for validation.
        seed: Seed of the split, initialisation and augmentation.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1`` or ``mps``.
        frames: Only frames with indices in this range are used (``None``: all).
    """

    pipeline: str | None = None
    preset: str = "small"
    epochs: int = 200
    time_limit: float | None = None
    batch_size: int = 8
    steps_per_epoch: int | None = None
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 15
    plateau_patience: int = 5
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    frames: range | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for YAML (``frames`` as ``"start-stop"`` inclusive)."""
        data = attrs.asdict(self)
        if self.frames is not None:
            data["frames"] = format_frames(self.frames)
        return data


def parse_frames(text: str) -> range:
    """``"0-1199"`` (inclusive) or ``"0-1199:10"`` (every 10th) -> ``range``."""
    span, _, step = text.partition(":")
    try:
        start, _, stop = span.partition("-")
        frames = range(int(start), int(stop or start) + 1, int(step or 1))
    except ValueError:
        raise ValueError(f"frames must look like 0-1199 or 0-1199:10, got {text!r}") from None
    if len(frames) == 0:
        raise ValueError(f"frame range {text!r} is empty")
    return frames


def format_frames(frames: range) -> str:
    """Inverse of ``parse_frames``."""
    text = f"{frames.start}-{frames.stop - 1}"
    return text if frames.step == 1 else f"{text}:{frames.step}"


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an unavailable device raises."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but PyTorch sees no CUDA GPU")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' requested but this PyTorch has no MPS support")
    return device


@attrs.frozen
class Progress:
    """Where training is.

    Attributes:
        stage: Stage being trained (``loading`` while frames are decoded, ``evaluating`` at the
            end, ``done`` once the package is complete).
        epoch: Epoch of the stage (from 1).
        step: Step within the epoch (from 1).
        steps_per_epoch: Steps in an epoch.
        loss: Training loss of this step (``None`` outside training steps).
        fraction: Overall progress in ``[0, 1]`` (by time when there is a time limit).
        elapsed: Seconds since training started.
        validation: After an epoch: ``val_loss`` and metrics (``dist_median_px``,
            ``oks_map``...); at the end: the whole pipeline's metrics.
        message: A line for a status bar.
    """

    stage: str
    epoch: int = 0
    step: int = 0
    steps_per_epoch: int = 0
    loss: float | None = None
    fraction: float = 0.0
    elapsed: float = 0.0
    validation: dict[str, Any] | None = None
    message: str = ""


def _frame_poses(points: np.ndarray, scale_points: np.ndarray) -> FramePoses:
    """Ground truth of one frame, each instance's OKS scaled by the bounding box of its
    ``scale_points`` (its whole skeleton, also when ``points`` holds only its anchor)."""
    visible = np.isfinite(points).all(axis=-1)
    area = instance_area(scale_points, np.isfinite(scale_points).all(axis=-1))
    return FramePoses(points.astype(np.float64), visible, np.ones(len(points)), area)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("oks_map", "oks_mar", "dist_median_px", "dist_p90_px", "dist_p95_px", "dist_mean_px",
            "pck_2px", "pck_5px", "pck_10px", "per_node_dist_median", "n_gt", "n_pred")  # fmt: skip
    return {key: metrics[key] for key in keys if key in metrics}


class _StageRun:
    """Training state of one stage: model, optimiser, schedule, early stopping."""

    def __init__(self, stage: StageConfig, config: TrainConfig, device: torch.device,
                 index: int) -> None:  # fmt: skip
        torch.manual_seed(config.seed + index)
        self.stage = stage
        self.device = device
        self.model = build_model(stage.model).to(device).to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=0.5, patience=config.plateau_patience, min_lr=1e-6
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.epoch = 0
        self.best_val = math.inf
        self.stale = 0
        self.elapsed = 0.0
        self.done = False

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "stale": self.stale,
            "elapsed": self.elapsed,
            "done": self.done,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.stale = int(state["stale"])
        self.elapsed = float(state["elapsed"])
        self.done = bool(state["done"])

    def step(self, batch_images: torch.Tensor, targets: dict[str, torch.Tensor]) -> float:
        self.model.train()
        images = batch_images.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", enabled=self.device.type == "cuda"):
            loss = stage_loss(self.model(images), targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())


def _targets(stage: StageConfig, batch, edges: np.ndarray, device: torch.device):
    return {k: v.to(device) for k, v in stage_targets(stage, batch, edges).items()}


@torch.inference_mode()
def _val_loss(run: _StageRun, data: LabelledFrames, examples: np.ndarray,
              batch_size: int) -> float:  # fmt: skip
    run.model.eval()
    total, count = 0.0, 0
    for start in range(0, len(examples), batch_size):
        part = examples[start : start + batch_size]
        batch = stage_batch(data, run.stage, part)
        images = batch.images.to(run.device).contiguous(memory_format=torch.channels_last)
        outputs = run.model(images)
        total += float(stage_loss(outputs, _targets(run.stage, batch, data.edges, run.device)))
        count += 1
    return total / max(count, 1)


def _frame_batches(data: LabelledFrames) -> Iterator[slice]:
    """Runs of up to ``_VAL_BATCH`` consecutive frames of one size: a batch is one tensor, and
    frames of different videos may differ in size."""
    start = 0
    while start < len(data):
        stop, shape = start + 1, data.images[start].shape
        while stop < min(start + _VAL_BATCH, len(data)) and data.images[stop].shape == shape:
            stop += 1
        yield slice(start, stop)
        start = stop


def _predict_frames(data: LabelledFrames, device: torch.device, predict) -> list[FramePrediction]:
    out: list[FramePrediction] = []
    for batch in _frame_batches(data):
        out += predict(frames_to_tensor(data.images[batch], device))
    return out


def _metrics(truth: list[np.ndarray], predicted: list[FramePrediction],
             scale_points: list[np.ndarray] | None = None) -> dict[str, Any]:  # fmt: skip
    """Evaluation of per-frame predictions against per-frame ``(n, k, 2)`` truth."""
    scale_points = truth if scale_points is None else scale_points
    gt = {i: _frame_poses(points, scale) for i, (points, scale)
          in enumerate(zip(truth, scale_points, strict=True))}  # fmt: skip
    pred = {i: FramePoses.from_points(p.points, p.scores) for i, p in enumerate(predicted)}
    return _summary(evaluate(gt, pred))


def validate_stage(run: _StageRun, data: LabelledFrames, max_instances: int) -> dict[str, Any]:
    """Accuracy of one stage alone on validation frames, in frame pixels.

    The centroid stage is scored on its anchors (OKS with each animal's own size); the
    centred-instance stage on crops at the true anchors (as SLEAP validates it), so each
    stage's figure does not depend on the other.
    """
    stage, model = run.stage, run.model.eval()
    if stage.kind == "single_instance":
        pred = _predict_frames(data, run.device, lambda f: predict_single_instance(model, stage, f))
        return _metrics(data.points, pred)
    if stage.kind == "bottomup":
        pred = _predict_frames(data, run.device, lambda f: predict_bottomup(
            model, stage, f, data.edges, max_instances))  # fmt: skip
        return _metrics(data.points, pred)
    anchors = [anchor_points(p, stage.anchor) for p in data.points]
    if stage.kind == "centroid":

        def centroids(frames: torch.Tensor) -> list[FramePrediction]:
            found = find_centroids(model, stage, frames, max_instances)
            return [FramePrediction(xy.cpu().numpy()[:, None], v.cpu().numpy()[:, None],
                                    v.cpu().numpy()) for xy, v in found]  # fmt: skip

        pred = _predict_frames(data, run.device, centroids)
        return _metrics([a[:, None] for a in anchors], pred, scale_points=data.points)
    # Centred instance: one crop per true anchor, frames in batches.
    preds: list[FramePrediction] = []
    for batch in _frame_batches(data):
        frames = frames_to_tensor(data.images[batch], run.device)
        kept = [a[np.isfinite(a).all(axis=-1)] for a in anchors[batch]]
        counts = torch.tensor([len(a) for a in kept], device=run.device)
        frame_index = torch.repeat_interleave(torch.arange(len(kept), device=run.device), counts)
        xy, values = predict_centered(model, stage, frames, frame_index,
                                      torch.from_numpy(np.concatenate(kept)).to(run.device))  # fmt: skip
        preds += instances_by_frame(xy, values, counts.tolist(), 0.2)
    return _metrics(data.points, preds)


def predict_pipeline(runs: dict[str, PoseModel], stages: dict[str, StageConfig],
                     data: LabelledFrames, device: torch.device,
                     max_instances: int) -> list[FramePrediction]:  # fmt: skip
    """Predict ``data``'s frames with every stage of the pipeline chained."""
    if "centroid" in stages:
        return _predict_frames(data, device, lambda f: predict_topdown(
            runs["centroid"], stages["centroid"], runs["centered_instance"],
            stages["centered_instance"], f, max_instances))  # fmt: skip
    if "bottomup" in stages:
        return _predict_frames(data, device, lambda f: predict_bottomup(
            runs["bottomup"], stages["bottomup"], f, data.edges, max_instances))  # fmt: skip
    return _predict_frames(data, device, lambda f: predict_single_instance(
        runs["single_instance"], stages["single_instance"], f))  # fmt: skip


def train(
    labels: sio.Labels,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    stages: dict[str, StageConfig] | None = None,
    resume: bool = False,
    stop: threading.Event | None = None,
    labels_path: str | Path | None = None,
) -> Iterator[Progress]:
    """Train every stage of a pipeline on ``labels``' user instances into ``out_dir``.

    Args:
        labels: The project (any number of videos); only user instances are trained on.
        out_dir: The model package folder (created; an existing package is overwritten unless
            ``resume``).
        config: Training settings.
        stages: Stage configs to use instead of ``default_stages`` (e.g. from a YAML file).
        resume: Continue the run recorded in ``out_dir`` (same labels and settings).
        stop: Set it to stop after the current step; the best weights so far are kept.
        labels_path: Recorded in the config, for the user's reference.

    Yields:
        ``Progress`` after every step and epoch; the last one has stage ``done``.
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    start_time = time.monotonic()
    if resume:
        recorded = package.read_config(out)
        config = attrs.evolve(config, pipeline=recorded["pipeline"])
        stages = {k: StageConfig.from_dict(v) for k, v in recorded["stages"].items()}

    def elapsed() -> float:
        return time.monotonic() - start_time

    yield Progress("loading", message="decoding labelled frames", elapsed=elapsed())
    data = load_frames(labels, config.frames)
    pipeline = config.pipeline or default_pipeline(data)
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {sorted(PIPELINES)}")
    stages = stages or default_stages(data, pipeline, config.preset)
    train_pos, val_pos = split_frames(len(data), config.val_fraction, config.seed)
    train_data, val_data = data.subset(train_pos), data.subset(val_pos)
    record = {
        "format": package.PACKAGE_FORMAT,
        "pipeline": pipeline,
        "complete": False,
        "nodes": data.skeleton.node_names,
        "max_instances": data.max_instances,
        "flip_pairs": [
            [data.skeleton.node_names[a], data.skeleton.node_names[b]]
            for a, b in data.symmetric_pairs
        ],
        "stages": {kind: stage.to_dict() for kind, stage in stages.items()},
        "training": {
            **config.to_dict(),
            "pipeline": pipeline,
            "device_used": str(device),
            "labels": None if labels_path is None else str(labels_path),
            "n_train_frames": len(train_data),
            "n_val_frames": len(val_data),
            "val_frames": val_data.keys.tolist(),
        },
    }
    package.write_skeleton(out, data.skeleton)
    package.write_config(out, record)
    log = package.read_log(out) if resume else []

    models: dict[str, PoseModel] = {}
    kinds = PIPELINES[pipeline]
    edges = data.edges
    for index, kind in enumerate(kinds):
        stage = stages[kind]
        run = _StageRun(stage, config, device, index)
        ckpt = package.checkpoint_path(out, kind)
        if resume and ckpt.exists():
            run.restore(package.load_torch(ckpt, device))
        models[kind] = run.model
        if run.done:
            run.model.load_state_dict(package.load_torch(package.weights_path(out, kind), device))
            continue
        # This stage's share of the time (or of the progress bar), and the share done before it.
        share = _TIME_SHARE.get(kind, 1.0) if len(kinds) > 1 else 1.0
        before = sum(_TIME_SHARE.get(k, 1.0) for k in kinds[:index]) if len(kinds) > 1 else 0
        budget = None if config.time_limit is None else config.time_limit * 60 * share
        examples = stage_examples(train_data, stage)
        val_examples = stage_examples(val_data, stage)
        steps = config.steps_per_epoch or max(
            _MIN_STEPS, math.ceil(len(examples) / config.batch_size)
        )
        stage_start = time.monotonic() - run.elapsed

        def fraction(epoch: int, step: int) -> float:
            if budget is not None:
                part = (time.monotonic() - stage_start) / budget
            else:
                part = ((epoch - 1) * steps + step) / (config.epochs * steps)
            return min(1.0, before + share * min(1.0, part))

        while run.epoch < config.epochs and not run.done:
            epoch = run.epoch + 1
            order_rng = np.random.default_rng([config.seed, index, epoch])
            generator = torch.Generator().manual_seed(
                config.seed * 1_000_003 + index * 10_007 + epoch
            )
            picks = order_rng.permutation(np.resize(order_rng.permutation(len(examples)),
                                                    steps * config.batch_size))  # fmt: skip
            stopped = False
            for step in range(1, steps + 1):
                chosen = examples[picks[(step - 1) * config.batch_size : step * config.batch_size]]
                batch = stage_batch(train_data, stage, chosen, augment=True, generator=generator)
                loss = run.step(batch.images, _targets(stage, batch, edges, device))
                yield Progress(kind, epoch, step, steps, loss, fraction(epoch, step), elapsed(),
                               message=f"{kind}: epoch {epoch} step {step}/{steps} loss {loss:.2e}")  # fmt: skip
                if (stop is not None and stop.is_set()) or (
                    budget is not None and time.monotonic() - stage_start > budget
                ):
                    stopped = True
                    break
            run.epoch = epoch
            run.elapsed = time.monotonic() - stage_start
            val_loss = _val_loss(run, val_data, val_examples, config.batch_size)
            run.scheduler.step(val_loss)
            improved = val_loss < run.best_val
            if improved:
                run.best_val, run.stale = val_loss, 0
                package.save_torch(run.model.state_dict(), package.weights_path(out, kind))
            else:
                run.stale += 1
            metrics = validate_stage(run, val_data, data.max_instances)
            row = {
                "stage": kind,
                "epoch": epoch,
                "elapsed_s": round(elapsed(), 2),
                "train_loss": loss,
                "val_loss": val_loss,
                "learning_rate": run.optimizer.param_groups[0]["lr"],
                **{k: v for k, v in metrics.items() if not isinstance(v, list)},
            }
            log.append(row)
            package.write_log(out, log)
            cancelled = stop is not None and stop.is_set()
            # A cancelled stage stays resumable; one out of time or patience is finished.
            run.done = (
                (stopped and not cancelled)
                or run.stale >= config.patience
                or (epoch >= config.epochs)
            )
            package.save_torch(run.state(), ckpt)
            yield Progress(kind, epoch, steps, steps, loss, fraction(epoch, steps), elapsed(),
                           validation={"val_loss": val_loss, **metrics},
                           message=f"{kind}: epoch {epoch} val loss {val_loss:.2e}, median error "
                                   f"{metrics.get('dist_median_px', float('nan')):.2f} px")  # fmt: skip
            if cancelled:
                break
        run.model.load_state_dict(package.load_torch(package.weights_path(out, kind), device))
        run.model.eval()
        if stop is not None and stop.is_set():
            break

    trained = all(package.weights_path(out, kind).exists() for kind in kinds)
    if trained:
        yield Progress("evaluating", fraction=1.0, elapsed=elapsed(),
                       message="evaluating the pipeline on validation frames")  # fmt: skip
        predictions = predict_pipeline(models, stages, val_data, device, data.max_instances)
        metrics = _metrics(val_data.points, predictions)
        metrics["n_val_frames"] = len(val_data)
        package.write_metrics(out, metrics)
        record["complete"] = True
        record["training"]["elapsed_s"] = round(elapsed(), 1)
        package.write_config(out, record)
        yield Progress("done", fraction=1.0, elapsed=elapsed(), validation=metrics,
                       message=f"done: OKS mAP {metrics['oks_map']:.3f}, median error "
                               f"{metrics['dist_median_px']:.2f} px")  # fmt: skip
    else:
        yield Progress("done", elapsed=elapsed(),
                       message="stopped before every stage was trained; resume to finish")  # fmt: skip


def evaluate_package(model: package.ModelPackage, data: LabelledFrames,
                     device: torch.device | str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Predict ``data``'s frames with a loaded model package and score them against its labels."""
    predictions = predict_pipeline(model.models, model.stages, data, torch.device(device),
                                   model.max_instances)  # fmt: skip
    return _metrics(data.points, predictions)
