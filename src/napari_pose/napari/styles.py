"""How pose layers look: user labels in full colour, predictions muted, as SLEAP draws them.

A user must tell at a glance which points they placed (and vouch for) from those a model
guessed: SLEAP draws predicted instances smaller, greyer and fainter. Every Points and skeleton
Vectors layer of a pose project takes its style from here, whether the reader, the *Predict*
dock or a merge made it, so the two kinds always look the way this module says.
"""

from __future__ import annotations

from typing import Any

import attrs
import numpy as np

#: Categorical palette shared by node faces, track borders, edges and trajectories.
PALETTE = np.array(
    [
        [0.12, 0.47, 0.71, 1], [1.00, 0.50, 0.05, 1], [0.17, 0.63, 0.17, 1],
        [0.84, 0.15, 0.16, 1], [0.58, 0.40, 0.74, 1], [0.55, 0.34, 0.29, 1],
        [0.89, 0.47, 0.76, 1], [0.50, 0.50, 0.50, 1], [0.74, 0.74, 0.13, 1],
        [0.09, 0.75, 0.81, 1],
    ]
)  # fmt: skip
#: The grey that predicted node faces fade toward.
GREY = np.array([0.6, 0.6, 0.6, 1.0])


def palette(n: int) -> np.ndarray:
    """``n`` RGBA colours from the categorical palette, repeating when ``n`` exceeds it."""
    return PALETTE[np.arange(n) % len(PALETTE)]


@attrs.frozen
class PoseStyle:
    """The look of one kind of pose layer (user labels or predictions) and its skeleton.

    Sizes are fractions of the image height, so points and edges look alike on a 64-pixel crop
    and a 2048-pixel frame; each has a floor in screen-independent data pixels so that small
    images still show them.

    Attributes:
        point_size: Point diameter per pixel of image height.
        min_point_size: Smallest point diameter (data pixels).
        border_width: Border (the track's colour) relative to the point size.
        opacity: Opacity of the Points layer.
        grey: How far node colours fade toward grey, 0 (full colour) to 1 (grey).
        edge_width: Skeleton line width per pixel of image height.
        min_edge_width: Thinnest skeleton line (data pixels).
        edge_opacity: Opacity of the skeleton Vectors layer.
    """

    point_size: float
    min_point_size: float
    border_width: float
    opacity: float
    grey: float
    edge_width: float
    min_edge_width: float
    edge_opacity: float


#: User labels: full colour, opaque, the track's colour as a thick border.
USER = PoseStyle(point_size=1 / 100, min_point_size=4.0, border_width=0.15, opacity=1.0,
                 grey=0.0, edge_width=1 / 400, min_edge_width=1.0, edge_opacity=0.8)  # fmt: skip
#: Predictions: smaller, greyer, fainter, thinner borders and skeleton lines, so the labels
#: drawn over them stay readable and a correction stands out from what it corrects.
PREDICTED = PoseStyle(point_size=0.7 / 100, min_point_size=3.0, border_width=0.08, opacity=0.6,
                      grey=0.5, edge_width=0.6 / 400, min_edge_width=0.6,
                      edge_opacity=0.45)  # fmt: skip


def style(predicted: bool) -> PoseStyle:
    """The style of a predictions layer or of a user labels layer."""
    return PREDICTED if predicted else USER


def node_colors(n_nodes: int, predicted: bool) -> np.ndarray:
    """Face colours of the nodes: the palette, faded toward grey for predictions."""
    fade = style(predicted).grey
    return (1 - fade) * palette(n_nodes) + fade * GREY


def symbols(visible: np.ndarray) -> np.ndarray:
    """A symbol per point: a disc when visible, a ring when occluded (as SLEAP saves it)."""
    return np.where(np.asarray(visible, bool), "disc", "ring")


def points_style(predicted: bool, n_nodes: int, image_height: float) -> dict[str, Any]:
    """Keyword arguments of ``add_points`` that draw a layer of this kind (not its colours by
    track or its symbols, which follow its points)."""
    look = style(predicted)
    return {
        "face_color_cycle": node_colors(n_nodes, predicted),
        "border_width": look.border_width,
        "size": max(look.min_point_size, image_height * look.point_size),
        "opacity": look.opacity,
    }


def edges_style(predicted: bool, image_height: float) -> dict[str, Any]:
    """Keyword arguments of ``add_vectors`` that draw a skeleton layer of this kind."""
    look = style(predicted)
    return {
        "edge_width": max(look.min_edge_width, image_height * look.edge_width),
        "opacity": look.edge_opacity,
    }
