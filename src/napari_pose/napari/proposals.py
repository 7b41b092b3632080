"""Proposals from a model while labelling: the model's instances on the frame on screen.

The *Label poses* dock's "propose from model" field names a model package. While it is set,
stepping to a frame with no user instances and no predictions poses that one frame with the
model in a worker thread, and its instances join the project's predictions layer: proposals to
accept (``Shift+U`` all, ``u`` or a double click one) and fix.

This module is the Qt-free half: ``Proposer`` keeps the model and the one prediction in flight,
``propose`` is what the worker runs. ``napari.labelling.Labeller`` starts the worker and writes
what it returns.

**One prediction at a time, the newest frame next.** Rapid stepping would otherwise queue a
prediction per frame passed, each stale before it starts, and two predictions at once would
share two cores and both come late. So a step while a prediction runs starts nothing; when it
ends, the frame shown *then* is predicted next if it still needs proposals. The frames passed
over in between are never predicted.

**Results for a frame the user left are kept.** They are valid predictions of their frame, cost
the model's time already, and show at once when the user steps back. They are still written
only where the frame has neither user instances nor predictions by the time they arrive.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import sleap_io as sio

from napari_pose.core.pose_arrays import PoseArrays

if TYPE_CHECKING:
    from napari_pose.nn.inference import Predictor

#: PyTorch threads of a proposal. One: a pass split over two threads waits at every layer for
#: the slower, and while labelling the other core is rarely free (napari drawing, decoding,
#: training, a benchmark). On clip.mp4 with the small top-down preset and a benchmark busy on
#: both cores, one thread took 30-42 ms a frame (median), two 84-1100 ms with stalls to 1.4 s
#: (docs/labelling.md).
THREADS = 1


class FrameSource(Protocol):
    """Frames read one at a time by index (``labelling.PlaneFrames``)."""

    def __getitem__(self, index: int) -> np.ndarray: ...


def load_model(folder: str | Path) -> Predictor:
    """The model package at ``folder`` for posing one frame at a time on the CPU.

    One frame is one batch, which ``Predictor`` runs in the calling thread (the worker, on
    ``THREADS`` PyTorch threads); the GPU, if any, is left to training or the Predict dock.
    """
    from napari_pose.nn.inference import PredictConfig, Predictor

    return Predictor.load(folder, PredictConfig(batch_size=1, device="cpu", workers=1))


def predict_frame(predictor: Predictor, image: np.ndarray, skeleton: sio.Skeleton,
                  videos: list[sio.Video], video: int, frame: int) -> PoseArrays:  # fmt: skip
    """The model's instances on one decoded frame, in the project's terms.

    Nodes follow ``skeleton`` by name, instances are untracked and numbered from 0 (the caller
    numbers them into the project), and instances with no node found are left out.

    Raises:
        ValueError: the model's nodes are not the project's (which ones differ is said).
    """
    from napari_pose.nn.inference import in_project, predictions_to_arrays, skeleton_mismatch
    from napari_pose.nn.uncertainty import model_frame

    problem = skeleton_mismatch("chosen", predictor.skeleton.node_names, "being labelled",
                                skeleton.node_names)  # fmt: skip
    if problem is not None:
        raise ValueError(problem)
    found = predictor.predict(model_frame(image, predictor.channels)[None])[0]
    arrays = predictions_to_arrays(predictor.skeleton, videos, [(video, frame, found)])
    arrays = arrays.select(np.isfinite(arrays.xy[..., 0]).any(axis=1))
    return in_project(arrays, skeleton, videos, [], first_id=0, video=video)


def propose(predictor: Predictor | None, folder: Path, frames: FrameSource, frame: int,
            skeleton: sio.Skeleton, videos: list[sio.Video], video: int,
            ) -> tuple[Predictor | None, PoseArrays | None, str | None]:  # fmt: skip
    """What the worker runs: load the model if it is not loaded yet, read and pose ``frame``.

    Returns:
        The model (for the next frame), the proposals, and ``None``; or, when anything fails
        (a folder that is no model package, other nodes, an unreadable frame), ``None``,
        ``None`` and one line saying why. Proposing is an aid while clicking: a failure turns
        it off with that line in the dock rather than a traceback per frame.
    """
    import torch

    threads = torch.get_num_threads()  # per thread: the worker's, restored for its next work
    torch.set_num_threads(THREADS)
    try:
        predictor = predictor if predictor is not None else load_model(folder)
        image = np.asarray(frames[frame])
        return predictor, predict_frame(predictor, image, skeleton, videos, video, frame), None
    except Exception as error:  # any failure is one message, see above
        text = " ".join(str(error).split()) or type(error).__name__
        return None, None, f"could not propose from {folder.name}: {text}"
    finally:
        torch.set_num_threads(threads)


class Proposer:
    """The "propose from model" state of one ``Labeller``: the model folder, the model once
    loaded, and the one prediction in flight.

    Attributes:
        folder: The model package (``None``: proposing is off).
        predictor: The model, loaded by the first prediction (in its worker).
        generation: Raised whenever the folder is set: a result of an older model is dropped.
        in_flight: The frame being predicted, or ``None``.
        error: Why proposing stopped (shown in the dock), until a folder is set again.
        started: Frames a prediction was started for, in order.
        tried: Frames this model has posed (or is posing): never posed twice, so a frame where
            it found nothing, or whose proposals the user deleted, is not posed again and again.
    """

    def __init__(self) -> None:
        self.folder: Path | None = None
        self.predictor: Predictor | None = None
        self.generation = 0
        self.in_flight: int | None = None
        self.error: str | None = None
        self.started: list[int] = []
        self.tried: set[int] = set()

    @property
    def active(self) -> bool:
        """Whether steps should propose: a folder is set and nothing failed since."""
        return self.folder is not None and self.error is None

    def set_folder(self, folder: Path | None) -> None:
        """Propose from ``folder`` from now on (``None``: stop); a running prediction ends on
        its own and its result is dropped."""
        self.folder, self.predictor, self.error = folder, None, None
        self.tried = set()
        self.generation += 1

    def can_start(self) -> bool:
        return self.active and self.in_flight is None

    def start(self, frame: int) -> int:
        """Note that ``frame`` is being predicted; returns the generation the result will carry."""
        self.in_flight = frame
        self.started.append(frame)
        self.tried.add(frame)
        return self.generation

    def finish(self, generation: int, predictor: Predictor | None, error: str | None) -> bool:
        """The prediction started in ``generation`` ended: keep its model, or its error; True
        when its result is of the model set now."""
        self.in_flight = None
        if generation != self.generation:
            return False
        if predictor is not None:
            self.predictor = predictor
        if error is not None:
            self.error = error
        return error is None
