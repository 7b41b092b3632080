"""Train a pipeline's models from user labels into a model package.

``train`` is a generator: it yields a ``Progress`` after every optimisation step and a richer
one (with validation metrics) after every epoch, so the dock widget (in a ``thread_worker``)
and the CLI (with a progress bar) drive the same code and stay responsive. Stop it early with
``TrainConfig``'s time limit or a ``threading.Event``; what was trained so far is kept.

A time limit is a promise about wall time: decoding frames, every step, every validation and
the final evaluation count against it. Each phase gets a deadline from the time then left and
steps stop early enough for the validation (and, in the last stage, the evaluation) that
follows, so time lost in one phase is made up in the next instead of overrunning. The stop
event is checked before every step, validation batch and decoded frame, so a cancel ends a run
within about a step; it stays resumable.

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import sleap_io as sio
import torch

from napari_pose.nn import package
from napari_pose.nn.data import (
    LabelledFrames,
    anchor_points,
    describe_window,
    load_frames,
    split_frames,
)
from napari_pose.nn.metrics import FramePoses, evaluate, instance_area, json_ready
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
#: Share of a time budget that decoding labelled frames may take: a project too large to decode
#: in it is trained on the frames decoded by then (it says so), not late.
_DECODE_SHARE = 0.25
#: Share of a stage's time one validation may take (time-limited runs): how many frames that
#: is, is fixed before the stage's first step, so every validation scores the same frames
#: (their losses compare) and its time is known and kept free at the end of the stage.
_VAL_SHARE = 0.1
#: Time of the final evaluation over that of a validation of every stage: a validation runs
#: each model twice per frame (loss, then prediction), the evaluation once.
_EVAL_PER_VAL = 0.5
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
        time_limit: Wall time in minutes for the whole run, decoding, validation and the final
            evaluation included (``None``: no limit; a resumed run gets what its earlier
            sessions left); a two-stage pipeline gives 25% of its training time to the
            centroid stage and 75% to the centred-instance stage.
        batch_size: Examples per step.
        steps_per_epoch: Steps per epoch (``None``: one pass over the training examples, at
            least 40 steps, so tiny projects still get meaningful epochs).
        learning_rate: AdamW's initial learning rate.
        weight_decay: AdamW's weight decay.
        patience: Epochs without validation improvement before stopping.
        plateau_patience: Epochs without improvement before halving the learning rate.
        val_fraction: Share of labelled frames held out for validation: one time window of
            consecutive labelled frames (``data.split_frames``), so the figures are those of
            a stretch of recording the model has not seen.
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
            end). The last one is ``done`` once the package is complete, ``cancelled`` after a
            stop (resumable), or ``incomplete`` when the time ran out before a stage started.
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


def _found_any(metrics: dict[str, Any]) -> bool:
    """Whether any prediction matched a labelled animal: without one, every error is NaN."""
    median = metrics.get("dist_median_px")
    return median is not None and math.isfinite(median)


def summarise(metrics: dict[str, Any]) -> str:
    """The pipeline's validation figures in one line, for the dock and the CLI.

    A model that placed no animal has no error to show (NaN): that is said in words with what
    to do about it, because "nan px" tells a new user nothing.
    """
    if not _found_any(metrics):
        frames = metrics.get("n_val_frames")
        where = f"the {frames} validation frames" if frames else "the validation frames"
        placed = " where they are labelled" if metrics.get("n_pred") else ""
        return f"the model found no animals{placed} on {where}: train longer or label more frames"
    where = f" on {metrics['window']}" if metrics.get("window") else ""
    return (f"OKS mAP {metrics['oks_map']:.3f}, median error {metrics['dist_median_px']:.2f} px, "
            f"p90 {metrics['dist_p90_px']:.2f} px, PCK@5px {metrics['pck_5px']:.2f}{where}")  # fmt: skip


def _error_text(metrics: dict[str, Any]) -> str:
    """An epoch's median error for its status line (early epochs often find no animal)."""
    if not _found_any(metrics):
        return "no animals found yet"
    return f"median error {metrics['dist_median_px']:.2f} px"


