"""npe2 writers: the selected pose layers saved as SLEAP, DeepLabCut or analysis files.

napari hands writers plain ``(data, attributes, layer_type)`` tuples; the Points layers among
them carry their project in ``metadata``, so ``layers_to_labels`` rebuilds the whole ``Labels``
(every frame, also of windowed layers) and ``save_labels`` writes it atomically.
"""

from __future__ import annotations

from typing import Any

from napari_pose.core.io import save_labels
from napari_pose.napari.convert import layers_to_labels

FullLayerData = tuple[Any, dict[str, Any], str]


def _points(layer_data: list[FullLayerData]) -> list[tuple[Any, dict[str, Any]]]:
    return [(data, meta) for data, meta, kind in layer_data if kind == "points"]


def write_slp(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as SLEAP ``.slp`` (opens in SLEAP and sleap-io)."""
    save_labels(layers_to_labels(_points(layer_data)), path, format="slp")
    return [path]


def write_dlc(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as DeepLabCut ``CollectedData`` (``.csv`` or ``.h5``)."""
    save_labels(layers_to_labels(_points(layer_data)), path, format="dlc")
    return [path]


def write_analysis_h5(path: str, layer_data: list[FullLayerData]) -> list[str]:
    """Save as a SLEAP analysis HDF5 file (tracks x nodes x frames arrays)."""
    save_labels(layers_to_labels(_points(layer_data)), path, format="analysis_h5")
    return [path]
