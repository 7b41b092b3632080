"""One round of the labelling loop: retrain, predict the suggested frames, suggest anew.

The *Train model* dock's *Retrain and predict* button runs ``run_round`` in a worker thread:

1. **train** on a snapshot of the project's labels (``ProjectSession.current()``, taken when
   the round starts, so unsaved edits are in and edits made meanwhile wait for the next
   round), continuing from the latest model (``nn.train.train(start_from=...)``; none: from
   scratch), into a new folder beside it (``round_folder``: ``<name>-round-N``, never an
   existing one, so the previous model is never overwritten);
2. **predict** the frames to label next with the new model (``round_frames``: the snapshot's
   suggestions that are not labelled; none: ``SAMPLE`` frames evenly spread);
3. **rank** the unlabelled frames by how unsure the new model is (``nn.uncertainty``).

This module is Qt-free. The generator yields ``RoundProgress``; the predictions (after phase 2)
and the model's suggestions (after phase 3) ride on it, and whoever drives the generator writes
them into the project *in the thread that owns the layers* (napari's: a worker's ``yielded``
signal is delivered there) with ``predictions.merge_predictions`` (``skip_labelled``) and
``add_suggestions``. Both read the
project's layers as they are at that moment, so what the user labelled during the round is
kept: user instances are never touched, and frames that got user instances meanwhile get no
predictions. A stop event ends training within about a step (``train``'s own) and prediction
and ranking between batches; a cancelled round merges nothing.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Generator
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import numpy as np
import sleap_io as sio

from napari_pose.core import suggestions as sg
from napari_pose.core.pose_arrays import PoseArrays, labels_to_arrays

if TYPE_CHECKING:
    from napari_pose.napari.session import ProjectSession
    from napari_pose.nn.inference import PredictConfig
    from napari_pose.nn.train import Progress, StageConfig, TrainConfig
    from napari_pose.nn.uncertainty import Suggestion

#: Frames predicted when the project suggests none (evenly spread over the unlabelled ones).
SAMPLE = 50
#: Frames the new model suggests in phase 3.
N_SUGGESTIONS = 10
#: Frames ranked in phase 3 (each posed twice): a sample, so a round's ranking stays short.
RANK_SAMPLES = 200
#: Share of the progress bar each phase takes (training is by far the longest).
SHARES = {"training": 0.8, "predicting": 0.1, "ranking": 0.1}

_ROUND = re.compile(r"^(?P<stem>.*)-round-(?P<n>\d+)$")


class Frames(Protocol):
    """A video's frames: ``shape`` (frames first), ``len`` and ``[i]`` (``PlaneFrames``)."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


@attrs.frozen
class RoundProgress:
    """Where a round is.

    Attributes:
        phase: ``training``, ``predicting``, ``ranking``; the last one is ``done``,
            ``cancelled`` or ``incomplete`` (training ran out of time before a stage).
        fraction: Overall progress in ``[0, 1]``.
        message: A line for the dock, starting with the phase.
        train: Training's own progress (phase ``training``), for the loss plot.
        predictions: Once predicting is done, the new model's instances on the frames
            predicted (the model's skeleton and the snapshot's videos): to merge.
        suggestions: Once ranking is done, the frames the new model is least sure of: to add.
    """

    phase: str
    fraction: float
    message: str
    train: Progress | None = None
    predictions: PoseArrays | None = None
    suggestions: list[Suggestion] | None = None


@attrs.frozen
class RoundResult:
    """What a round ended with: ``status`` (the last phase), the new model's folder, and the
    frames it predicted."""

    status: str
    model: Path
    frames: list[int] = attrs.field(factory=list)


def round_folder(model: Path) -> Path:
    """The next round's folder beside ``model``: ``<stem>-round-N`` with ``N`` one more than
    ``model``'s own round (1 for a folder that is no round), raised past any that exist."""
    found = _ROUND.match(model.name)
    stem = found["stem"] if found else model.name
    n = int(found["n"]) + 1 if found else 1
    while (model.parent / f"{stem}-round-{n}").exists():
        n += 1
    return model.parent / f"{stem}-round-{n}"


def labelled_frames(labels: sio.Labels, video: int) -> np.ndarray:
    """Frames of video ``video`` with user instances in ``labels``."""
    if not labels.skeletons:
        return np.zeros(0, np.int64)
    arrays = labels_to_arrays(labels)
    user = ~arrays.predicted & (arrays.video == video)
    return np.unique(arrays.frame[user]).astype(np.int64)


def round_frames(labels: sio.Labels, video: int, n_frames: int, sample: int = SAMPLE) -> list[int]:
    """The frames a round predicts: ``labels``' suggestions of video ``video`` that have no
    user instances, or when there are none, ``sample`` frames evenly spread over the
    unlabelled ones."""
    done = labelled_frames(labels, video)
    target = labels.videos[video]
    suggested = {int(s.frame_idx) for s in labels.suggestions if s.video is target}
    frames = sorted(f for f in suggested - set(done.tolist()) if 0 <= f < n_frames)
    if frames:
        return frames
    return [int(f) for f in sg.strided_frames(n_frames, min(sample, n_frames), exclude=done)]


