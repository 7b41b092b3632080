"""User labels and predictions look different in a real viewer, as SLEAP draws them."""

from __future__ import annotations

import numpy as np
import pytest

from napari_pose.napari.convert import EDGES_KEY, POSE_KEY

pytestmark = pytest.mark.gui


def _chroma(colors: np.ndarray) -> np.ndarray:
    """How far each RGBA colour is from grey (0 for a grey)."""
    return np.ptp(np.asarray(colors)[:, :3], axis=1)


def _layers(viewer, predicted: bool):
    """The non-empty Points layer of that kind, and its skeleton Vectors layer."""
    (points,) = [layer for layer in viewer.layers if POSE_KEY in layer.metadata
                 and layer.metadata[POSE_KEY].predicted == predicted and len(layer.data)]  # fmt: skip
    binding = points.metadata[POSE_KEY]
    (edges,) = [layer for layer in viewer.layers if layer.metadata.get(EDGES_KEY) is binding]
    return points, edges


def test_predictions_are_smaller_greyer_and_fainter_than_user_labels(make_napari_viewer,
                                                                     sleap_dir):  # fmt: skip
    viewer = make_napari_viewer()
    for name in ("clip.slp", "clip.predictions.slp"):  # the same two flies, labelled, predicted
        viewer.open(str(sleap_dir / "tracks" / name), plugin="napari-pose")

    for frame in (0, 700):  # and after both windows have moved (their points were replaced)
        viewer.dims.set_current_step(0, frame)
        user, user_edges = _layers(viewer, predicted=False)
        predicted, predicted_edges = _layers(viewer, predicted=True)
        assert predicted.size.max() < user.size.min()
        assert predicted.border_width.max() < user.border_width.min()
        assert 0.3 <= predicted.opacity < user.opacity == 1
        # The same node, in its colour for the user, faded toward grey for the model.
        user_head = user.face_color[(user.features["node"] == "head").to_numpy()]
        predicted_head = predicted.face_color[(predicted.features["node"] == "head").to_numpy()]
        assert _chroma(predicted_head).max() < 0.75 * _chroma(user_head).min()
        assert np.all(np.argmax(predicted_head[:, :3], 1) == np.argmax(user_head[0, :3]))
        assert predicted_edges.opacity < user_edges.opacity
        assert np.max(predicted_edges.edge_width) < np.min(user_edges.edge_width)


def test_predictions_stay_grey_after_a_node_edit_and_a_video_names_its_frame_axis(
    make_napari_viewer, qtbot, sleap_dir, tmp_path
):
    from gui import press

    viewer = make_napari_viewer()
    for name in ("clip.predictions.slp", "clip.mp4"):  # a copy: the node edit is autosaved
        (tmp_path / name).write_bytes((sleap_dir / "tracks" / name).read_bytes())
    viewer.open(str(tmp_path / "clip.predictions.slp"), plugin="napari-pose")
    predicted, _ = _layers(viewer, predicted=True)
    grey = _chroma(predicted.face_color_cycle).max()
    _, skeleton = viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton")
    assert skeleton.layer.value is not None  # the project's (empty) user labels layer
    skeleton.node.value, skeleton.node_name.value = "head", "Head"
    press(qtbot, skeleton.node_buttons["rename"])
    assert predicted.metadata[POSE_KEY].arrays.skeleton.node_names[0] == "Head"
    assert _chroma(predicted.face_color_cycle).max() == pytest.approx(grey)

    viewer.open(str(sleap_dir / "tracks" / "clip.mp4"), plugin="napari-pose")
    assert viewer.layers[-1].axis_labels == ("frame", "y", "x")
