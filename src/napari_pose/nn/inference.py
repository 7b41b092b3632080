"""Predict with a model package: batches of frames, whole videos, and ``Labels`` out.

``Predictor`` wraps a loaded package (``nn.package``) with the settings of a run (batch size,
peak threshold, instance limits) and turns frames into ``FramePrediction``s through the
pipeline functions of ``nn.predict``. ``predict_video`` streams a video through it with the
decoder running in a background thread, so decoding the next batch overlaps inference on
this one; it yields as it goes, so the dock widget can show results while a run continues
and the CLI can draw a progress bar. ``predictions_to_arrays`` / ``to_labels`` make SLEAP
predicted instances of the results.
"""

from __future__ import annotations

import collections
import queue
import threading
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Protocol, TypeVar

import attrs
import numpy as np
import sleap_io as sio
import torch

from napari_pose.core.errors import PoseWarning, VideoFileError
from napari_pose.core.pose_arrays import PoseArrays, arrays_to_labels
from napari_pose.core.stacks import to_uint8
from napari_pose.nn.augment import warp
from napari_pose.nn.data import crop_matrices
from napari_pose.nn.package import ModelPackage, load_package, read_config
from napari_pose.nn.pipelines import with_centre_cue
from napari_pose.nn.predict import (
    FramePrediction,
    find_centroids,
    frame_inputs,
    frames_to_tensor,
    predict_bottomup,
    predict_single_instance,
    predict_topdown,
    run_model,
)
from napari_pose.nn.train import resolve_device
from napari_pose.nn.tta import mirror_of, with_flip_tta, with_rotation_tta

#: Name prefix of ``Predictor.predict_batches``'s worker threads.
INFERENCE_THREAD = "napari-pose inference"
#: What a batch is known by in ``Predictor.predict_batches`` (frame indices, a position).
Key = TypeVar("Key")


@attrs.frozen
class PredictConfig:
    """Settings of a prediction run.

    Attributes:
        batch_size: Frames per forward pass.
        peak_threshold: Confidence-map peaks below this are not keypoints (nor animals). 0.1
            rather than SLEAP's 0.2: on unseen clip.slp frames it keeps leg tips the model is
            unsure of and scored OKS mAP 0.372 -> 0.393 (0.208 -> 0.257 for another model),
            with no change on the other splits (docs/benchmarks.md, issue 12 ablation).
        max_instances: Animals a frame may hold: detection keeps the best this many per frame
            (``None``: the most one frame of the training labels held). Frames where more
            were found are counted and reported once per run (``Crowding``).
        min_score: Instances scoring below this are dropped.
        flip_tta: Average each model's maps over the frame and its mirror image (flip
            test-time augmentation, ``nn.tta``; twice the model cost; pose models only when
            they trained with flips).
        rotation_tta: Degrees by which each model also sees the frame turned, either way
            about its centre, its maps turned back and averaged with the frame's own
            (rotation test-time augmentation, ``nn.tta``; three times each model's cost,
            six times with ``flip_tta``, whose average each rotated pass then is; models
            only when they trained with rotations at least this large). 0: off; otherwise
            above 0 and below 90.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        workers: On CPU, batches predicted at once, each by a single-threaded worker
            (``None``: one per PyTorch thread, i.e. per core). Ignored on GPUs.
    """

    batch_size: int = attrs.field(default=4, validator=attrs.validators.ge(1))
    peak_threshold: float = 0.1
    max_instances: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.ge(1)))  # fmt: skip
    min_score: float = 0.0
    flip_tta: bool = False
    rotation_tta: float = attrs.field(default=0.0, converter=float)
    device: str = "auto"
    workers: int | None = attrs.field(default=None, validator=attrs.validators.optional(
        attrs.validators.ge(1)))  # fmt: skip

    @rotation_tta.validator
    def _check_rotation_tta(self, attribute: attrs.Attribute, value: float) -> None:
        if value != 0 and not 0 < value < 90:
            raise ValueError(f"rotation_tta must be 0 (off) or above 0 and below 90, got {value}")