def run_round(
    labels: sio.Labels,
    frames: Frames,
    video: int,
    out: Path,
    config: TrainConfig,
    *,
    start_from: Path | None = None,
    stages: dict[str, StageConfig] | None = None,
    stop: threading.Event | None = None,
    predict: list[int] | None = None,
    n_suggestions: int = N_SUGGESTIONS,
    labels_path: str | None = None,
    batch_size: int = 4,
    predict_config: PredictConfig | None = None,
) -> Generator[RoundProgress, None, RoundResult]:
    """Run one round (see the module notes), yielding progress; returns how it ended.

    Args:
        labels: The snapshot to train on (the project as it was when the round started).
        frames: Video ``video``'s frames, for predicting and ranking.
        video: Which of ``labels.videos`` is predicted and ranked.
        out: The new model's folder (``round_folder``); it must not be ``start_from``.
        config: Training settings.
        start_from: The model to continue from (``None``: from scratch).
        stages: Stage configs for a run from scratch (default: the preset's).
        stop: Set it to cancel (training within about a step, the rest between batches).
        predict: Frames to predict (default ``round_frames``).
        n_suggestions: Frames the new model suggests.
        labels_path: Recorded in the model's config.
        batch_size: Frames per batch when predicting and ranking.
        predict_config: How phase 2 predicts (default: the defaults, ``batch_size`` frames a
            batch on training's device, one worker).

    Raises:
        ValueError, OSError: Problems with the input (nothing labelled, a model that does not
            fit the labels, unreadable frames); nothing is merged.
    """
    from napari_pose.nn.inference import (
        PredictConfig,
        Predictor,
        predict_video,
        predictions_to_arrays,
    )
    from napari_pose.nn.train import train
    from napari_pose.nn.uncertainty import rank_frames

    stop = stop or threading.Event()
    out = Path(out)
    n_frames = int(frames.shape[0])
    chosen = round_frames(labels, video, n_frames) if predict is None else list(predict)
    done = labelled_frames(labels, video)

    # 1. training (the stop event ends it within about a step, checkpointed and resumable)
    last = None
    for progress in train(labels, out, config, start_from=start_from, stages=stages,
                          stop=stop, labels_path=labels_path):  # fmt: skip
        last = progress
        yield RoundProgress("training", SHARES["training"] * progress.fraction,
                            f"training: {progress.message}", train=progress)  # fmt: skip
    if last is None or last.stage != "done":
        status = "incomplete" if last is not None and last.stage == "incomplete" else "cancelled"
        yield RoundProgress(status, SHARES["training"], f"{status}: {out.name} not finished")
        return RoundResult(status, out)
    base = SHARES["training"]

    # 2. predicting the frames to label next, batch by batch
    predict_config = predict_config or PredictConfig(batch_size=batch_size,
                                                     device=config.device, workers=1)  # fmt: skip
    predictor = Predictor.load(out, predict_config)
    found: list[tuple[int, int, Any]] = []
    yield RoundProgress("predicting", base, f"predicting 0/{len(chosen)} frames")
    if chosen:
        with closing(predict_video(predictor, frames, chosen)) as batches:
            for indices, predictions in batches:
                found.extend((video, int(i), p) for i, p in zip(indices, predictions, strict=True))
                share = SHARES["predicting"] * len(found) / len(chosen)
                yield RoundProgress("predicting", base + share,
                                    f"predicting {len(found)}/{len(chosen)} frames")  # fmt: skip
                if stop.is_set():
                    break
    if stop.is_set():
        yield RoundProgress("cancelled", base, "cancelled: nothing merged")
        return RoundResult("cancelled", out, chosen)
    arrays = predictions_to_arrays(predictor.skeleton, list(labels.videos), found)
    arrays = arrays.select(np.isfinite(arrays.xy[..., 0]).any(axis=1))
    base += SHARES["predicting"]
    yield RoundProgress("ranking", base, f"predicted {len(chosen)} frames; ranking frames",
                        predictions=arrays)  # fmt: skip

    # 3. ranking the unlabelled frames by how unsure the new model is
    target = labels.videos[video]
    suggested = [int(s.frame_idx) for s in labels.suggestions if s.video is target]
    exclude = np.union1d(done, np.asarray(suggested + chosen, np.int64))
    steps = rank_frames(out, frames, n=n_suggestions, exclude=exclude, max_samples=RANK_SAMPLES,
                        batch_size=batch_size, device=config.device)  # fmt: skip
    with closing(steps):
        while True:
            try:
                ranked, total = next(steps)
            except StopIteration as end:
                chosen_frames: list[Suggestion] = end.value
                break
            share = SHARES["ranking"] * ranked / max(total, 1)
            yield RoundProgress("ranking", base + share, f"ranking {ranked}/{total} frames")
            if stop.is_set():
                yield RoundProgress("cancelled", base, "cancelled: predictions merged, no new "
                                    "suggestions")  # fmt: skip
                return RoundResult("cancelled", out, chosen)
    yield RoundProgress("done", 1.0, f"done: {out.name}, {len(chosen)} frames predicted, "
                        f"{len(chosen_frames)} frames suggested", suggestions=chosen_frames)  # fmt: skip
    return RoundResult("done", out, chosen)


# ---------------------------------------------------------------------- writing into the project
def add_suggestions(session: ProjectSession, video: int, found: list[Suggestion]) -> int:
    """Add the frames a round's model is least sure of to the project's suggestions
    (``core.suggestions.merge_suggestions``: frames already suggested are skipped); returns
    how many were added."""
    target = session.labels.videos[video]
    added = sg.merge_suggestions(session.labels,
                                 sg.to_suggestions([s.frame for s in found], target))  # fmt: skip
    if added:
        session.mark_edited()
    return len(added)
