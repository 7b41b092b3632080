"""npe2 writers: pose layers saved as SLEAP, DeepLabCut or analysis files (File > Save).

napari hands writers plain ``(data, attributes, layer_type)`` tuples; the Points layers among
them carry their project in ``metadata``. When they are all of one project open in a viewer, the
project's session saves it whole (every layer, every frame), so File > Save is a save like any
other: the file becomes the project's own and the close guard stops asking. Otherwise
``layers_to_labels`` rebuilds a ``Labels`` from the layers given. Both write atomically.

napari treats a ``ValueError`` from a writer as "not a valid writer" and shows only that, so a
failure leaves here as :class:`SaveError` (an ``OSError``), which napari shows with its message:
the file and the cause.
"""

from __future__ import annotations

from typing import Any

from napari_pose.core.io import save_labels
from napari_pose.napari.convert import POSE_KEY, layers_to_labels
from napari_pose.napari.session import session_of

FullLayerData = tuple[Any, dict[str, Any], str]


class SaveError(OSError):
    """A pose file could not be written; the message names the file and the cause."""


def _write(path: str, layer_data: list[FullLayerData], format: str) -> list[str]:
    points = [(data, meta) for data, meta, kind in layer_data
              if kind == "points" and POSE_KEY in meta.get("metadata", {})]  # fmt: skip
    if not points:
        raise SaveError(f"Could not save {path}: none of the chosen layers holds pose labels")
    labels = {id(meta["metadata"][POSE_KEY].labels): meta["metadata"][POSE_KEY].labels
              for _, meta in points}  # fmt: skip
    if len(labels) > 1:
        raise SaveError(f"Could not save {path}: the chosen layers belong to {len(labels)} "
                        "projects; save one project at a time")  # fmt: skip
    try:
        session = session_of(next(iter(labels.values())))
        if session is not None:
            session.save(
                path, replace=True, format=format
            )  # napari's save dialog asked before replacing
        else:
            save_labels(layers_to_labels(points), path, format=format)
    except (ValueError, OSError) as error:  # PoseFileError is a ValueError
        raise SaveError(f"Could not save {path}: {error}") from error
    return [path]


def write_slp(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as SLEAP ``.slp`` (opens in SLEAP and sleap-io)."""
    return _write(path, layer_data, "slp")


def write_dlc(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as DeepLabCut ``CollectedData`` (``.csv`` or ``.h5``)."""
    return _write(path, layer_data, "dlc")


def write_analysis_h5(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as a SLEAP analysis HDF5 file (tracks x nodes x frames arrays)."""
    return _write(path, layer_data, "analysis_h5")
