"""Labels <-> napari layer data, without a viewer: lossless, vectorised, windowed for big files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sleap_io as sio
from test_pose_arrays import FILES, _project_with_everything, assert_arrays_equal

from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari.convert import (
    POSE_KEY,
    WINDOW_HALF_WIDTH,
    labels_to_layers,
    layers_to_labels,
    points_to_arrays,
    skeleton_edges,
)


def _points(layers):
    return [(d, kw) for d, kw, kind in layers if kind == "points"]


def _round_trip(layers):
    return layers_to_labels([(d, {"metadata": kw["metadata"], "features": kw["features"]})
                             for d, kw in _points(layers)])  # fmt: skip


@pytest.mark.parametrize("name", FILES)
def test_round_trip_real_files(data_dir, name):
    labels = sio.load_slp(data_dir / name, lazy=True, open_videos=False)
    back = _round_trip(labels_to_layers(labels))
    assert_arrays_equal(labels_to_arrays(labels), labels_to_arrays(back))
    assert [t.name for t in back.tracks] == [t.name for t in labels.tracks]
    assert back.skeletons[0].edge_inds == labels.skeletons[0].edge_inds


def test_layers_of_clip(data_dir):
    labels = sio.load_slp(data_dir / "sleap/tracks/clip.slp", lazy=True, open_videos=False)
    layers = labels_to_layers(labels, window_threshold=10**9)  # every frame in the layer
    kinds = [(kw["name"], kind) for _, kw, kind in layers]
    assert kinds == [("clip labels", "points"), ("clip labels skeleton", "vectors"),
                     ("clip tracks", "tracks")]  # fmt: skip
    data, kw = _points(layers)[0]
    arrays = labels_to_arrays(labels)
    assert len(data) == np.isfinite(arrays.xy[..., 0]).sum()
    features = kw["features"]
    assert list(features["node"].cat.categories) == labels.skeletons[0].node_names
    assert set(features["track"]) == {"female", "male"}
    # Point (frame, y, x) equals the instance's node coordinates.
    row = np.flatnonzero((features["node"] == "head").to_numpy() & (data[:, 0] == 1234))[0]
    inst = arrays.select(arrays.instance_id == features["instance"][row])
    np.testing.assert_array_equal(data[row, 1:], inst.xy[0, 0, ::-1])
    assert kw["face_color"] == "node" and kw["border_color"] == "track"

    tracks_data = layers[2][0]
    assert tracks_data.shape == (3000, 4) and set(tracks_data[:, 0]) == {0, 1}


def test_occluded_points_survive_and_look_different():
    labels = _project_with_everything()
    layers = labels_to_layers(labels)
    user = _points(layers)[0][1]
    assert user["features"]["visible"].tolist() == [True, False, True]
    assert list(user["symbol"]) == ["disc", "ring", "disc"]
    back = _round_trip(layers)
    assert_arrays_equal(labels_to_arrays(labels), labels_to_arrays(back))
    assert back.labeled_frames[0].user_instances[0].from_predicted is not None


def test_skeleton_edges_connect_the_right_points(data_dir):
    labels = sio.load_slp(data_dir / "sleap/tracks/clip.slp", lazy=True, open_videos=False)
    data, kw = _points(labels_to_layers(labels, window_threshold=10**9))[0]
    binding = kw["metadata"][POSE_KEY]
    vectors, colors = skeleton_edges(data, kw["features"], binding)
    edges_ok = np.isfinite(binding.arrays.xy[:, labels.skeletons[0].edge_inds, 0]).all(axis=-1)
    assert len(vectors) == edges_ok.sum()  # every drawable edge of every frame
    on_500 = vectors[:, 0, 0] == 500
    vectors, colors = vectors[on_500], colors[on_500]
    arrays = binding.arrays.select(binding.arrays.frame == 500)
    edges = np.array(labels.skeletons[0].edge_inds)
    ok = np.isfinite(arrays.xy[:, edges[:, 0], 0]) & np.isfinite(arrays.xy[:, edges[:, 1], 0])
    assert len(vectors) == ok.sum() == len(colors)
    assert np.all(vectors[:, 0, 0] == 500) and np.all(vectors[:, 1, 0] == 0)
    starts = {tuple(p) for p in arrays.xy[:, edges[:, 0]][ok][:, ::-1]}
    ends = {tuple(p) for p in arrays.xy[:, edges[:, 1]][ok][:, ::-1]}
    assert {tuple(v) for v in vectors[:, 0, 1:]} == starts
    assert {tuple(v) for v in (vectors[:, 0, 1:] + vectors[:, 1, 1:])} == ends


def test_stack_planes_round_trip():
    """Frames of a (t, z) stack are its planes in C order: points get (t, z, y, x)."""
    labels = _project_with_everything()  # labelled on frame 7
    layers = labels_to_layers(labels, plane_shapes={0: (4, 3)})
    data, kw = _points(layers)[0]
    assert data.shape[1] == 4 and np.all(data[:, :2] == [2, 1])  # 7 = 2 * 3 + 1
    assert_arrays_equal(labels_to_arrays(labels), labels_to_arrays(_round_trip(layers)))


def test_windowed_layer_holds_window_and_saves_everything(data_dir):
    labels = sio.load_slp(data_dir / "sleap/tracks/clip.slp", lazy=True, open_videos=False)
    layers = labels_to_layers(labels, window_threshold=1000)
    data, kw = _points(layers)[0]
    binding = kw["metadata"][POSE_KEY]
    last = WINDOW_HALF_WIDTH  # the window around frame 0 is frames 0..WINDOW_HALF_WIDTH
    assert binding.window == (0, last + 1) and data[:, 0].max() == last

    # Edit inside the window: move one point, delete one instance, add a new instance.
    features = kw["features"].copy()
    data = data.copy()
    data[0, 1:] += 5
    gone = features["instance"][len(features) // 2]
    keep = (features["instance"] != gone).to_numpy()
    data, features = data[keep], features[keep].reset_index(drop=True)
    new_row = pd.DataFrame([{**kw["feature_defaults"], "node": "head"}]).astype(
        {"node": features["node"].dtype, "track": features["track"].dtype}
    )
    data = np.vstack([data, [[42, 10.0, 20.0]]])
    features = pd.concat([features, new_row], ignore_index=True)
    saved = binding.merged(data, features)  # what a save writes, with ids kept to compare
    written = layers_to_labels([(data, {"metadata": kw["metadata"], "features": features})])

    original = labels_to_arrays(labels)
    assert len(saved) == len(original) == len(labels_to_arrays(written))  # one gone, one new
    assert not np.isin(gone, saved.instance_id)
    outside = original.frame > last
    np.testing.assert_array_equal(saved.select(saved.frame > last).xy, original.select(outside).xy)
    new = saved.select(~np.isin(saved.instance_id, original.instance_id))
    assert new.frame.tolist() == [42] and new.xy[0, 0].tolist() == [20.0, 10.0]
    moved = saved.select(saved.instance_id == kw["features"]["instance"][0])
    node = kw["features"]["node"].cat.codes[0]
    assert (
        moved.xy[0, node].tolist()
        == (
            original.select(original.instance_id == kw["features"]["instance"][0]).xy[0, node] + 5
        ).tolist()
    )


def test_points_without_known_node_are_rejected():
    labels = _project_with_everything()
    data, kw = _points(labels_to_layers(labels))[0]
    features = kw["features"].copy()
    features["node"] = pd.Categorical(
        [None] * len(features), categories=features["node"].cat.categories
    )
    with pytest.raises(ValueError, match="node"):
        points_to_arrays(data, features, kw["metadata"][POSE_KEY])
