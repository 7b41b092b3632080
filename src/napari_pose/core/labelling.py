"""Labelling edits on a table of points, as a Points layer holds them (no napari here).

A *point table* is ``(data, features)``: ``data`` is ``(n, D)`` coordinates whose first ``D - 2``
columns locate the image plane (frame, or time and z) and whose last two are ``(y, x)``;
``features`` has one row per point with at least ``instance``, ``node`` (categorical, skeleton
order), ``track`` (categorical), ``visible``, ``predicted`` and ``from_predicted`` (see
``napari.convert``). Every edit here is a pure function returning a new table, so the GUI can
keep the previous one for undo and the tests can check each edit without a viewer.

Invariant kept by every edit: at most one point per (instance, node, plane).
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import numpy as np
import pandas as pd


class PointTable(NamedTuple):
    """A Points layer's coordinates and features."""

    data: np.ndarray
    features: pd.DataFrame

    @property
    def n_lead(self) -> int:
        """How many leading columns locate the plane (1 for ``(frame, y, x)``)."""
        return self.data.shape[1] - 2

    def on_plane(self, plane: tuple[int, ...]) -> np.ndarray:
        """Boolean mask of the points on ``plane`` (e.g. ``(frame,)`` or ``(t, z)``)."""
        if not len(self.data):
            return np.zeros(0, bool)
        return np.all(np.round(self.data[:, : self.n_lead]) == np.asarray(plane), axis=1)

    def take(self, rows: np.ndarray) -> PointTable:
        return PointTable(self.data[rows], self.features.iloc[rows].reset_index(drop=True))


def concat(table: PointTable, data: np.ndarray, features: pd.DataFrame) -> PointTable:
    """``table`` with rows appended; categorical columns keep their categories."""
    features = features.astype(table.features.dtypes.to_dict())
    return PointTable(
        np.vstack([table.data, data]) if len(table.data) else np.asarray(data, float),
        pd.concat([table.features, features], ignore_index=True),
    )


def next_instance_id(*tables: PointTable, floor: int = 0) -> int:
    """An id no point of ``tables`` uses (and at least ``floor``, e.g. past saved instances)."""
    used = [int(t.features["instance"].max()) for t in tables if len(t.features)]
    return max([floor - 1, *used]) + 1


def placed_nodes(table: PointTable, instance: int, plane: tuple[int, ...]) -> np.ndarray:
    """Node codes (skeleton order) of ``instance`` already placed on ``plane``."""
    rows = table.on_plane(plane) & (table.features["instance"].to_numpy() == instance)
    return np.sort(table.features["node"].cat.codes.to_numpy()[rows])


def next_unplaced(table: PointTable, instance: int, plane: tuple[int, ...], after: int,
                  n_nodes: int) -> int | None:  # fmt: skip
    """The first node after ``after`` (wrapping around) not yet placed, or None when complete."""
    placed = set(placed_nodes(table, instance, plane).tolist())
    for step in range(1, n_nodes + 1):
        node = (after + step) % n_nodes
        if node not in placed:
            return node
    return None


def place(table: PointTable, plane: tuple[int, ...], yx: tuple[float, float], instance: int,
          node: int, defaults: dict) -> PointTable:  # fmt: skip
    """Put ``node`` of ``instance`` at ``yx`` on ``plane``: moves it if placed, adds it if not.

    A new point takes the instance's other features (track, scores) from its existing points,
    or ``defaults`` for a new instance. Placing by hand makes the point visible and complete.
    """
    features = table.features
    mine = table.on_plane(plane) & (features["instance"].to_numpy() == instance)
    same = mine & (features["node"].cat.codes.to_numpy() == node)
    if same.any():
        data = table.data.copy()
        data[same, -2:] = yx
        features = features.copy()
        features.loc[same, ["visible", "complete"]] = True
        return PointTable(data, features)
    template = features[mine].iloc[:1] if mine.any() else pd.DataFrame([defaults])
    row = template.copy().reset_index(drop=True)
    row["instance"] = instance
    row["node"] = pd.Categorical.from_codes([node], categories=features["node"].cat.categories)
    row[["visible", "complete"]] = True
    row["score"] = np.nan
    return concat(table, np.array([[*plane, *yx]], float), row)


