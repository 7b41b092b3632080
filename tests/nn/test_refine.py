"""Refinement along tracks on synthetic trajectories with exact ground truth, and on real poses."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.io import load_labels
from napari_pose.core.pose_arrays import PoseArrays, concat, labels_to_arrays
from napari_pose.nn.refine import RefineConfig, refine_tracks

#: A four-node animal about 47 px across (default jump threshold: about 12 px).
BODY = np.array([[-20.0, 0.0], [20.0, 0.0], [0.0, -10.0], [0.0, 15.0]])
N_FRAMES = 40


def _walk(n_frames: int = N_FRAMES, offset: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``(n_frames, 4, 2)``: the body on a smooth curved path, slowly turning."""
    t = np.arange(n_frames, dtype=float)
    centre = np.stack([200 + 3 * t + 8 * np.sin(t / 6), 150 + 5 * np.cos(t / 8)], axis=1)
    angle = 0.02 * t
    rotation = np.stack([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    body = np.einsum("ijt,kj->tki", rotation, BODY)
    return centre[:, None] + body + np.asarray(offset)


def _tracked(xy: np.ndarray, track: int = 0, frames: np.ndarray | None = None,
             n_tracks: int = 1) -> PoseArrays:  # fmt: skip
    """Predicted instances ``xy`` ``(n, k, 2)`` of one track in consecutive frames (or
    ``frames``), point scores 0.9, NaN points not visible."""
    k = xy.shape[1]
    skeleton = sio.Skeleton([f"n{j}" for j in range(k)])
    tracks = [sio.Track(name=f"track_{i}") for i in range(n_tracks)]
    arrays = PoseArrays.empty(skeleton, [sio.Video(filename="clip.mp4")], tracks, len(xy))
    arrays.frame[:] = np.arange(len(xy)) if frames is None else frames
    arrays.track[:] = track
    arrays.predicted[:] = True
    arrays.score[:] = 0.9
    arrays.xy[:] = xy
    arrays.visible[:] = np.isfinite(xy[..., 0])
    arrays.point_score[:] = np.where(arrays.visible, 0.9, np.nan)
    return arrays


def _two_animals(first: np.ndarray) -> PoseArrays:
    """Track 0 with points ``first``, track 1 the same walk 40 px lower (ids after track 0)."""
    other = _tracked(_walk(offset=(0.0, 40.0)), track=1, n_tracks=2)
    other.instance_id += N_FRAMES
    return concat([_tracked(first, n_tracks=2), other])


def test_a_node_on_another_animal_for_two_frames_comes_back():
    truth = _walk()
    xy = truth.copy()
    below = _walk(offset=(0.0, 40.0))
    xy[20:22, 2] = below[20:22, 2]  # node 2 jumps onto the animal 40 px below, and back
    arrays = _two_animals(xy)
    refined = refine_tracks(arrays)
    mine = refined.track == 0
    np.testing.assert_allclose(refined.xy[mine][20:22, 2], truth[20:22, 2], atol=1.0)
    assert refined.visible.all()
    assert (refined.point_score[mine][20:22, 2] < 0.9).all()  # refilled, marked doubtful
    unchanged = np.ones(refined.xy.shape[:2], bool)
    unchanged[20:22, 2] = False
    np.testing.assert_array_equal(refined.xy[unchanged], arrays.xy[unchanged])


def test_a_two_frame_gap_is_filled_and_a_long_one_is_not():
    truth = _walk()
    xy = truth.copy()
    xy[10:12, 1] = np.nan
    xy[25:30, 3] = np.nan  # 5 frames: longer than max_gap
    refined = refine_tracks(_tracked(xy))
    np.testing.assert_allclose(refined.xy[10:12, 1], truth[10:12, 1], atol=1.0)
    assert refined.visible[10:12, 1].all()
    np.testing.assert_allclose(refined.point_score[10:12, 1], 0.45)
    assert np.isnan(refined.xy[25:30, 3]).all() and not refined.visible[25:30, 3].any()
    assert np.isnan(refined.point_score[25:30, 3]).all()


def test_frames_without_the_track_stay_empty():
    truth = _walk()
    frames = np.delete(np.arange(N_FRAMES), [30, 31])
    xy = truth[frames].copy()
    xy[frames == 29, 0] = np.nan  # a gap of 3 frames, two of them without the animal
    arrays = _tracked(xy, frames=frames)
    refined = refine_tracks(arrays)
    assert len(refined) == len(arrays)
    np.testing.assert_array_equal(refined.frame, arrays.frame)
    np.testing.assert_allclose(refined.xy[frames == 29, 0], truth[[29], 0], atol=1.0)


def test_fast_motion_of_the_whole_animal_is_kept():
    t = np.arange(N_FRAMES, dtype=float)[:, None, None]
    xy = 100 + BODY + t * np.array([25.0, -10.0])  # about 27 px per frame, half a body
    arrays = _tracked(xy)
    refined = refine_tracks(arrays)
    np.testing.assert_array_equal(refined.xy, arrays.xy)
    np.testing.assert_array_equal(refined.visible, arrays.visible)
    np.testing.assert_array_equal(refined.point_score, arrays.point_score)


def test_untracked_and_user_rows_are_unchanged_and_the_input_untouched():
    xy = _walk()
    xy[20:22, 2] += 40.0
    xy[10:12, 1] = np.nan
    untracked = _tracked(xy, track=-1)
    user = attrs.evolve(_tracked(xy), predicted=np.zeros(N_FRAMES, bool))
    user.instance_id += N_FRAMES
    arrays = concat([untracked, user])
    before = attrs.asdict(arrays, recurse=False)
    before = {
        name: np.copy(value) for name, value in before.items() if isinstance(value, np.ndarray)
    }
    refined = refine_tracks(arrays)
    for name, value in before.items():
        np.testing.assert_array_equal(getattr(refined, name), value, err_msg=name)
        np.testing.assert_array_equal(getattr(arrays, name), value, err_msg=name)


def test_shapes_dtypes_and_row_order_are_kept():
    xy = _walk()
    xy[10:12, 1] = np.nan
    arrays = _two_animals(xy).select(np.random.default_rng(0).permutation(2 * N_FRAMES))
    refined = refine_tracks(arrays, RefineConfig(smooth=3))
    for name in ("instance_id", "frame", "track", "score"):
        np.testing.assert_array_equal(getattr(refined, name), getattr(arrays, name))
    for name in ("xy", "visible", "point_score"):
        new, old = getattr(refined, name), getattr(arrays, name)
        assert new.shape == old.shape and new.dtype == old.dtype, name


def test_smoothing_weighs_points_by_score():
    truth = _walk()
    noisy = truth + np.random.default_rng(1).normal(0, 1.0, truth.shape)
    noisy[20, 0] = truth[20, 0] + [6.0, 0.0]  # off, below the jump threshold, but doubtful
    arrays = _tracked(noisy)
    arrays.point_score[20, 0] = 0.01
    smoothed = refine_tracks(arrays, RefineConfig(smooth=5))
    inner = slice(3, N_FRAMES - 3)
    error = np.linalg.norm(noisy - truth, axis=-1)[inner]
    smoothed_error = np.linalg.norm(smoothed.xy - truth, axis=-1)[inner]
    assert np.sqrt((smoothed_error**2).mean()) < 0.7 * np.sqrt((error**2).mean())
    assert np.linalg.norm(smoothed.xy[20, 0] - truth[20, 0]) < 1.5


def test_one_node_tracks_need_a_jump_distance():
    xy = _walk()[:, :1].copy()
    xy[20, 0] += 40.0
    arrays = _tracked(xy)
    np.testing.assert_array_equal(refine_tracks(arrays).xy, arrays.xy)  # no extent: no size
    refined = refine_tracks(arrays, RefineConfig(max_jump_px=10.0))
    np.testing.assert_allclose(refined.xy[20, 0], _walk()[20, 0], atol=1.0)


def test_two_instances_of_a_track_in_one_frame_are_refused():
    arrays = _tracked(_walk(), frames=np.repeat(np.arange(N_FRAMES // 2), 2))
    with pytest.raises(ValueError, match="track_0"):
        refine_tracks(arrays)


@pytest.mark.parametrize(
    "settings",
    [{"window": 4}, {"window": 1}, {"smooth": 2}, {"max_jump_px": 0.0}, {"max_gap": -1},
     {"fill_score": 1.5}],
)  # fmt: skip
def test_bad_settings_are_refused(settings):
    with pytest.raises(ValueError):
        RefineConfig(**settings)


def test_real_poses_are_left_nearly_as_they_are(sleap_dir):
    """clip.slp's own poses (two flies, 13 nodes): fewer than 0.1% of the points change. The
    few that do (18) are 1-2 frame excursions of leg tips and a wing in the labels themselves."""
    arrays = labels_to_arrays(load_labels(sleap_dir / "tracks" / "clip.slp"))
    arrays = attrs.evolve(arrays, predicted=np.ones(len(arrays), bool),
                          point_score=np.ones(arrays.point_score.shape, np.float32))  # fmt: skip
    refined = refine_tracks(arrays)
    was = arrays.visible
    moved = ~refined.visible[was] | (np.linalg.norm(refined.xy - arrays.xy, axis=-1)[was] > 1)
    assert 0 < moved.sum() < 0.001 * was.sum()
