"""Predict many videos at once on a ``dask.distributed`` cluster.

Each input video is one task: a worker loads the model package (from a path every worker can
read), streams the video through ``inference.predict_video`` and sends back ``PoseArrays``
(plain arrays and the skeleton), which the client gathers into one ``Labels``. By default
the cluster is a ``LocalCluster`` on this machine (one single-threaded worker process per
core, up to the number of videos); give
``scheduler`` the address of an existing one (e.g. started with dask-jobqueue on SLURM) to
spread the videos over many nodes. Results are identical to a single-process run: the same
frames go through the same model, only on different processes.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import sleap_io as sio

from napari_pose.core.errors import PoseWarning, VideoFileError
from napari_pose.core.pose_arrays import PoseArrays, concat
from napari_pose.core.video import open_video
from napari_pose.nn.inference import (
    Crowding,
    PredictConfig,
    Predictor,
    predict_video,
    predictions_to_arrays,
)


def predict_one(video: sio.Video | str, model_dir: str | Path, config: PredictConfig,
                frames: Sequence[int] | None = None, threads: int | None = None,
                progress: Callable[[int, int], None] | None = None,
                axes: str | None = None, crowding: Crowding | None = None) -> PoseArrays:  # fmt: skip
    """Predict one video (its ``frames`` that exist, ``frames_in_video``; default all) with the
    package at ``model_dir``. Rows have video index 0 and no video objects: the caller knows
    the videos. ``progress(done, total)`` is called after each batch. ``axes`` replaces a TIFF
    stack's recorded axes (``open_video``), which decides the planes that are frames. Frames
    that held more animals than the limit are counted into ``crowding`` when given, else
    reported in a ``PoseWarning`` (``predict_video``)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    predictor = Predictor.load(model_dir, config)
    results = []
    with open_video(video, grayscale=predictor.channels == 1, axes=axes) as reader:
        wanted = frames_in_video(frames, len(reader), reader.path)
        for indices, predictions in predict_video(predictor, reader, wanted, crowding=crowding):
            results += [(0, int(i), p) for i, p in zip(indices, predictions, strict=True)]
            if progress is not None:
                progress(len(results), len(wanted))
    return predictions_to_arrays(predictor.skeleton, [], results)


def frames_in_video(frames: Sequence[int] | None, n_frames: int, path: Path) -> Sequence[int]:
    """The ``frames`` (default: all) that the video ``path`` of ``n_frames`` frames has.

    Frames asked for that it lacks are a ``PoseWarning`` saying how many were cut; if it has
    none of them, a ``VideoFileError`` naming its length: an empty result would look like a
    model that found nothing.
    """
    if frames is None:
        return range(n_frames)
    asked = np.asarray(frames, dtype=np.int64)
    inside = asked[(asked >= 0) & (asked < n_frames)]
    if not len(inside):
        span = f" ({asked.min()}-{asked.max()})" if len(asked) else ""
        raise VideoFileError(
            path, f"has {n_frames} frames (0-{n_frames - 1}); none of the frames asked for"
            f"{span} is among them",
        )  # fmt: skip
    if len(inside) < len(asked):
        warnings.warn(
            f"{path}: {len(asked) - len(inside)} of the {len(asked)} frames asked for are not in "
            f"the video ({n_frames} frames, 0-{n_frames - 1}); predicting the other {len(inside)}",
            PoseWarning,
            stacklevel=2,
        )
    return inside.tolist()


def _predict_reporting(*args, **kwargs) -> tuple[PoseArrays, list[str], Crowding]:
    """``predict_one`` on a cluster worker, returning its ``PoseWarning``s (a worker's own
    warnings go to its log, which the user never sees) and its count of frames that held more
    animals than the limit, which the client adds up into one warning for the whole run."""
    crowding = Crowding()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PoseWarning)
        arrays = predict_one(*args, **{**kwargs, "crowding": crowding})
    messages = [str(w.message) for w in caught if issubclass(w.category, PoseWarning)]
    return arrays, messages, crowding


def predict_videos(
    videos: Sequence[sio.Video],
    model_dir: str | Path,
    config: PredictConfig | None = None,
    frames: range | None = None,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    axes: str | None = None,
) -> PoseArrays:
    """Predicted instances of every video, one cluster task per video.

    ``scheduler``: address of an existing dask scheduler; otherwise a ``LocalCluster`` of
    ``workers`` processes (default: one per core, at most one per video) is started and
    closed. ``progress(done, total)`` is called as videos finish. ``axes`` replaces the
    recorded axes of every video, which must then all be TIFF stacks (``open_video``). Frames
    that held more animals than the limit are reported in one ``PoseWarning`` for all videos.
    """
    from dask.distributed import Client, LocalCluster, as_completed

    from napari_pose.nn.package import load_package

    config = config or PredictConfig()
    load_package(model_dir)  # fails early, here, on a bad model folder
    model_dir = str(Path(model_dir).resolve())
    videos = list(videos)
    if scheduler is not None:
        client, cluster = Client(scheduler), None
        threads = None
    else:
        n = workers or max(1, min(len(videos), os.cpu_count() or 1))
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=None)  # fmt: skip
        client = Client(cluster)
        threads = max(1, (os.cpu_count() or 1) // n)
    try:
        futures = {
            client.submit(
                _predict_reporting,
                video,
                model_dir,
                config,
                frames,
                threads,
                axes=axes,
                pure=False,
            ): i
            for i, video in enumerate(videos)
        }
        parts: dict[int, PoseArrays] = {}
        crowding = Crowding()
        for done, future in enumerate(as_completed(futures), start=1):
            index = futures[future]
            part, messages, crowded = future.result()
            for message in messages:
                warnings.warn(message, PoseWarning, stacklevel=2)
            crowding.add(crowded)
            parts[index] = attrs.evolve(part, videos=videos,
                                        video=np.full(len(part), index, np.int32))  # fmt: skip
            if progress is not None:
                progress(done, len(videos))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    crowding.warn()
    return concat([parts[i] for i in range(len(videos))])