def delete_instance(table: PointTable, instance: int, plane: tuple[int, ...]) -> PointTable:
    """``table`` without the points of ``instance`` on ``plane``."""
    gone = table.on_plane(plane) & (table.features["instance"].to_numpy() == instance)
    return table.take(np.flatnonzero(~gone))


def toggle_visible(table: PointTable, instance: int, node: int,
                   plane: tuple[int, ...]) -> PointTable:  # fmt: skip
    """Mark ``node`` of ``instance`` occluded (kept, not deleted), or visible again."""
    features = table.features
    rows = (table.on_plane(plane) & (features["instance"].to_numpy() == instance)
            & (features["node"].cat.codes.to_numpy() == node))  # fmt: skip
    if not rows.any():
        return table
    features = features.copy()
    features.loc[rows, "visible"] = ~features.loc[rows, "visible"].to_numpy(bool)
    return PointTable(table.data, features)


def set_track(table: PointTable, instance: int, track: str, plane: tuple[int, ...]) -> PointTable:
    """Give ``instance`` (its points on ``plane``) the track named ``track`` (a category)."""
    features = table.features.copy()
    rows = table.on_plane(plane) & (features["instance"].to_numpy() == instance)
    if track not in features["track"].cat.categories:
        features["track"] = features["track"].cat.add_categories([track])
    features.loc[rows, "track"] = track
    return PointTable(table.data, features)


def copy_instances(source: PointTable, source_plane: tuple[int, ...], target: PointTable,
                   target_plane: tuple[int, ...], first_id: int,
                   from_predicted: bool = False) -> PointTable:  # fmt: skip
    """``target`` plus every instance of ``source`` on ``source_plane``, moved to ``target_plane``.

    Copies get new instance ids from ``first_id`` on. Copying predictions makes user instances
    that remember the prediction they came from (``from_predicted``), as SLEAP does.
    """
    rows = source.on_plane(source_plane)
    if not rows.any():
        return target
    data = source.data[rows].copy()
    data[:, : source.n_lead] = target_plane
    features = source.features[rows].reset_index(drop=True).copy()
    ids, new = np.unique(features["instance"].to_numpy(), return_inverse=True)
    if from_predicted:
        features["from_predicted"] = features["instance"].to_numpy()
        features["score"] = np.nan
        features["instance_score"] = np.nan
        features["complete"] = False
    features["instance"] = first_id + new
    features["predicted"] = False
    return concat(target, data, features)


def previous_labelled_plane(table: PointTable, plane: tuple[int, ...],
                            direction: int = -1) -> tuple[int, ...] | None:  # fmt: skip
    """The nearest labelled plane before (``direction=-1``) or after (``+1``) ``plane``."""
    if not len(table.data):
        return None
    planes = np.unique(np.round(table.data[:, : table.n_lead]).astype(np.int64), axis=0)
    keys = [tuple(p) for p in planes]
    here = tuple(int(v) for v in plane)
    candidates = [k for k in keys if (k < here if direction < 0 else k > here)]
    if not candidates:
        return None
    return max(candidates) if direction < 0 else min(candidates)


class History:
    """Bounded undo stack of point tables (a table of a windowed layer copies in milliseconds)."""

    def __init__(self, depth: int = 100) -> None:
        self._undo: deque[PointTable] = deque(maxlen=depth)

    def push(self, table: PointTable) -> None:
        """Remember ``table`` as it was before an edit."""
        self._undo.append(PointTable(table.data.copy(), table.features.copy()))

    def pop(self) -> PointTable | None:
        """The table before the last edit, or None when there is nothing to undo."""
        return self._undo.pop() if self._undo else None

    def __len__(self) -> int:
        return len(self._undo)
