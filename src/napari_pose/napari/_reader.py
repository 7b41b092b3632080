"""npe2 readers: pose projects, videos, TIFF stacks and image folders.

Each ``get_*_reader`` looks at the path (extension and, for ambiguous ones such as ``.h5`` or
``.csv``, the content) and returns a reader or ``None`` so napari can offer other plugins.
Readers never crash napari: a bad file raises one ``PoseFileError`` naming the file and the
problem, which napari shows as a notification; a missing video only warns, and the labels
still open.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sleap_io as sio

from napari_pose.core.errors import MissingVideoError, PoseFileError
from napari_pose.core.io import detect_labels_format, load_labels, missing_videos
from napari_pose.core.stacks import StackPlaneReader, open_tiff, planes_to_dask
from napari_pose.core.video import (
    IMAGE_SUFFIXES,
    MEDIA_SUFFIXES,
    STACK_SUFFIXES,
    open_video,
    video_to_dask,
)
from napari_pose.napari.convert import LayerData, labels_to_layers, video_name
from napari_pose.napari.session import projects_of_current_viewer

Reader = Callable[[Any], list[LayerData]]

#: Axes of a video or image folder, so that napari's slider says "frame".
FRAME_AXES = ("frame", "y", "x")


def _single_path(path: Any) -> Path | None:
    """napari passes a path or a list of paths; we read one file at a time."""
    if isinstance(path, (list, tuple)):
        return Path(path[0]) if len(path) == 1 else None
    return Path(path)


def _path_to_read(path: Any) -> Path:
    """The one path a reader was given (its ``get_*_reader`` turned several down)."""
    single = _single_path(path)
    if single is None:
        raise ValueError(f"napari-pose reads one file at a time, not {len(path)}")
    return single


def get_labels_reader(path: Any) -> Reader | None:
    """A reader for SLEAP ``.slp``/``.pkg.slp``, analysis ``.h5`` and DeepLabCut files.

    ``.slp`` and DeepLabCut ``CollectedData_*`` files are ours by name alone, so a broken one
    gets our specific error rather than napari's "no reader found"; other ``.h5``, ``.csv``
    and ``.yaml`` files only when their content is a pose format.
    """
    single = _single_path(path)
    if single is None:
        return None
    ours_by_name = single.suffix.lower() == ".slp" or single.name.startswith("CollectedData_")
    if ours_by_name or detect_labels_format(single) is not None:
        return read_labels
    return None


def read_labels(path: Any) -> list[LayerData]:
    """Layers for a pose project: its videos (lazy), labels, predictions, skeleton and tracks."""
    labels = load_labels(_path_to_read(path))
    return layers_with_videos(labels)


def layers_with_videos(labels: sio.Labels) -> list[LayerData]:
    """Open every video of ``labels`` that can be found, warn about the rest, build layers.

    A TIFF stack is shown with its plane axes, e.g. ``(t, z, y, x)``, read with the axes its
    labels recorded (``open_video``), so each point sits on the plane it was put on.
    """
    images, plane_shapes, plane_axes = {}, {}, {}
    missing = set(missing_videos(labels))
    for v, video in enumerate(labels.videos):
        filename = video.filename if isinstance(video.filename, str) else None
        if filename is not None and filename in missing:
            problem = (
                "video not found where the labels say, beside them or in their parent "
                "folders; locate it in the Pose project widget"
            )
            warnings.warn(str(MissingVideoError(filename, problem)), stacklevel=2)
            continue
        try:
            reader = open_video(video)
        except PoseFileError as error:
            warnings.warn(str(error), stacklevel=2)
            continue
        if isinstance(reader, StackPlaneReader) and reader.plane_axes:
            images[v] = planes_to_dask(reader)
            plane_shapes[v], plane_axes[v] = reader.plane_shape, reader.plane_axes
        else:
            images[v] = video_to_dask(reader)
    projects_of_current_viewer()
    return labels_to_layers(labels, images=images, plane_shapes=plane_shapes,
                            plane_axes=plane_axes)  # fmt: skip


def get_image_reader(path: Any) -> Reader | None:
    """A reader for video files (decoded lazily, frame-accurate) and TIFF stacks (lazy)."""
    single = _single_path(path)
    if single is None:
        return None
    suffix = single.suffix.lower()
    if suffix in MEDIA_SUFFIXES:
        return read_video
    if suffix in STACK_SUFFIXES:
        return read_tiff
    return None


def read_video(path: Any) -> list[LayerData]:
    """One lazy Image layer for a video file; frames decode only when shown."""
    reader = open_video(_path_to_read(path))
    data = video_to_dask(reader)
    rgb = data.ndim == 4
    name = video_name(sio.Video(filename=str(reader.path), open_backend=False))
    kwargs = {"name": name, "rgb": rgb, "contrast_limits": (0, 255), "axis_labels": FRAME_AXES}
    return [(data, kwargs, "image")]


def read_tiff(path: Any) -> list[LayerData]:
    """One lazy Image layer for a (OME-)TIFF stack, with axis names, scale and channels."""
    stack = open_tiff(_path_to_read(path))
    kwargs: dict[str, Any] = {"name": Path(stack.path).name.split(".")[0]}
    axes = stack.axes
    rgb = axes.endswith("S") and stack.data.shape[-1] in (3, 4)
    spatial = axes[:-1] if rgb else axes
    if "C" in spatial:
        kwargs["channel_axis"] = spatial.index("C")
        spatial = spatial.replace("C", "")
    kwargs["rgb"] = rgb
    kwargs["axis_labels"] = tuple(spatial.lower())
    kwargs["scale"] = tuple(stack.scale.get(axis, 1.0) for axis in spatial)
    return [(stack.data, kwargs, "image")]


def get_folder_reader(path: Any) -> Reader | None:
    """A reader for a DeepLabCut project folder or a folder of images (one frame per image)."""
    single = _single_path(path)
    if single is None or not single.is_dir():
        return None
    config = single / "config.yaml"
    if config.is_file() and detect_labels_format(config) is not None:
        return lambda _: read_labels(config)
    if any(p.suffix.lower() in IMAGE_SUFFIXES for p in single.iterdir()):
        return read_image_folder
    return None


def read_image_folder(path: Any) -> list[LayerData]:
    """One lazy Image layer with the folder's images as frames, in natural name order."""
    folder = _path_to_read(path)
    data = video_to_dask(open_video(folder))
    rgb = data.ndim == 4
    kwargs = {
        "name": folder.name,
        "rgb": rgb,
        "contrast_limits": (0, 255),
        "axis_labels": FRAME_AXES,
    }
    return [(data, kwargs, "image")]
