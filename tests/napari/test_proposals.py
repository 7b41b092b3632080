"""Predict while labelling (issue 13 item 3): a model's instances as proposals on the frame
stepped to, one prediction at a time, accepted all at once or one by one."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import sleap_io as sio

from napari_pose.core import labelling as lab
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari import proposals as prop
from napari_pose.napari.labelling import unclaimed

# ---------------------------------------------------------------------------- without a viewer


def test_one_prediction_at_a_time_and_older_models_dropped():
    proposer = prop.Proposer()
    assert not proposer.can_start()  # no folder: off
    proposer.set_folder(prop.Path("a"))
    generation = proposer.start(5)
    assert not proposer.can_start() and proposer.in_flight == 5 and 5 in proposer.tried
    assert proposer.finish(generation, None, None) and proposer.can_start()
    old = proposer.start(6)
    proposer.set_folder(prop.Path("b"))  # the model changed while frame 6 was posed
    assert proposer.in_flight == 6 and not proposer.can_start()  # still one at a time
    assert not proposer.finish(old, object(), "boom")  # dropped: neither model nor error kept
    assert proposer.predictor is None and proposer.error is None and proposer.tried == set()
    failed = proposer.start(7)
    assert not proposer.finish(failed, None, "could not propose") and not proposer.active


def _table(rows):
    """A point table of ``(frame, y, x, instance, node, track, from_predicted)`` rows."""
    frame, y, x, instance, node, track, made_from = zip(*rows)
    features = pd.DataFrame({
        "instance": np.array(instance), "node": pd.Categorical.from_codes(node, ["a", "b"]),
        "track": pd.Categorical(track, categories=["", "male", "female"]),
        "from_predicted": np.array(made_from),
    })  # fmt: skip
    return lab.PointTable(np.c_[frame, y, x].astype(float), features)


def test_accept_all_leaves_out_animals_labelled_here():
    predicted = _table([
        (3, 10, 10, 1, 0, "", -1), (3, 20, 20, 1, 1, "", -1),  # accepted before (as 11)
        (3, 50, 50, 2, 0, "male", -1), (3, 60, 60, 2, 1, "male", -1),  # a male is labelled
        (3, 100, 100, 3, 0, "", -1), (3, 110, 110, 3, 1, "", -1),  # labelled by hand (12)
        (3, 200, 200, 4, 0, "", -1), (3, 210, 210, 4, 1, "", -1),  # free
    ])  # fmt: skip
    user = _table([
        (3, 12, 12, 11, 0, "", 1), (3, 0, 0, 13, 0, "male", -1),
        (3, 101, 102, 12, 0, "", -1), (3, 111, 109, 12, 1, "", -1),
        (4, 200, 200, 14, 0, "", -1),  # another frame
    ])  # fmt: skip
    assert unclaimed(predicted, user, (3,)) == [4]
    # Only the plane's user instances count: on frame 4, the one there lies on prediction 4.
    assert unclaimed(predicted, user, (4,)) == [1, 2, 3]


# ---------------------------------------------------------------------------- in a viewer


@pytest.fixture
def sure_model(monkeypatch, tmp_path):
    """The tiny package, loaded to find its animal however unsure it is (two training steps
    find nothing above the usual peak threshold): the proposals' points are not tested."""
    from test_label_widget import _tiny_model

    from napari_pose.nn.inference import PredictConfig, Predictor

    def load(folder):
        config = PredictConfig(batch_size=1, device="cpu", workers=1, peak_threshold=0.0)
        return Predictor.load(folder, config)

    monkeypatch.setattr(prop, "load_model", load)
    (tmp_path / "model_data").mkdir()
    return _tiny_model(tmp_path / "model_data")


@pytest.fixture
def project_with_gap(sample_project):
    """The sample project with frames 5-12 unlabelled."""
    labels = sio.load_slp(sample_project, open_videos=False)
    labels.labeled_frames = [lf for lf in labels.labeled_frames if not 5 <= lf.frame_idx <= 12]
    sio.save_slp(labels, sample_project)
    return sample_project


def _on_frame(layer, frame):
    return np.flatnonzero(np.round(layer.data[:, 0]) == frame)


