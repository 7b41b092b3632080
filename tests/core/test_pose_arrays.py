"""Labels <-> PoseArrays: the lazy (raw table) and eager (object) paths agree, and go back."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.pose_arrays import (
    PoseArrays,
    arrays_to_labels,
    concat,
    labels_to_arrays,
    replace_frames,
)

FIELDS = ["instance_id", "video", "frame", "track", "predicted", "score", "tracking_score",
          "from_predicted", "xy", "visible", "complete", "point_score"]  # fmt: skip
FILES = [
    "sleap/tracks/clip.slp",
    "sleap/tracks/clip.predictions.slp",
    "sleap/hdf5_format_v1/centered_pair_predictions.slp",
    "sleap/slp_hdf5/minimal_instance.slp",
    "sleap/slp_hdf5/small_robot_minimal.slp",
]


def assert_arrays_equal(a: PoseArrays, b: PoseArrays, fields=FIELDS) -> None:
    assert len(a) == len(b)
    for name in fields:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@pytest.mark.parametrize("name", FILES)
def test_lazy_and_eager_agree(data_dir, name):
    lazy = sio.load_slp(data_dir / name, lazy=True, open_videos=False)
    eager = sio.load_slp(data_dir / name, open_videos=False)
    a, b = labels_to_arrays(lazy), labels_to_arrays(eager)
    # instance ids are file row numbers for lazy files and enumeration order for eager ones;
    # everything else, including which instance a user instance came from, must agree.
    assert_arrays_equal(a, b, [f for f in FIELDS if f not in ("instance_id", "from_predicted")])
    assert np.array_equal(a.from_predicted >= 0, b.from_predicted >= 0)


def test_values_match_sleap_io_objects(data_dir):
    """Spot-check against sleap-io's own per-instance numpy, frame by frame."""
    labels = sio.load_slp(data_dir / "sleap/tracks/clip.slp", open_videos=False)
    arrays = labels_to_arrays(labels)
    for lf in labels.labeled_frames[::97]:
        rows = arrays.frame_rows(0, lf.frame_idx, lf.frame_idx + 1)
        expected = np.stack([inst.numpy() for inst in lf.instances])
        got = arrays.xy[rows]
        order = np.argsort([labels.tracks.index(inst.track) for inst in lf.instances])
        np.testing.assert_array_equal(got[np.argsort(arrays.track[rows])], expected[order])


def _project_with_everything() -> sio.Labels:
    """A tiny project with every field a round trip must keep."""
    skeleton = sio.Skeleton(["head", "left", "right"], edges=[("head", "left"), ("head", "right")],
                            symmetries=[("left", "right")])  # fmt: skip
    video = sio.Video(filename="movie.mp4", open_backend=False)
    track = sio.Track("mouse")
    pred = sio.PredictedInstance.from_numpy(
        np.array([[10.0, 20], [30, 40], [np.nan, np.nan]]), skeleton,
        point_scores=np.array([0.9, 0.8, 0.0]), score=2.5, track=track, tracking_score=0.7,
    )  # fmt: skip
    user = sio.Instance.from_numpy(np.array([[11.0, 21, 1], [31, 41, 0], [50, 60, 1]]), skeleton,
                                   track=track, from_predicted=pred)  # fmt: skip
    frames = [sio.LabeledFrame(video=video, frame_idx=7, instances=[user, pred])]
    return sio.Labels(frames, videos=[video], skeletons=[skeleton], tracks=[track],
                      suggestions=[sio.SuggestionFrame(video=video, frame_idx=3)])  # fmt: skip


def test_round_trip_keeps_every_field():
    labels = _project_with_everything()
    arrays = labels_to_arrays(labels)
    assert arrays.visible[arrays.predicted == False].tolist() == [[True, False, True]]  # noqa: E712
    back = arrays_to_labels(arrays, template=labels)
    user, pred = (
        back.labeled_frames[0].user_instances[0],
        back.labeled_frames[0].predicted_instances[0],
    )
    assert user.from_predicted is pred
    assert user.points["visible"].tolist() == [True, False, True]  # occluded point kept
    np.testing.assert_array_equal(user.points["xy"], [[11, 21], [31, 41], [50, 60]])
    assert pred.score == 2.5 and pred.tracking_score == pytest.approx(0.7)
    assert back.suggestions[0].frame_idx == 3 and back.skeletons[0].symmetries
    assert_arrays_equal(arrays, labels_to_arrays(back))


def test_concat_select_and_frame_rows(data_dir):
    arrays = labels_to_arrays(sio.load_slp(data_dir / "sleap/tracks/clip.slp", lazy=True,
                                           open_videos=False))  # fmt: skip
    rows = arrays.frame_rows(0, 100, 110)
    assert sorted(set(arrays.frame[rows])) == list(range(100, 110)) and len(rows) == 20
    halves = concat([arrays.select(arrays.frame < 700), arrays.select(arrays.frame >= 700)])
    assert_arrays_equal(halves.sorted(), arrays)


def test_replace_frames_swaps_redone_frames_and_keeps_ids_unique():
    skeleton = sio.Skeleton(["a"])
    videos = [sio.Video("v.mp4")]

    def arrays(frames: list[int]) -> PoseArrays:
        out = PoseArrays.empty(skeleton, videos, [], len(frames))
        xy = np.array(frames, float)[:, None, None].repeat(2, axis=2)
        return attrs.evolve(out, frame=np.array(frames, np.int64), xy=xy,
                            predicted=np.ones(len(frames), bool))  # fmt: skip

    base = attrs.evolve(arrays([1, 2, 3]), xy=np.full((3, 1, 2), -1.0))
    merged = replace_frames(base, arrays([2, 4]))
    assert merged.frame.tolist() == [1, 2, 3, 4]
    assert merged.xy[:, 0, 0].tolist() == [-1, 2, -1, 4]  # frame 2 redone, 1 and 3 kept
    assert len(set(merged.instance_id.tolist())) == 4
