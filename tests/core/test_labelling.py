"""Labelling edits on point tables (core.labelling), checked without a viewer."""

from __future__ import annotations

import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core import labelling as lab
from napari_pose.core.synthetic import make_skeleton
from napari_pose.napari.convert import POSE_KEY, new_project_layers, points_to_arrays


@pytest.fixture
def empty():
    """An empty labels table for a 5-node skeleton on a 10-frame video, as the layer has it."""
    (data, kw, _), _edges = new_project_layers(
        sio.Video(filename="v.mp4", open_backend=False), make_skeleton(), (10,)
    )
    defaults = kw["feature_defaults"]
    return lab.PointTable(data.reshape(0, 3), kw["features"]), defaults, kw["metadata"][POSE_KEY]


def test_sequential_placement_and_uniqueness(empty):
    table, defaults, binding = empty
    node = 0
    for yx in [(10, 10), (20, 20), (30, 30)]:
        table = lab.place(table, (3,), yx, instance=0, node=node, defaults=defaults)
        node = lab.next_unplaced(table, 0, (3,), node, 5)
    assert node == 3 and lab.placed_nodes(table, 0, (3,)).tolist() == [0, 1, 2]
    # Placing node 1 again moves it: still one point per (instance, node, frame).
    table = lab.place(table, (3,), (99, 98), instance=0, node=1, defaults=defaults)
    assert len(table.data) == 3 and table.data[1].tolist() == [3, 99, 98]
    # The same node on another frame is another point.
    table = lab.place(table, (4,), (5, 5), instance=0, node=1, defaults=defaults)
    assert len(table.data) == 4
    arrays = points_to_arrays(table.data, table.features, binding)
    assert sorted(arrays.frame.tolist()) == [3, 4]
    assert arrays.select(arrays.frame == 3).xy[0, 1].tolist() == [98, 99]  # (x, y)


def test_next_unplaced_wraps_and_ends(empty):
    table, defaults, _ = empty
    for node in (0, 2, 3, 4):
        table = lab.place(table, (0,), (1, 1), 0, node, defaults)
    assert lab.next_unplaced(table, 0, (0,), 4, 5) == 1  # wraps to the one gap
    table = lab.place(table, (0,), (1, 1), 0, 1, defaults)
    assert lab.next_unplaced(table, 0, (0,), 1, 5) is None


def test_occlusion_tracks_and_deletion(empty):
    table, defaults, _ = empty
    for inst in (0, 1):
        for node in range(5):
            table = lab.place(table, (2,), (inst * 50 + node, node), inst, node, defaults)
    table = lab.toggle_visible(table, 1, 2, (2,))
    vis = table.features["visible"].to_numpy()
    assert (
        vis.sum() == 9
        and not vis[(table.features["instance"] == 1) & (table.features["node"] == "abdomen")].any()
    )
    assert len(table.data) == 10  # occluded points are kept
    table = lab.set_track(table, 1, "female", (2,))
    assert set(table.features["track"][table.features["instance"] == 1]) == {"female"}
    assert set(table.features["track"][table.features["instance"] == 0]) == {""}
    table = lab.delete_instance(table, 0, (2,))
    assert set(table.features["instance"]) == {1} and len(table.data) == 5


def test_copy_previous_frame_and_predictions(empty):
    table, defaults, _ = empty
    for node in range(5):
        table = lab.place(table, (2,), (node, node), 0, node, defaults)
    assert lab.previous_labelled_plane(table, (5,), -1) == (2,)
    assert lab.previous_labelled_plane(table, (1,), -1) is None
    assert lab.previous_labelled_plane(table, (1,), 1) == (2,)
    copied = lab.copy_instances(table, (2,), table, (3,), first_id=7)
    on3 = copied.on_plane((3,))
    assert on3.sum() == 5 and set(copied.features["instance"][on3]) == {7}
    np.testing.assert_array_equal(copied.data[on3, 1:], table.data[:, 1:])

    predictions = lab.PointTable(
        table.data.copy(),
        table.features.assign(predicted=True, instance=42, score=0.9, instance_score=3.0),
    )
    user = lab.copy_instances(predictions, (2,), empty[0], (2,), first_id=100, from_predicted=True)
    assert set(user.features["from_predicted"]) == {42} and not user.features["predicted"].any()
    assert user.features["score"].isna().all() and set(user.features["instance"]) == {100}


def test_history_restores_previous_tables(empty):
    table, defaults, _ = empty
    history = lab.History(depth=2)
    for node in range(3):
        history.push(table)
        table = lab.place(table, (0,), (node, node), 0, node, defaults)
    assert len(history) == 2
    assert len(history.pop().data) == 2 and len(history.pop().data) == 1
    assert history.pop() is None