class Predictor:
    """A model package ready to predict frames (``uint8``, ``(B, H, W)`` or ``(B, H, W, C)``)."""

    def __init__(self, package: ModelPackage, config: PredictConfig | None = None) -> None:
        self.config = config or PredictConfig()
        models = package.models
        if self.config.flip_tta:
            mirror = mirror_of(package.skeleton.node_names, package.config.get("flip_pairs", []))
            models = with_flip_tta(models, package.stages, mirror)
        if self.config.rotation_tta:  # around the flip: each rotated pass is flip-averaged
            models = with_rotation_tta(models, package.stages, self.config.rotation_tta)
        if models is not package.models:
            package = attrs.evolve(package, models=models)
        self.package = package
        self.device = next(iter(package.models.values())).parameters().__next__().device

    @classmethod
    def load(cls, folder: str | Path, config: PredictConfig | None = None) -> Predictor:
        """Load the package at ``folder`` onto the configured device."""
        config = config or PredictConfig()
        return cls(load_package(folder, resolve_device(config.device)), config)

    @property
    def skeleton(self) -> sio.Skeleton:
        return self.package.skeleton

    @property
    def channels(self) -> int:
        """Image channels the model takes (1: grayscale, 3: RGB)."""
        return next(iter(self.package.stages.values())).image_channels

    @property
    def max_instances(self) -> int:
        """Animals kept per frame: as configured, else the most in the training labels."""
        return self.config.max_instances or self.package.max_instances

    def check_frames(self, frames: np.ndarray, source: str = "input") -> np.ndarray:
        """Frames as ``(B, H, W, C)`` with the model's channel count, or a clear ``ValueError``.

        Frames with the wrong channel count are refused rather than guessed at (videos are
        decoded gray or RGB to suit the model by ``open_video``'s ``grayscale``).
        """
        frames = np.asarray(frames)
        if frames.ndim == 3:
            frames = frames[..., None]
        if frames.ndim != 4 or frames.shape[-1] != self.channels:
            raise ValueError(
                f"{source}: the model takes {self.channels}-channel images "
                f"({'grayscale' if self.channels == 1 else 'RGB'}), got frames of shape "
                f"{frames.shape[1:]}"
            )
        if frames.dtype != np.uint8:  # microscopy planes: stretched one by one, as in training
            frames = np.stack([to_uint8(frame) for frame in frames])
        return frames

    @property
    def workers(self) -> int:
        """Batches predicted at once: ``config.workers`` on CPU (default one per core), else 1."""
        if self.device.type != "cpu":
            return 1
        return self.config.workers or torch.get_num_threads()

    def predict(self, frames: np.ndarray) -> list[FramePrediction]:
        """Instances in each of ``frames``, best first, filtered by ``min_score``."""
        frames = self.check_frames(frames)
        size = self.config.batch_size
        batches = ((start, frames[start : start + size]) for start in range(0, len(frames), size))
        n_batches = -(-len(frames) // size)
        return [p for _, found in self.predict_batches(batches, n_batches) for p in found]

    def predict_batches(self, batches: Iterable[tuple[Key, np.ndarray]],
                        n_batches: int | None = None,
                        ) -> Iterator[tuple[Key, list[FramePrediction]]]:  # fmt: skip
        """Predict ``(key, frames)`` batches, yielding ``(key, predictions)`` in their order.

        On CPU, ``workers`` batches run at once, each in a thread of its own limited to one
        PyTorch thread (the limit is per thread, so the caller's threads are unchanged). On
        two cores this ran 1.4x faster than one pass split over two threads on a quiet machine
        and 2-4x faster while something else ran (docs/benchmarks.md): a split pass waits at
        every layer for its slowest thread. A single batch (``n_batches == 1``, e.g. the frame
        on screen) runs in the calling thread on all its threads, for the lowest latency.
        """
        workers = self.workers if n_batches is None else min(self.workers, n_batches)
        if workers <= 1:
            for key, frames in batches:
                yield key, self._predict_frames(frames)
            return
        with ThreadPoolExecutor(workers, thread_name_prefix=INFERENCE_THREAD,
                                initializer=torch.set_num_threads, initargs=(1,)) as pool:  # fmt: skip
            pending: collections.deque[tuple[Key, Future]] = collections.deque()
            try:
                for key, frames in batches:
                    pending.append((key, pool.submit(self._predict_frames, frames)))
                    if len(pending) > workers:  # one batch queued per worker at most
                        key, future = pending.popleft()
                        yield key, future.result()
                while pending:
                    key, future = pending.popleft()
                    yield key, future.result()
            finally:  # closed early: drop queued batches, let running ones end
                for _, future in pending:
                    future.cancel()

    def _predict_frames(self, frames: np.ndarray) -> list[FramePrediction]:
        """One batch: checked frames in, filtered predictions out."""
        batch = frames_to_tensor(self.check_frames(frames), self.device)
        return [_filter(p, self.config.min_score) for p in self._predict_batch(batch)]

    def _predict_batch(self, batch: torch.Tensor) -> list[FramePrediction]:
        models, stages = self.package.models, self.package.stages
        threshold = self.config.peak_threshold
        if self.package.pipeline == "topdown":
            return predict_topdown(models["centroid"], stages["centroid"],
                                   models["centered_instance"], stages["centered_instance"],
                                   batch, self.max_instances, threshold)  # fmt: skip
        if self.package.pipeline == "bottomup":
            edges = np.asarray(self.skeleton.edge_inds, dtype=np.int64).reshape(-1, 2)
            return predict_bottomup(models["bottomup"], stages["bottomup"], batch, edges,
                                    self.max_instances, threshold)  # fmt: skip
        return predict_single_instance(models["single_instance"], stages["single_instance"],
                                       batch, threshold)  # fmt: skip

    @torch.inference_mode()
    def confidence_maps(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        """What the models see, in frame pixels: ``{"confmaps": (B, H, W)}`` the maximum over
        nodes (for top-down: the centroid map and every crop's node maps pasted where the crop
        came from), plus ``"pafs"`` (the largest PAF vector length) for bottom-up models.
        Values are the models' raw outputs (about ``[0, 1]``)."""
        frames = self.check_frames(frames)
        batch = frames_to_tensor(frames, self.device)
        size = (int(batch.shape[-2]), int(batch.shape[-1]))
        models, stages = self.package.models, self.package.stages
        kind = "centroid" if self.package.pipeline == "topdown" else next(iter(stages))
        inputs, to_input = frame_inputs(batch, stages[kind])
        outputs = run_model(models[kind], inputs)
        stride = models[kind].output_stride
        grid_to_frame = torch.linalg.inv(to_input) @ _scale_matrix(stride, batch.device)
        result = {}
        for name, maps in outputs.items():
            if name == "pafs":
                pairs = maps.reshape(len(maps), -1, 2, *maps.shape[-2:])
                reduced = pairs.norm(dim=2).amax(dim=1, keepdim=True)
            else:
                reduced = maps.amax(dim=1, keepdim=True)
            frame_maps = warp(reduced, grid_to_frame, size)
            result["pafs" if name == "pafs" else "confmaps"] = frame_maps[:, 0]
        if self.package.pipeline == "topdown":
            result["confmaps"] = torch.maximum(result["confmaps"], self._crop_maps(batch, size))
        return {name: maps.clamp_min(0).cpu().numpy() for name, maps in result.items()}

    def _crop_maps(self, batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Centred-instance maps of every found animal, pasted into frame coordinates."""
        models, stages = self.package.models, self.package.stages
        found = find_centroids(models["centroid"], stages["centroid"], batch, self.max_instances,
                               self.config.peak_threshold)  # fmt: skip
        out = torch.zeros(len(batch), *size, device=batch.device)
        stage, model = stages["centered_instance"], models["centered_instance"]
        side = stage.input_size[0]
        for i, (anchors, _) in enumerate(found):
            if len(anchors) == 0:
                continue
            to_crop = crop_matrices(anchors.float().cpu(), stage.scale, side).to(batch.device)
            crops = warp(batch[[i] * len(anchors)], to_crop, (side, side))
            maps = run_model(model, with_centre_cue(crops, stage))["confmaps"]
            maps = maps.amax(dim=1, keepdim=True)
            grid_to_frame = torch.linalg.inv(to_crop) @ _scale_matrix(model.output_stride,
                                                                        batch.device)  # fmt: skip
            pasted = warp(maps, grid_to_frame, size)[:, 0]
            out[i] = pasted.amax(dim=0)
        return out


def _scale_matrix(factor: float, device: torch.device) -> torch.Tensor:
    m = torch.eye(3, device=device)
    m[0, 0] = m[1, 1] = factor
    return m[None]


def _filter(prediction: FramePrediction, min_score: float) -> FramePrediction:
    keep = prediction.scores >= min_score
    if keep.all():
        return prediction
    return attrs.evolve(prediction, points=prediction.points[keep],
                        point_scores=prediction.point_scores[keep],
                        scores=prediction.scores[keep])  # fmt: skip


def trained_animals(folder: str | Path) -> int:
    """The most animals one frame of the model's training labels held: the default animals
    per frame. Read from the package's config alone, so the CLI and the dock can say it
    before any weights load; a ``PoseFileError`` when ``folder`` is no model package."""
    return int(read_config(folder).get("max_instances", 1))


@attrs.define
class Crowding:
    """Frames that held more animals than a run's limit (``FramePrediction.n_candidates``
    above ``Predictor.max_instances``): detection kept the best and dropped the others without
    a word. Counted over a whole run, across batches, videos and cluster workers, so the user
    is told once how often it happened and how to raise the limit.

    Attributes:
        limit: The run's animals per frame.
        frames: Frames counted.
        crowded: Frames where more than ``limit`` animals were found.
        most: Most animals found in one frame.
    """

    limit: int = 0
    frames: int = 0
    crowded: int = 0
    most: int = 0

    def count(self, predictions: Sequence[FramePrediction], limit: int) -> None:
        """Count a batch's frames, predicted with at most ``limit`` animals a frame."""
        found = np.array([p.n_candidates or 0 for p in predictions], dtype=np.int64)
        self.limit = limit
        self.frames += len(found)
        self.crowded += int((found > limit).sum())
        self.most = max(self.most, int(found.max(initial=0)))

    def add(self, other: Crowding) -> None:
        """Count ``other``'s frames too: another video of the same run."""
        self.limit = max(self.limit, other.limit)
        self.frames += other.frames
        self.crowded += other.crowded
        self.most = max(self.most, other.most)

    def message(self) -> str:
        """How many frames held too many animals, and how to raise the limit."""
        return (f"{self.crowded} of {self.frames} frames held more than {self.limit} animals "
                f"(the model found up to {self.most}) and only the best {self.limit} of each "
                "were kept; if frames can hold more, raise the animals per frame: --animals N "
                "(napari-pose predict) or 'animals per frame' in the Predict dock")  # fmt: skip

    def warn(self, stacklevel: int = 2) -> None:
        """One ``PoseWarning`` with the ``message``, if any frame held too many animals."""
        if self.crowded:
            warnings.warn(self.message(), PoseWarning, stacklevel=stacklevel + 1)


#: Name of the background decoding thread of ``predict_video``.
DECODER_THREAD = "napari-pose video decoder"


class Frames(Protocol):
    """What ``predict_video`` reads frames from: a ``FrameReader`` (a video file), or any
    sequence of same-sized frames such as an image layer's planes."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> np.ndarray: ...


def _decode_ahead(reader: Frames, frames: Sequence[int], batch_size: int,
                  out: queue.Queue, stop: threading.Event,
                  skipped: list[tuple[int, VideoFileError]]) -> None:  # fmt: skip
    """Background decoder: put ``(indices, frames)`` batches on ``out``, then ``None``.

    A frame that cannot be decoded (``VideoFileError``: its data is damaged or missing) is
    left out of its batch and listed in ``skipped``: one bad packet in a long video costs its
    own frames, not the predictions of all the others.
    """
    try:
        for start in range(0, len(frames), batch_size):
            if stop.is_set():
                break
            indices, images = [], []
            for i in frames[start : start + batch_size]:
                try:
                    images.append(reader[int(i)])
                    indices.append(int(i))
                except VideoFileError as error:
                    skipped.append((int(i), error))
            if indices:
                out.put((np.asarray(indices, dtype=np.int64), np.stack(images)))
        out.put(None)
    except BaseException as error:  # hand other errors to the consumer
        out.put(error)


def _describe_frames(frames: Sequence[int], most: int = 10) -> str:
    """Frame indices in few words: ``[3, 4, 5, 9]`` as ``"3-5, 9"``, at most ``most`` runs."""
    unique = np.unique(np.asarray(frames, dtype=np.int64))
    runs = np.split(unique, np.flatnonzero(np.diff(unique) != 1) + 1)
    words = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in runs[:most]]
    return ", ".join(words) + (", ..." if len(runs) > most else "")


def predict_video(
    predictor: Predictor,
    reader: Frames,
    frames: Sequence[int] | None = None,
    *,
    prefetch: int = 2,
    crowding: Crowding | None = None,
) -> Generator[tuple[np.ndarray, list[FramePrediction]], None, None]:
    """Predict ``frames`` (default: all) of a video, yielding ``(frame indices, predictions)``
    per batch in order. A decoder thread keeps up to ``prefetch`` batches ready; closing the
    generator stops it.

    Frames that cannot be decoded are skipped (``_decode_ahead``) and, once every frame is
    done, reported in one ``PoseWarning`` (how many, which, why); if no frame at all could be
    decoded, the first error is raised instead, since there is nothing to keep. Frames that
    held more animals than ``predictor.max_instances`` are counted into ``crowding``, for a
    caller predicting several videos to report once; without it they are reported here, in
    one ``PoseWarning`` once every frame is done.
    """
    frames = range(len(reader)) if frames is None else frames
    batches: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()
    skipped: list[tuple[int, VideoFileError]] = []
    worker = threading.Thread(
        target=_decode_ahead,
        args=(reader, frames, predictor.config.batch_size, batches, stop, skipped),
        name=DECODER_THREAD,
        daemon=True,
    )
    worker.start()

    def decoded() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while (item := batches.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item

    n_batches = -(-len(frames) // predictor.config.batch_size)
    counted = Crowding() if crowding is None else crowding
    try:
        for indices, predictions in predictor.predict_batches(decoded(), n_batches):
            counted.count(predictions, predictor.max_instances)
            yield indices, predictions
        if skipped:  # the decoder has finished: the list is complete
            _report_skipped(skipped, len(frames))
        if crowding is None:
            counted.warn(stacklevel=3)
    finally:
        stop.set()
        while worker.is_alive():  # unblock a decoder waiting on a full queue
            try:
                batches.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _report_skipped(skipped: list[tuple[int, VideoFileError]], n_frames: int) -> None:
    first = skipped[0][1]
    if len(skipped) == n_frames:
        raise VideoFileError(
            first.path, f"none of the {n_frames} frames could be decoded ({first.problem})"
        )
    warnings.warn(
        f"{first.path}: {len(skipped)} of {n_frames} frames could not be decoded and were "
        f"skipped (frames {_describe_frames([i for i, _ in skipped])}; first: {first.problem}); "
        f"the other {n_frames - len(skipped)} were predicted",
        PoseWarning,
        stacklevel=3,
    )


def predictions_to_arrays(
    skeleton: sio.Skeleton,
    videos: list[sio.Video],
    results: Sequence[tuple[int, int, FramePrediction]],
) -> PoseArrays:
    """Predicted instances as ``PoseArrays`` from ``(video index, frame index, prediction)``."""
    counts = np.array([len(p.scores) for _, _, p in results], dtype=np.int64)
    n = int(counts.sum())
    arrays = PoseArrays.empty(skeleton, videos, [], n)
    if n == 0:
        return arrays
    xy = np.concatenate([p.points for _, _, p in results]).astype(np.float64)
    return attrs.evolve(
        arrays,
        video=np.repeat([v for v, _, _ in results], counts).astype(np.int32),
        frame=np.repeat([f for _, f, _ in results], counts).astype(np.int64),
        predicted=np.ones(n, bool),
        score=np.concatenate([p.scores for _, _, p in results]).astype(np.float32),
        xy=xy,
        visible=np.all(np.isfinite(xy), axis=-1),
        complete=np.zeros((n, len(skeleton.nodes)), bool),
        point_score=np.concatenate([p.point_scores for _, _, p in results]).astype(np.float32),
    )


def to_labels(arrays: PoseArrays) -> sio.Labels:
    """A ``Labels`` holding predicted instances (save it with ``core.io.save_labels``)."""
    return arrays_to_labels(arrays)


def skeleton_mismatch(model: str | Path, model_nodes: Sequence[str], project: str | Path,
                      project_nodes: Sequence[str]) -> str | None:  # fmt: skip
    """Why predictions of ``model`` cannot join ``project``, or ``None`` when they can.

    Nodes are matched by name, so the same nodes in another order merge (``in_project``
    reorders them); a node on one side only would be dropped or left empty without a word.
    """
    model_set, project_set = set(model_nodes), set(project_nodes)
    only_model = [name for name in model_nodes if name not in project_set]
    only_project = [name for name in project_nodes if name not in model_set]
    if not only_model and not only_project:
        return None
    missing = [f"nodes missing in {where}: {', '.join(names)}"
               for where, names in (("the project", only_model), ("the model", only_project))
               if names]  # fmt: skip
    return (f"the model {model} and the project {project} have different skeletons "
            f"({'; '.join(missing)}); predict with a model trained on this project's skeleton, "
            "or keep the predictions in a file of their own")  # fmt: skip


def in_project(predictions: PoseArrays, skeleton: sio.Skeleton, videos: list[sio.Video],
               tracks: list[sio.Track], first_id: int, video: int | None = None,
               ) -> PoseArrays:  # fmt: skip
    """``predictions`` in a project's terms, ready to merge into it.

    Columns follow ``skeleton``'s node order by name (check ``skeleton_mismatch`` first); rows
    index ``videos`` (all ``video`` when given) and the project's ``tracks`` by name, tracks it
    lacks appended to the returned ``tracks`` (for the caller to add to the project); instance
    ids start at ``first_id``, above every id of the project, so a user instance's link to the
    prediction it was made from cannot land on a new one.
    """
    columns = [predictions.skeleton.node_names.index(name) for name in skeleton.node_names]
    known = {t.name for t in tracks}
    new_tracks = {t.name: t for t in predictions.tracks if t.name not in known}
    merged_tracks = list(tracks) + list(new_tracks.values())
    index = {t.name: i for i, t in reversed(list(enumerate(merged_tracks)))}  # first name wins
    track_map = np.array([index[t.name] for t in predictions.tracks] + [-1], np.int32)
    n = len(predictions)
    return attrs.evolve(
        predictions,
        skeleton=skeleton,
        videos=list(videos),
        tracks=merged_tracks,
        instance_id=first_id + np.arange(n, dtype=np.int64),
        video=predictions.video if video is None else np.full(n, video, np.int32),
        track=track_map[predictions.track],  # -1 (untracked) picks the appended -1
        **{
            name: getattr(predictions, name)[:, columns]
            for name in ("xy", "visible", "complete", "point_score")
        },  # fmt: skip
    )