class _Clock:
    """A run's wall-clock budget and its stop event.

    Every phase asks it for a deadline out of the time then left (``share``), so the budget
    covers all of the run and time one phase loses comes out of the next ones.
    """

    def __init__(self, seconds: float | None, stop: threading.Event | None) -> None:
        self.start = time.monotonic()
        self.seconds = None if seconds is None else max(seconds, 0.0)
        self.deadline = None if self.seconds is None else self.start + self.seconds
        self._stop = stop

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def cancelled(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def share(self, part: float) -> float | None:
        """The deadline ``part`` of the time left from now (``None`` without a time limit)."""
        if self.deadline is None:
            return None
        now = time.monotonic()
        return now + part * max(self.deadline - now, 0.0)

    def fraction(self, kinds: Sequence[str], index: int, done: int, total: int) -> float:
        """Overall progress: by time under a time limit, else by steps (``done`` of
        ``total`` in stage ``index``), each stage weighted by its share of a time budget."""
        if self.seconds is not None:
            return min(1.0, self.elapsed() / self.seconds) if self.seconds else 1.0
        weights = [_TIME_SHARE.get(kind, 1.0) for kind in kinds]
        part = min(1.0, done / max(total, 1))
        return (sum(weights[:index]) + weights[index] * part) / sum(weights)


class _StageRun:
    """Training state of one stage: model, optimiser, schedule, early stopping."""

    def __init__(self, stage: StageConfig, config: TrainConfig, device: torch.device,
                 index: int) -> None:  # fmt: skip
        torch.manual_seed(config.seed + index)
        self.stage = stage
        self.device = device
        model = build_model(stage.model).to(device)
        # torch's stubs leave out ``Module.to``'s documented ``memory_format`` keyword.
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model = model
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
        self.done = False
        # Frames each validation scores (``None`` until the first one sets it) and the seconds
        # the last one took: what to keep free for validating at the end of the stage.
        self.val_frames: int | None = None
        self.val_seconds = 0.0

    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "best_val": self.best_val,
            "stale": self.stale,
            "done": self.done,
            "val_frames": self.val_frames,
            "val_seconds": self.val_seconds,
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.best_val = float(state["best_val"])
        self.stale = int(state["stale"])
        self.done = bool(state["done"])
        self.val_frames = state.get("val_frames")  # absent from checkpoints before issue 11
        self.val_seconds = float(state.get("val_seconds", 0.0))

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


def _bounded(batches: Iterable[slice], until: float | None,
             cancelled: Callable[[], bool]) -> Iterator[slice]:  # fmt: skip
    """``batches`` until a cancel, or until the clock passes ``until`` (after the first batch,
    so there is always something to score): validation and evaluation cannot overrun."""
    for count, batch in enumerate(batches):
        if cancelled() or (count and until is not None and time.monotonic() > until):
            return
        yield batch


def _predict_frames(data: LabelledFrames, device: torch.device, predict,
                    batches: Iterable[slice] | None = None) -> list[FramePrediction]:  # fmt: skip
    out: list[FramePrediction] = []
    for batch in _frame_batches(data) if batches is None else batches:
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


def _stage_predictions(run: _StageRun, data: LabelledFrames,
                       max_instances: int) -> list[FramePrediction]:  # fmt: skip
    """One stage alone on ``data``'s frames (all of one size). The centroid stage finds
    anchors; the centred-instance stage poses crops at the true anchors (as SLEAP validates
    it), so each stage's figure does not depend on the other."""
    stage, model = run.stage, run.model
    frames = frames_to_tensor(data.images, run.device)
    if stage.kind == "single_instance":
        return predict_single_instance(model, stage, frames)
    if stage.kind == "bottomup":
        return predict_bottomup(model, stage, frames, data.edges, max_instances)
    if stage.kind == "centroid":
        return [FramePrediction(xy.cpu().numpy()[:, None], v.cpu().numpy()[:, None],
                                v.cpu().numpy())
                for xy, v in find_centroids(model, stage, frames, max_instances)]  # fmt: skip
    anchors = [anchor_points(p, stage.anchor) for p in data.points]
    kept = [a[np.isfinite(a).all(axis=-1)] for a in anchors]
    counts = torch.tensor([len(a) for a in kept], device=run.device)
    frame_index = torch.repeat_interleave(torch.arange(len(kept), device=run.device), counts)
    xy, values = predict_centered(model, stage, frames, frame_index,
                                  torch.from_numpy(np.concatenate(kept)).to(run.device))  # fmt: skip
    return instances_by_frame(xy, values, counts.tolist(), 0.2)


@torch.inference_mode()
def validate_stage(run: _StageRun, data: LabelledFrames, max_instances: int, batch_size: int,
                   cancelled: Callable[[], bool] = lambda: False,
                   ) -> tuple[float, dict[str, Any], int]:  # fmt: skip
    """Validation loss and accuracy (frame pixels) of one stage alone on ``data``'s frames.

    Frames go in batches, each scored for loss and predicted before the next, so that a
    cancel ends the validation within a batch. The centroid stage is scored on its anchors
    (OKS with each animal's own size).

    Returns:
        The loss, the metrics, and the number of leading frames they cover (0 when cancelled
        before the first batch: then the loss is NaN and there are no metrics).
    """
    stage = run.stage
    run.model.eval()
    total, count = 0.0, 0
    predicted: list[FramePrediction] = []
    for batch in _bounded(_frame_batches(data), None, cancelled):
        part = data.subset(np.arange(batch.start, batch.stop))
        examples = stage_examples(part, stage)
        for start in range(0, len(examples), batch_size):
            chosen = examples[start : start + batch_size]
            inputs = stage_batch(part, stage, chosen)
            images = inputs.images.to(run.device).contiguous(memory_format=torch.channels_last)
            loss = stage_loss(run.model(images), _targets(stage, inputs, data.edges, run.device))
            total, count = total + float(loss) * len(chosen), count + len(chosen)
        predicted += _stage_predictions(run, part, max_instances)
    n = len(predicted)
    if n == 0:
        return math.nan, {}, 0
    truth = data.points[:n]
    if stage.kind == "centroid":
        anchors = [anchor_points(p, stage.anchor)[:, None] for p in truth]
        return total / max(count, 1), _metrics(anchors, predicted, scale_points=truth), n
    return total / max(count, 1), _metrics(truth, predicted), n


def _plan_validation(run: _StageRun, data: LabelledFrames, max_instances: int,
                     batch_size: int, seconds: float, cancelled: Callable[[], bool]) -> None:  # fmt: skip
    """Fix how many of ``data``'s frames the validations of a time-limited stage score: as
    many as one validation gets through in ``seconds`` (at least one batch), timed on one
    batch after a pass that warms the new model up (its first pass is slower)."""
    first = next(_frame_batches(data))
    part = data.subset(np.arange(first.start, first.stop))
    validate_stage(run, part, max_instances, batch_size, cancelled)
    began = time.monotonic()
    validate_stage(run, part, max_instances, batch_size, cancelled)
    per_frame = max(time.monotonic() - began, 1e-6) / len(part)
    run.val_frames = int(np.clip(seconds / per_frame, len(part), len(data)))
    run.val_seconds = per_frame * run.val_frames


def predict_pipeline(runs: dict[str, PoseModel], stages: dict[str, StageConfig],
                     data: LabelledFrames, device: torch.device, max_instances: int,
                     batches: Iterable[slice] | None = None) -> list[FramePrediction]:  # fmt: skip
    """Predict ``data``'s frames with every stage of the pipeline chained.

    ``batches``: the runs of frames to predict (default: all of ``data``, batched by size);
    the predictions follow them in order.
    """
    if "centroid" in stages:
        return _predict_frames(data, device, lambda f: predict_topdown(
            runs["centroid"], stages["centroid"], runs["centered_instance"],
            stages["centered_instance"], f, max_instances), batches)  # fmt: skip
    if "bottomup" in stages:
        return _predict_frames(data, device, lambda f: predict_bottomup(
            runs["bottomup"], stages["bottomup"], f, data.edges, max_instances), batches)  # fmt: skip
    return _predict_frames(data, device, lambda f: predict_single_instance(
        runs["single_instance"], stages["single_instance"], f), batches)  # fmt: skip


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
        stop: Set it to cancel within about a step (also while decoding or validating); what
            was trained is checkpointed, the best weights so far are kept, and the run can be
            resumed.
        labels_path: Recorded in the config, for the user's reference.

    Yields:
        ``Progress`` after every step and epoch; the last one has stage ``done``,
        ``cancelled`` or ``incomplete``.
    """
    config = config or TrainConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    spent, frames_used = 0.0, None
    if resume:
        recorded = package.read_config(out)
        config = attrs.evolve(config, pipeline=recorded["pipeline"])
        stages = {k: StageConfig.from_dict(v) for k, v in recorded["stages"].items()}
        spent = float(recorded["training"].get("elapsed_s") or 0.0)
        frames_used = recorded["training"].get("n_frames_used")
    limit = None if config.time_limit is None else config.time_limit * 60 - spent
    clock = _Clock(limit, stop)

    yield Progress("loading", message="decoding labelled frames")
    decode_until = clock.share(_DECODE_SHARE)
    labelled = 0

    def stop_decoding(decoded: int, total: int) -> bool:
        nonlocal labelled
        labelled = total
        if frames_used is not None:  # a resumed run trains on what its first session decoded
            return decoded >= frames_used or clock.cancelled()
        late = decode_until is not None and decoded and time.monotonic() > decode_until
        return bool(late) or clock.cancelled()

    data = load_frames(labels, config.frames, stop=stop_decoding)
    if clock.cancelled():
        yield Progress("cancelled", elapsed=clock.elapsed(),
                       message="cancelled while decoding labelled frames; nothing new was "
                               "trained")  # fmt: skip
        return
    if len(data) < labelled:
        yield Progress("loading", elapsed=clock.elapsed(),
                       message=f"the time limit left time to decode {len(data)} of {labelled} "
                               "labelled frames; training on those")  # fmt: skip
    pipeline = config.pipeline or default_pipeline(data)
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose from {sorted(PIPELINES)}")
    stages = stages or default_stages(data, pipeline, config.preset)
    train_pos, val_pos = split_frames(data.keys, config.val_fraction, config.seed)
    # Validation frames in a seeded random order: a validation cut short by the time limit
    # scores a leading part of them, which is then a fair sample.
    val_pos = np.random.default_rng([config.seed, 1]).permutation(val_pos)
    train_data, val_data = data.subset(train_pos), data.subset(val_pos)
    window = describe_window(val_data.keys, data.videos)
    yield Progress("loading", elapsed=clock.elapsed(),
                   message=f"validating on {len(val_data)} labelled frames kept out of training "
                           f"({window}), {len(train_data)} frames to train on")  # fmt: skip
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
            "n_labelled_frames": labelled,
            "n_frames_used": len(data),
            "n_train_frames": len(train_data),
            "n_val_frames": len(val_data),
            "val_frames": val_data.keys.tolist(),
            "val_window": window,
            "elapsed_s": round(spent, 1),
        },
    }
    package.write_skeleton(out, data.skeleton)
    package.write_config(out, record)
    log: list[dict[str, Any]] = package.read_log(out) if resume else []

    def checkpoint(run: _StageRun, kind: str) -> None:
        """Save ``run`` to resume from, and the time spent so far (a resumed run's limit)."""
        package.save_torch(run.state(), package.checkpoint_path(out, kind))
        record["training"]["elapsed_s"] = round(spent + clock.elapsed(), 1)
        package.write_config(out, record)

    def cancelled_progress() -> Progress:
        return Progress("cancelled", elapsed=clock.elapsed(),
                        message=f"cancelled after {clock.elapsed():.0f} s; what was trained "
                                "is kept and training can be resumed")  # fmt: skip

    runs: dict[str, _StageRun] = {}
    kinds = PIPELINES[pipeline]
    edges = data.edges
    for index, kind in enumerate(kinds):
        stage = stages[kind]
        run = _StageRun(stage, config, device, index)
        ckpt = package.checkpoint_path(out, kind)
        if resume and ckpt.exists():
            run.restore(package.load_torch(ckpt, device))
        runs[kind] = run
        if run.done:
            run.model.load_state_dict(package.load_torch(package.weights_path(out, kind), device))
            continue
        shares = [_TIME_SHARE.get(k, 1.0) for k in kinds[index:]]
        until = clock.share(shares[0] / sum(shares))
        if until is not None and until <= time.monotonic():
            break  # no time left to start this stage: the package says it is incomplete
        if until is not None and run.val_frames is None:
            _plan_validation(run, val_data, data.max_instances, config.batch_size,
                             _VAL_SHARE * (until - time.monotonic()), clock.cancelled)  # fmt: skip
        examples = stage_examples(train_data, stage)
        steps = config.steps_per_epoch or max(
            _MIN_STEPS, math.ceil(len(examples) / config.batch_size)
        )
        step_time = None
        while run.epoch < config.epochs and not run.done:
            epoch = run.epoch + 1
            order_rng = np.random.default_rng([config.seed, index, epoch])
            generator = torch.Generator().manual_seed(
                config.seed * 1_000_003 + index * 10_007 + epoch
            )
            picks = order_rng.permutation(np.resize(order_rng.permutation(len(examples)),
                                                    steps * config.batch_size))  # fmt: skip
            # Time kept free after the steps: this stage's validation, and in the last stage
            # also the pipeline's evaluation.
            reserve = run.val_seconds
            if index == len(kinds) - 1:
                reserve += _EVAL_PER_VAL * sum(r.val_seconds for r in runs.values())
            trained, out_of_time = 0, False
            for step in range(1, steps + 1):
                if clock.cancelled():
                    break
                began = time.monotonic()
                if until is not None and step_time is not None:  # will the next step fit?
                    out_of_time = began + step_time + reserve > until
                if out_of_time:
                    break
                chosen = examples[picks[(step - 1) * config.batch_size : step * config.batch_size]]
                batch = stage_batch(train_data, stage, chosen, augment=True, generator=generator)
                loss = run.step(batch.images, _targets(stage, batch, edges, device))
                step_time, trained = time.monotonic() - began, step
                fraction = clock.fraction(kinds, index, (epoch - 1) * steps + step,
                                          config.epochs * steps)  # fmt: skip
                yield Progress(kind, epoch, step, steps, loss, fraction, clock.elapsed(),
                               message=f"{kind}: epoch {epoch} step {step}/{steps} loss {loss:.2e}")  # fmt: skip
            if trained == 0 and not clock.cancelled():  # out of time before this epoch began
                run.done = True
                checkpoint(run, kind)
                break
            if trained:  # a cancelled epoch's steps are kept: a resumed run goes on after them
                run.epoch = epoch
            if clock.cancelled():
                checkpoint(run, kind)
                break
            began = time.monotonic()
            scored = (val_data if run.val_frames is None
                      else val_data.subset(np.arange(run.val_frames)))  # fmt: skip
            val_loss, metrics, n = validate_stage(run, scored, data.max_instances,
                                                  config.batch_size, clock.cancelled)  # fmt: skip
            if clock.cancelled():
                checkpoint(run, kind)
                break
            run.val_frames, run.val_seconds = n, time.monotonic() - began
            run.scheduler.step(val_loss)
            improved = val_loss < run.best_val
            if improved:
                run.best_val, run.stale = val_loss, 0
                package.save_torch(run.model.state_dict(), package.weights_path(out, kind))
            else:
                run.stale += 1
            log.append({
                "stage": kind,
                "epoch": epoch,
                "elapsed_s": round(spent + clock.elapsed(), 2),
                "train_loss": loss,
                "val_loss": val_loss,
                "learning_rate": run.optimizer.param_groups[0]["lr"],
                "val_frames": n,
                **{k: v for k, v in metrics.items() if not isinstance(v, list)},
            })  # fmt: skip
            package.write_log(out, log)
            run.done = out_of_time or run.stale >= config.patience or epoch >= config.epochs
            checkpoint(run, kind)
            fraction = clock.fraction(kinds, index, epoch * steps, config.epochs * steps)
            yield Progress(kind, epoch, steps, steps, loss, fraction, clock.elapsed(),
                           validation={"val_loss": val_loss, **metrics, "window": window},
                           message=f"{kind}: epoch {epoch} val loss {val_loss:.2e}, "
                                   f"{_error_text(metrics)}")  # fmt: skip
        if clock.cancelled():
            yield cancelled_progress()
            return
        if package.weights_path(out, kind).exists():
            run.model.load_state_dict(package.load_torch(package.weights_path(out, kind), device))
        run.model.eval()

    missing = [kind for kind in kinds if not package.weights_path(out, kind).exists()]
    if missing:
        yield Progress("incomplete", elapsed=clock.elapsed(),
                       message=f"out of time before the {missing[0]} stage was trained: give "
                               "training more time, or resume it with a time limit")  # fmt: skip
        return
    yield Progress("evaluating", fraction=clock.fraction(kinds, len(kinds) - 1, 1, 1),
                   elapsed=clock.elapsed(),
                   message="evaluating the pipeline on validation frames")  # fmt: skip
    models = {kind: run.model for kind, run in runs.items()}
    batches = _bounded(_frame_batches(val_data), clock.deadline, clock.cancelled)
    predictions = predict_pipeline(models, stages, val_data, device, data.max_instances, batches)
    if clock.cancelled():
        yield cancelled_progress()
        return
    metrics = _metrics(val_data.points[: len(predictions)], predictions)
    metrics["n_val_frames"] = len(predictions)
    metrics["window"] = window
    package.write_metrics(out, json_ready(metrics))
    record["complete"] = True
    record["training"]["elapsed_s"] = round(spent + clock.elapsed(), 1)
    package.write_config(out, record)
    yield Progress("done", fraction=1.0, elapsed=clock.elapsed(), validation=metrics,
                   message=f"done: {summarise(metrics)}")  # fmt: skip


def evaluate_package(model: package.ModelPackage, data: LabelledFrames,
                     device: torch.device | str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Predict ``data``'s frames with a loaded model package and score them against its labels."""
    predictions = predict_pipeline(model.models, model.stages, data, torch.device(device),
                                   model.max_instances)  # fmt: skip
    return _metrics(data.points, predictions)