def test_propose_accept_all_edit_and_save(make_napari_viewer, qtbot, tmp_path, sure_model,
                                          project_with_gap):  # fmt: skip
    from test_label_widget import click, press_key

    viewer = make_napari_viewer()
    viewer.open(str(project_with_gap), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    labeller = widget.labeller
    layer, proposer = labeller.layer, labeller.proposer
    viewer.dims.set_current_step(0, 2)

    widget.propose_model.value = tmp_path  # no model package: said, nothing runs
    assert widget.propose_message.value.startswith("not a model package")
    assert not proposer.active
    widget.propose_model.value = sure_model
    assert widget.propose_message.value == "" and proposer.active
    assert proposer.started == []  # frame 2 is labelled: no proposals
    assert labeller._predictions_layer() is None

    viewer.dims.set_current_step(0, 5)
    assert proposer.in_flight == 5  # the step returned while the model works
    qtbot.waitUntil(lambda: proposer.in_flight is None, timeout=60_000)
    predictions = labeller._predictions_layer()
    assert predictions is not None and len(_on_frame(predictions, 5)) > 0
    assert len(_on_frame(layer, 5)) == 0  # user labels untouched
    assert viewer.layers.selection.active is layer  # keys still go to the labels

    press_key(layer, "Shift-U")
    mine, theirs = _on_frame(layer, 5), _on_frame(predictions, 5)
    assert len(mine) == len(theirs)
    ours = layer.features.iloc[mine]
    proposed = predictions.features.iloc[theirs]
    assert set(ours["from_predicted"]) == set(proposed["instance"])
    assert not ours["predicted"].any()
    order = np.lexsort((ours["node"].cat.codes,)), np.lexsort((proposed["node"].cat.codes,))
    np.testing.assert_allclose(layer.data[mine][order[0]], predictions.data[theirs][order[1]])
    press_key(layer, "Shift-U")  # again: those animals have user instances now
    assert len(_on_frame(layer, 5)) == len(theirs)

    labeller.set_node(0)
    click(viewer, layer, (30.0, 40.0))  # move the accepted instance's first node
    out = tmp_path / "proposed.slp"
    widget.save_labels(out)
    saved = labels_to_arrays(sio.load_slp(out, open_videos=False))
    user = saved.select((saved.frame == 5) & ~saved.predicted)
    assert len(user) == 1 and user.from_predicted[0] >= 0
    np.testing.assert_allclose(user.xy[0, 0], [40.0, 30.0])  # (x, y)
    assert len(saved.select((saved.frame == 5) & saved.predicted)) == 1

    # Five quick steps: one prediction at a time; the frame shown when it ends is next, the
    # frames passed over in between are never posed.
    for frame in range(6, 11):
        viewer.dims.set_current_step(0, frame)
        assert proposer.in_flight == 6  # the first step's prediction still runs
    qtbot.waitUntil(lambda: proposer.in_flight is None, timeout=60_000)
    assert proposer.started == [5, 6, 10]
    assert [len(_on_frame(predictions, f)) > 0 for f in range(6, 11)] == [
        True, False, False, False, True]  # fmt: skip
    viewer.dims.set_current_step(0, 3)  # labelled
    viewer.dims.set_current_step(0, 5)  # proposals accepted: posed already
    assert proposer.in_flight is None and proposer.started == [5, 6, 10]


def test_a_failing_model_is_said_once(make_napari_viewer, qtbot, monkeypatch, tmp_path,
                                      sure_model, project_with_gap):  # fmt: skip
    calls = []

    def broken(folder):
        calls.append(folder)
        raise OSError("weights.pt is\nunreadable")

    monkeypatch.setattr(prop, "load_model", broken)
    viewer = make_napari_viewer()
    viewer.open(str(project_with_gap), plugin="napari-pose")
    _, widget = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    viewer.dims.set_current_step(0, 6)
    widget.propose_model.value = sure_model
    proposer = widget.labeller.proposer
    qtbot.waitUntil(lambda: proposer.in_flight is None, timeout=30_000)
    assert not widget.propose_message.native.isHidden()
    assert widget.propose_message.value.endswith("weights.pt is unreadable")
    viewer.dims.set_current_step(0, 7)
    assert proposer.in_flight is None and len(calls) == 1  # off until a folder is set again
