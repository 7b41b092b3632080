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

import contextlib
import copy
import math
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import sleap_io as sio
import torch

from napari_pose.core.errors import PoseFileError
from napari_pose.core.skeleton import load_skeleton
from napari_pose.nn import package, pseudo
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
    crop_size,
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
#: Share of round two's time (``TrainConfig.pseudo_labels``) that choosing, decoding and
#: predicting unlabelled frames may take; round two trains on what was found in the rest, and
#: pseudo-labels only help once trained on. On 2 busy CPU cores clip.mp4 is pseudo-labelled at
#: about 1 frame/s (top-down, both ways up), so 30% of a 4.5-minute round two poses about 80.
_PSEUDO_TIME_SHARE = 0.3
#: Most pseudo-labelled frames per training frame: decoded frames stay in memory (clip.mp4: 1 MB
#: each), and the user's labels stay at least a fifth of what round two trains on.
_PSEUDO_PER_FRAME = 4
#: Frames of the first pass over the unlabelled frames under a time limit: it times decoding and
#: predicting, and each later pass takes as many frames as fit the time left at that rate.
_PSEUDO_FIRST_PASS = 2 * _VAL_BATCH


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
            sessions left); a two-stage pipeline splits its training time between its
            stages by ``centroid_time``.
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
        centroid_time: Share of a top-down pipeline's training time (and of its epochs'
            weight in the progress bar) given to the centroid stage; the rest goes to the
            centred-instance stage. Finding animals on a downscaled frame is the easier task:
            on clip.slp the centroid model finds every fly at 25%.
        seed: Seed of the split, initialisation and augmentation.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:1`` or ``mps``.
        frames: Only frames with indices in this range are used (``None``: all).
        pseudo_labels: Share of the time limit kept for a second round that trains on labels
            and pseudo-labels (``0``: off; see ``pseudo`` for the rules and docs/training.md).
            Round one trains every stage as usual in the rest of the time; then unlabelled
            frames of the labelled videos (none near the validation window) are posed by the
            pipeline, as they are and turned by 180 degrees, and what both agree on is kept;
            round two goes on from round one's best weights on labels and pseudo-labels, and
            its weights replace round one's only where they validate better, on the same
            validation frames. Without a time limit round one gets ``epochs`` and round two
            ``epochs * pseudo_labels / (1 - pseudo_labels)`` (at least one).
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
    centroid_time: float = attrs.field(default=0.25, validator=[attrs.validators.gt(0.0),
                                                                attrs.validators.lt(1.0)])  # fmt: skip
    seed: int = 0
    device: str = "auto"
    frames: range | None = None
    pseudo_labels: float = attrs.field(default=0.0)

    @pseudo_labels.validator
    def _check_pseudo_labels(self, attribute: attrs.Attribute, value: float) -> None:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"pseudo_labels is a share of the time in [0, 1), got {value}")

    @property
    def time_shares(self) -> dict[str, float]:
        """Share of the training time of each stage kind of a two-stage pipeline (a stage
        kind not listed has the run to itself)."""
        return {"centroid": self.centroid_time, "centered_instance": 1.0 - self.centroid_time}

    @property
    def round_two_epochs(self) -> int:
        """Most epochs of round two (``pseudo_labels``'s share of all epochs, at least one)."""
        share = self.pseudo_labels
        return max(1, round(self.epochs * share / (1.0 - share)))

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

    def __init__(self, seconds: float | None, stop: threading.Event | None,
                 shares: Mapping[str, float]) -> None:  # fmt: skip
        self.start = time.monotonic()
        self.shares = shares  # each stage kind's share of the time (TrainConfig.time_shares)
        self.seconds = None if seconds is None else max(seconds, 0.0)
        self.deadline = None if self.seconds is None else self.start + self.seconds
        self._stop = stop

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def cancelled(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def until(self, deadline: float | None) -> _Clock:
        """This clock ending at ``deadline`` (a round of the run) where that is sooner; its
        start, budget and stop event stay the run's, so progress and cancel are the run's."""
        clock = copy.copy(self)
        if deadline is not None and self.deadline is not None:
            clock.deadline = min(deadline, self.deadline)
        return clock

    def share(self, part: float) -> float | None:
        """The deadline ``part`` of the time left from now (``None`` without a time limit)."""
        if self.deadline is None:
            return None
        now = time.monotonic()
        return now + part * max(self.deadline - now, 0.0)

    def fraction(self, kinds: Sequence[str], index: int, done: int, total: int,
                 span: tuple[float, float] = (0.0, 1.0)) -> float:  # fmt: skip
        """Overall progress: by time under a time limit, else by steps (``done`` of
        ``total`` in stage ``index``), each stage weighted by its share of a time budget,
        within ``span`` (the part of the run a round of it is)."""
        if self.seconds is not None:
            return min(1.0, self.elapsed() / self.seconds) if self.seconds else 1.0
        weights = [self.shares.get(kind, 1.0) for kind in kinds]
        part = min(1.0, done / max(total, 1))
        low, high = span
        return low + (high - low) * (sum(weights[:index]) + weights[index] * part) / sum(weights)


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
        # Round of the run (2: trained on pseudo-labels too) and the epochs it may train:
        # after ``first_epoch``, up to ``last_epoch``.
        self.round = 1
        self.first_epoch, self.last_epoch = 0, config.epochs
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
            "round": self.round,
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
        self.round = int(state.get("round", 1))
        self.best_val = float(state["best_val"])
        self.stale = int(state["stale"])
        self.done = bool(state["done"])
        self.val_frames = state.get("val_frames")  # absent from checkpoints before issue 11
        self.val_seconds = float(state.get("val_seconds", 0.0))

    def begin_round_two(self, epochs: int) -> None:
        """Go on for up to ``epochs`` more epochs from the loaded best weights, on labels and
        pseudo-labels: the optimiser (its moments, the learning rate its schedule reached) goes
        on too, since the data are more of the same and restarting at the first learning rate
        would spend round two's short time climbing back to round one's minimum. Early
        stopping starts afresh, and ``best_val`` stays round one's: round two's weights are
        only saved where they validate better."""
        self.round, self.done, self.stale = 2, False, 0
        self.first_epoch, self.last_epoch = self.epoch, self.epoch + epochs

    def step(self, batch_images: torch.Tensor, targets: dict[str, torch.Tensor],
             known: torch.Tensor | None = None) -> float:  # fmt: skip
        self.model.train()
        images = batch_images.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", enabled=self.device.type == "cuda"):
            loss = stage_loss(self.model(images), targets, known, self.stage.hard_keypoints)
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


@attrs.define(eq=False)
class _Session:
    """What the phases of one run share: its settings, what it validates on, where it writes
    (package folder, ``config.yaml`` record, training log) and its clock."""

    out: Path
    config: TrainConfig
    device: torch.device
    resume: bool
    stages: dict[str, StageConfig]
    kinds: tuple[str, ...]
    data: LabelledFrames
    val_data: LabelledFrames
    window: str
    record: dict[str, Any]
    log: list[dict[str, Any]]
    spent: float
    clock: _Clock
    #: Weights a new stage starts from, by stage kind (``train``'s ``start_from``): a stage
    #: not listed starts from a random initialisation.
    start_weights: dict[str, dict[str, torch.Tensor]] = attrs.field(factory=dict)

    def open_run(self, kind: str, index: int) -> _StageRun:
        """Stage ``kind``'s training state: new (from ``start_weights`` where it has them),
        or its checkpoint when resuming. A stage checkpointed in round two has finished round
        one (which a resumed run then skips)."""
        run = _StageRun(self.stages[kind], self.config, self.device, index)
        ckpt = package.checkpoint_path(self.out, kind)
        if self.resume and ckpt.exists():
            run.restore(package.load_torch(ckpt, self.device))
            run.done = run.done or run.round == 2
        elif kind in self.start_weights:
            run.model.load_state_dict(self.start_weights[kind])
        return run

    def checkpoint(self, run: _StageRun, kind: str) -> None:
        """Save ``run`` to resume from, and the time spent so far (a resumed run's limit)."""
        package.save_torch(run.state(), package.checkpoint_path(self.out, kind))
        self.write_record()

    def write_record(self) -> None:
        self.record["training"]["elapsed_s"] = round(self.spent + self.clock.elapsed(), 1)
        package.write_config(self.out, self.record)

    def load_best(self, run: _StageRun, kind: str) -> None:
        path = package.weights_path(self.out, kind)
        if path.exists():
            run.model.load_state_dict(package.load_torch(path, self.device))
        run.model.eval()

    def cancelled(self) -> Progress:
        elapsed = self.clock.elapsed()
        return Progress("cancelled", elapsed=elapsed,
                        message=f"cancelled after {elapsed:.0f} s; what was trained is kept "
                                "and training can be resumed")  # fmt: skip


def _train_round(session: _Session, runs: dict[str, _StageRun],
                 train_sets: Mapping[str, LabelledFrames], clock: _Clock, *, number: int,
                 evaluate_after: bool, span: tuple[float, float],
                 ) -> Generator[Progress, None, bool]:  # fmt: skip
    """Train every stage in turn until ``clock``'s deadline: round ``number`` of the run, on
    ``train_sets`` (by stage kind), in ``span`` of its progress. Time for the final evaluation
    is kept free when it follows (``evaluate_after``). Returns ``False`` when cancelled (the
    ``cancelled`` progress was yielded)."""
    config, kinds, val_data = session.config, session.kinds, session.val_data
    max_instances, edges, out = session.data.max_instances, session.data.edges, session.out
    name = {1: "", 2: " (round two)"}[number]
    for index, kind in enumerate(kinds):
        stage = session.stages[kind]
        if kind not in runs:
            runs[kind] = session.open_run(kind, index)
        run = runs[kind]
        if run.done:
            session.load_best(run, kind)
            continue
        shares = [clock.shares.get(k, 1.0) for k in kinds[index:]]
        until = clock.share(shares[0] / sum(shares))
        if until is not None and until <= time.monotonic():
            break  # no time left to start this stage: the package says it is incomplete
        if until is not None and run.val_frames is None:
            _plan_validation(run, val_data, max_instances, config.batch_size,
                             _VAL_SHARE * (until - time.monotonic()), clock.cancelled)  # fmt: skip
        train_data = train_sets[kind]
        examples = stage_examples(train_data, stage)
        steps = config.steps_per_epoch or max(
            _MIN_STEPS, math.ceil(len(examples) / config.batch_size)
        )
        epochs = (run.last_epoch - run.first_epoch) * steps
        step_time = None
        while run.epoch < run.last_epoch and not run.done:
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
            if evaluate_after and index == len(kinds) - 1:
                reserve += _EVAL_PER_VAL * sum(r.val_seconds for r in runs.values())
            done_before = (epoch - 1 - run.first_epoch) * steps
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
                loss = run.step(batch.images, _targets(stage, batch, edges, session.device),
                                batch.known)  # fmt: skip
                step_time, trained = time.monotonic() - began, step
                fraction = clock.fraction(kinds, index, done_before + step, epochs, span)
                yield Progress(kind, epoch, step, steps, loss, fraction, clock.elapsed(),
                               message=f"{kind}{name}: epoch {epoch} step {step}/{steps} "
                                       f"loss {loss:.2e}")  # fmt: skip
            if trained == 0 and not clock.cancelled():  # out of time before this epoch began
                run.done = True
                session.checkpoint(run, kind)
                break
            # A cancelled epoch's steps stay in the checkpointed weights, but the epoch counts
            # only once validated: a resumed run trains it again and scores it, so a cancel in
            # the last epoch cannot leave a stage without best weights.
            if clock.cancelled():
                session.checkpoint(run, kind)
                break
            began = time.monotonic()
            scored = (val_data if run.val_frames is None
                      else val_data.subset(np.arange(run.val_frames)))  # fmt: skip
            val_loss, metrics, n = validate_stage(run, scored, max_instances,
                                                  config.batch_size, clock.cancelled)  # fmt: skip
            if clock.cancelled():
                session.checkpoint(run, kind)
                break
            run.epoch = epoch
            run.val_frames, run.val_seconds = n, time.monotonic() - began
            run.scheduler.step(val_loss)
            improved = val_loss < run.best_val  # in round two: than round one's best too
            if improved:
                run.best_val, run.stale = val_loss, 0
                package.save_torch(run.model.state_dict(), package.weights_path(out, kind))
            else:
                run.stale += 1
            session.log.append({
                "stage": kind,
                **({"round": number} if config.pseudo_labels else {}),
                "epoch": epoch,
                "elapsed_s": round(session.spent + clock.elapsed(), 2),
                "train_loss": loss,
                "val_loss": val_loss,
                "learning_rate": run.optimizer.param_groups[0]["lr"],
                "val_frames": n,
                **{k: v for k, v in metrics.items() if not isinstance(v, list)},
            })  # fmt: skip
            package.write_log(out, session.log)
            run.done = out_of_time or run.stale >= config.patience or epoch >= run.last_epoch
            session.checkpoint(run, kind)
            fraction = clock.fraction(kinds, index, done_before + steps, epochs, span)
            yield Progress(kind, epoch, steps, steps, loss, fraction, clock.elapsed(),
                           validation={"val_loss": val_loss, **metrics, "window": session.window},
                           message=f"{kind}{name}: epoch {epoch} val loss {val_loss:.2e}, "
                                   f"{_error_text(metrics)}")  # fmt: skip
        if clock.cancelled():
            yield session.cancelled()
            return False
        session.load_best(run, kind)
    return True


def _pseudo_label(session: _Session, runs: Mapping[str, _StageRun], labels: sio.Labels,
                  train_data: LabelledFrames, until: float | None,
                  ) -> Generator[Progress, None, pseudo.PseudoLabels]:  # fmt: skip
    """Pose unlabelled frames with round one's pipeline, both ways up, and keep what agrees
    (``pseudo``), until ``until`` or a cancel (checked before every frame and batch).

    Frames go in passes, each evenly spread over the frames not yet seen and read in frame
    order: under a time limit the first pass (a few frames) times decoding and predicting, and
    each later pass takes as many frames as fit the time left at the last pass's rate, so the
    frames found are spread over the videos whenever the time runs out. At most
    ``_PSEUDO_PER_FRAME`` per training frame.
    """
    config, data, clock = session.config, session.data, session.clock
    models = {kind: run.model for kind, run in runs.items()}
    labelled = pseudo.labelled_keys(labels, config.frames)
    videos = np.unique(data.keys[:, 0])
    left = pseudo.candidate_frames(
        pseudo.video_lengths(data.videos, videos), videos, labelled, session.val_data.keys,
        pseudo.labelling_stride(labelled), config.frames,
    )  # fmt: skip
    cap = min(len(left), _PSEUDO_PER_FRAME * len(train_data))
    anchor = next((s.anchor for s in session.stages.values() if s.anchor is not None), None)
    needed = pseudo.min_nodes(train_data.points, pseudo.MIN_NODES)
    span = (1.0 - config.pseudo_labels,) * 2

    def predict(images: list[np.ndarray]) -> list[FramePrediction]:
        frames = pseudo.frames_to_predict(data, images)
        return predict_pipeline(models, session.stages, frames, session.device,
                                data.max_instances)  # fmt: skip

    def late(per_frame: float) -> bool:
        return clock.cancelled() or (until is not None and time.monotonic() + per_frame > until)

    def pass_size(per_frame: float | None) -> int:
        """Frames of the next pass: all allowed without a time limit, a few to time first,
        then as many as fit the time left."""
        count = cap - len(keys)
        if until is None:
            return count
        if per_frame is None:
            return min(count, _PSEUDO_FIRST_PASS)
        return min(count, int((until - time.monotonic()) / per_frame))

    keys: list[np.ndarray] = []
    images: list[np.ndarray] = []
    agreements: list[pseudo.Agreement] = []
    per_frame: float | None = None
    while len(keys) < cap and not late(per_frame or 0.0):
        count = pass_size(per_frame)
        if count < min(_VAL_BATCH, cap - len(keys)):
            break  # too little time for a batch: round two gets it
        chosen = pseudo.spread(len(left), count)
        picks, left = left[chosen], np.delete(left, chosen, axis=0)
        yield Progress("pseudo-labelling", fraction=clock.fraction(session.kinds, 0, 0, 1, span),
                       elapsed=clock.elapsed(),
                       message=f"pseudo-labelling {len(picks)} unlabelled frames "
                               f"({len(keys)} done, {len(left)} more unlabelled)")  # fmt: skip
        began, before = time.monotonic(), len(keys)
        report = before + max(len(picks) // 10, _VAL_BATCH)
        with contextlib.closing(pseudo.read_frames(data.videos, picks, data.channels)) as reader:
            for start in range(0, len(picks), _VAL_BATCH):
                batch = picks[start : start + _VAL_BATCH]
                chunk = []
                for _ in batch:
                    if late(per_frame or 0.0):
                        break
                    chunk.append(next(reader))
                if chunk and not clock.cancelled():
                    both = pseudo.predict_both_ways(chunk, predict)
                    agreements += [pseudo.agree(first, second, min_nodes=needed, anchor=anchor,
                                                max_instances=data.max_instances,
                                                agree_px=pseudo.AGREE_PX,
                                                min_score=pseudo.MIN_SCORE)
                                   for first, second in both]  # fmt: skip
                    keys += list(batch[: len(chunk)])
                    images += chunk
                if len(keys) >= report:  # about ten lines a pass (the CLI prints each)
                    report += max(len(picks) // 10, _VAL_BATCH)
                    kept = sum(len(a.points) > 0 for a in agreements)
                    yield Progress("pseudo-labelling", elapsed=clock.elapsed(),
                                   fraction=clock.fraction(session.kinds, 0, 0, 1, span),
                                   message=f"pseudo-labelling: {len(keys)} frames posed, "
                                           f"{kept} kept")  # fmt: skip
                if len(chunk) < len(batch):
                    break  # out of time, or cancelled
        if len(keys) - before < len(picks):
            break
        per_frame = (time.monotonic() - began) / len(picks)
    if not keys and not clock.cancelled():
        why = "no time was left for them" if cap else "every frame is labelled or near validation"
        yield Progress("pseudo-labelling", fraction=clock.fraction(session.kinds, 0, 0, 1, span),
                       elapsed=clock.elapsed(),
                       message=f"no unlabelled frames were pseudo-labelled: {why}")  # fmt: skip
    return pseudo.collect(data, np.asarray(keys, np.int64).reshape(-1, 2), images, agreements)


def _round_two(session: _Session, runs: dict[str, _StageRun], labels: sio.Labels,
               train_data: LabelledFrames) -> Generator[Progress, None, bool]:  # fmt: skip
    """Pseudo-label in ``_PSEUDO_TIME_SHARE`` of the time left, then train every stage again on
    labels and pseudo-labels in the rest. Returns ``False`` when cancelled."""
    clock, config, record = session.clock, session.config, session.record
    found = yield from _pseudo_label(session, runs, labels, train_data,
                                     clock.share(_PSEUDO_TIME_SHARE))  # fmt: skip
    if clock.cancelled():
        yield session.cancelled()
        return False
    n_complete = int(found.complete.sum())
    whole = [kind for kind in session.kinds if not session.stages[kind].crops]
    record["training"].update({
        "round": 2,
        "n_pseudo_predicted": found.looked_at,
        "n_pseudo_frames": len(found.frames),
        "n_pseudo_instances": found.n_instances,
        "n_pseudo_complete_frames": n_complete,
    })  # fmt: skip
    session.write_record()
    message = (f"kept {len(found.frames)} of {found.looked_at} pseudo-labelled frames, "
               f"{found.n_instances} instances")  # fmt: skip
    if whole:
        message += f"; {n_complete} with every animal for the {' and '.join(whole)} stage"
    fraction = clock.fraction(session.kinds, 0, 0, 1, (1.0 - config.pseudo_labels,) * 2)
    yield Progress("pseudo-labelling", fraction=fraction, elapsed=clock.elapsed(), message=message)
    for run in runs.values():
        run.begin_round_two(config.round_two_epochs)
    train_sets = {kind: pseudo.training_frames(train_data, found, session.stages[kind].crops)
                  for kind in session.kinds}  # fmt: skip
    yield Progress("pseudo-labelling", fraction=fraction, elapsed=clock.elapsed(),
                   message=f"round two: training on {len(train_data)} labelled and "
                           f"{len(found.frames)} pseudo-labelled frames from round one's "
                           "weights, kept only where they validate better")  # fmt: skip
    return (yield from _train_round(session, runs, train_sets, clock, number=2,
                                    evaluate_after=True,
                                    span=(1.0 - config.pseudo_labels, 1.0)))  # fmt: skip


@attrs.frozen
class StartModel:
    """A model package that a run starts from (``train``'s ``start_from``), checked against
    the labels before anything is decoded or trained.

    Attributes:
        folder: The package folder (absolute), recorded as ``training.started_from``.
        pipeline: Its pipeline, which the run keeps.
        stages: Its stage configs (model, input size, scale, anchor, sigma, augmentation).
        weights: Its best weights by stage kind (plain state dicts on the CPU).
        preset: The model size it was trained with (``None`` where it does not say).
    """

    folder: Path
    pipeline: str
    stages: dict[str, StageConfig]
    weights: dict[str, dict[str, torch.Tensor]]
    preset: str | None = None


def skeleton_difference(model: sio.Skeleton, labels: sio.Skeleton,
                        edges: bool = False) -> str | None:  # fmt: skip
    """How a model's skeleton differs from the labels' in what its weights depend on, or
    ``None``: the node names in order (one output map per node), and with ``edges`` the
    edges in order (a bottom-up model's part-affinity fields follow them)."""
    ours, theirs = model.node_names, labels.node_names
    if ours != theirs:
        only_model = [name for name in ours if name not in theirs]
        only_labels = [name for name in theirs if name not in ours]
        if not only_model and not only_labels:
            return (f"its nodes are the labels' in another order (model: {', '.join(ours)}; "
                    f"labels: {', '.join(theirs)})")  # fmt: skip
        parts = [f"nodes missing in {where}: {', '.join(names)}"
                 for where, names in (("the labels", only_model), ("the model", only_labels))
                 if names]  # fmt: skip
        return f"its nodes differ from the labels' ({'; '.join(parts)})"
    if edges and model.edge_names != labels.edge_names:

        def names(skeleton: sio.Skeleton) -> str:
            return ", ".join(f"{a}-{b}" for a, b in skeleton.edge_names) or "none"

        return (f"its edges, which its part-affinity fields follow, differ from the labels' "
                f"(model: {names(model)}; labels: {names(labels)})")  # fmt: skip
    return None


def open_start_model(folder: str | Path, labels: sio.Labels, out_dir: str | Path,
                     pipeline: str | None = None,
                     stages: Mapping[str, StageConfig] | None = None) -> StartModel:  # fmt: skip
    """Check that ``folder`` is a model package a run on ``labels`` into ``out_dir`` can start
    from, and read its stage configs and best weights.

    Raises:
        PoseFileError: Naming the package (or its file) and the cause: not a model folder,
            the folder the new model is to be written to (writing there would replace the
            weights it starts from, and the model to go back to), another pipeline than
            ``pipeline``, a skeleton whose nodes (bottom-up: or edges) differ from the labels',
            weights missing or not fitting ``stages`` (default: its own).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseFileError(folder, "no model folder here to continue training from")
    if folder.resolve() == Path(out_dir).resolve():
        raise PoseFileError(folder, "is both the model to continue from and the folder to "
                                    "write: write the new model to another folder, so that "
                                    "this one stays as it is to compare with or go back to")  # fmt: skip
    recorded = package.read_config(folder)
    kinds = PIPELINES[recorded["pipeline"]]
    if pipeline is not None and pipeline != recorded["pipeline"]:
        raise PoseFileError(folder, f"is a {recorded['pipeline']} model: it cannot be "
                                    f"continued as {pipeline}")  # fmt: skip
    if not labels.skeletons:
        raise ValueError("the labels have no skeleton")
    skeleton = load_skeleton(folder / package.SKELETON_FILE)
    problem = skeleton_difference(skeleton, labels.skeletons[0], edges="bottomup" in kinds)
    if problem is not None:
        raise PoseFileError(folder, f"cannot continue training this model on these labels: "
                                    f"{problem}")  # fmt: skip
    try:
        own = {kind: StageConfig.from_dict(recorded["stages"][kind]) for kind in kinds}
    except (KeyError, TypeError, ValueError) as error:
        raise PoseFileError(folder / package.CONFIG_FILE,
                            f"its stages cannot be read ({error!r})") from error  # fmt: skip
    chosen = own if stages is None else stages
    weights = {}
    for kind in kinds:
        path = package.weights_path(folder, kind)
        if kind not in chosen:
            raise ValueError(f"the stages given have no {kind} stage, which the model in "
                             f"{folder} has")  # fmt: skip
        state = package.load_torch(path)
        try:
            build_model(chosen[kind].model, pretrained=False).load_state_dict(state)
        except RuntimeError as error:  # shapes or names differ from the stage's model
            first = str(error).strip().splitlines()[0]
            raise PoseFileError(path, f"these weights do not fit the {kind} model to train "
                                      f"({first})") from error  # fmt: skip
        weights[kind] = state
    preset = (recorded.get("training") or {}).get("preset")
    return StartModel(folder.resolve(), recorded["pipeline"], own, weights,
                      preset if isinstance(preset, str) else None)  # fmt: skip


def _crop_note(start: StartModel, stages: Mapping[str, StageConfig],
               data: LabelledFrames) -> str | None:  # fmt: skip
    """What the run says when the labels' animals need larger crops than the package's,
    which it keeps (its weights were trained at that size)."""
    stage = stages.get("centered_instance")
    if stage is None:
        return None
    needed = crop_size(data, stage.anchor, stage.augment, stage.model.backbone.max_stride)
    side = stage.input_size[0]
    if needed <= side:
        return None
    return (f"the labelled animals need {needed} px crops; keeping the {side} px crops of "
            f"{start.folder}, which its weights were trained at (a node outside a crop is "
            "trained as not there)")  # fmt: skip


def train(
    labels: sio.Labels,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    stages: dict[str, StageConfig] | None = None,
    resume: bool = False,
    start_from: str | Path | None = None,
    stop: threading.Event | None = None,
    labels_path: str | Path | None = None,
) -> Iterator[Progress]:
    """Train every stage of a pipeline on ``labels``' user instances into ``out_dir``.

    With ``config.pseudo_labels``, a second round trains on pseudo-labels of the unlabelled
    frames too (``_round_two``). A resumed run whose second round had begun starts that round
    again from the best weights so far (round one's, or round two's where they validated
    better): the pseudo-labels are not stored, so they are found again in the time left.

    Args:
        labels: The project (any number of videos); only user instances are trained on.
        out_dir: The model package folder (created; an existing package is overwritten unless
            ``resume``).
        config: Training settings.
        stages: Stage configs to use instead of ``default_stages`` (e.g. from a YAML file).
        resume: Continue the run recorded in ``out_dir`` (same labels and settings).
        start_from: A model package to continue training (``open_start_model``): a new run
            on ``labels`` whose stages start from the package's best weights, with its
            pipeline and (unless ``stages`` is given) its stage configs, so its crop and
            input sizes; the optimiser, learning-rate schedule, early stopping and time limit
            start afresh. The package must have the labels' node names (in order) and may not
            be ``out_dir``; a problem is raised before anything is decoded or trained.
            ``config.yaml`` records it as ``training.started_from``. Not with ``resume``
            (a resumed continued run goes on from its checkpoints).
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
    if start_from is not None and resume:
        raise ValueError("start_from and resume cannot be combined: resume goes on with the "
                         "run in the output folder, start_from begins a new run from a model")  # fmt: skip
    start = None
    if start_from is not None:  # checked before anything is written, decoded or trained
        start = open_start_model(start_from, labels, out, config.pipeline, stages)
        config = attrs.evolve(config, pipeline=start.pipeline)
        if stages is None:  # its models, so the preset recorded is the one they were built at
            stages = start.stages
            config = attrs.evolve(config, preset=start.preset or config.preset)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    spent, frames_used = 0.0, None
    started_from = None if start is None else str(start.folder)
    start_weights = {} if start is None else start.weights
    if resume:
        recorded = package.read_config(out)
        config = attrs.evolve(config, pipeline=recorded["pipeline"])
        stages = {k: StageConfig.from_dict(v) for k, v in recorded["stages"].items()}
        spent = float(recorded["training"].get("elapsed_s") or 0.0)
        frames_used = recorded["training"].get("n_frames_used")
        # A continued run's stages that had not begun start from where the run did.
        started_from = recorded["training"].get("started_from")
        fresh = [kind for kind in PIPELINES[recorded["pipeline"]]
                 if not package.checkpoint_path(out, kind).exists()]  # fmt: skip
        if started_from and fresh:
            start_weights = {kind: package.load_torch(package.weights_path(Path(started_from),
                                                                           kind))
                             for kind in fresh}  # fmt: skip
    limit = None if config.time_limit is None else config.time_limit * 60 - spent
    clock = _Clock(limit, stop, config.time_shares)

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
    if start is not None:
        wrong = [(kind, stage.image_channels) for kind, stage in stages.items()
                 if stage.image_channels != data.channels]  # fmt: skip
        if wrong:
            raise PoseFileError(start.folder, f"its {wrong[0][0]} model reads {wrong[0][1]}-"
                                              f"channel images, the labels' frames have "
                                              f"{data.channels}")  # fmt: skip
        note = _crop_note(start, stages, data)
        if note is not None:
            yield Progress("loading", elapsed=clock.elapsed(), message=note)
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
            **({} if started_from is None else {"started_from": started_from}),
        },
    }
    package.write_skeleton(out, data.skeleton)
    package.write_config(out, record)
    kinds = PIPELINES[pipeline]
    session = _Session(out, config, device, resume, stages, kinds, data, val_data, window,
                       record, package.read_log(out) if resume else [], spent, clock,
                       start_weights)  # fmt: skip
    runs: dict[str, _StageRun] = {}
    share = config.pseudo_labels
    round_one = clock.until(clock.share(1.0 - share)) if share else clock
    finished = yield from _train_round(session, runs, dict.fromkeys(kinds, train_data), round_one,
                                       number=1, evaluate_after=not share,
                                       span=(0.0, 1.0 - share))  # fmt: skip
    if not finished:
        return
    missing = [kind for kind in kinds if not package.weights_path(out, kind).exists()]
    if missing:
        yield Progress("incomplete", elapsed=clock.elapsed(),
                       message=f"out of time before the {missing[0]} stage was trained: give "
                               "training more time, or resume it with a time limit")  # fmt: skip
        return
    if share and not (yield from _round_two(session, runs, labels, train_data)):
        return
    yield Progress("evaluating", fraction=clock.fraction(kinds, len(kinds) - 1, 1, 1),
                   elapsed=clock.elapsed(),
                   message="evaluating the pipeline on validation frames")  # fmt: skip
    models = {kind: run.model for kind, run in runs.items()}
    batches = _bounded(_frame_batches(val_data), clock.deadline, clock.cancelled)
    predictions = predict_pipeline(models, stages, val_data, device, data.max_instances, batches)
    if clock.cancelled():
        yield session.cancelled()
        return
    metrics = _metrics(val_data.points[: len(predictions)], predictions)
    metrics["n_val_frames"] = len(predictions)
    metrics["window"] = window
    package.write_metrics(out, json_ready(metrics))
    record["complete"] = True
    session.write_record()
    yield Progress("done", fraction=1.0, elapsed=clock.elapsed(), validation=metrics,
                   message=f"done: {summarise(metrics)}")  # fmt: skip


def evaluate_package(model: package.ModelPackage, data: LabelledFrames,
                     device: torch.device | str = "cpu") -> dict[str, Any]:  # fmt: skip
    """Predict ``data``'s frames with a loaded model package and score them against its labels."""
    predictions = predict_pipeline(model.models, model.stages, data, torch.device(device),
                                   model.max_instances)  # fmt: skip
    return _metrics(data.points, predictions)
