"""Identity proofreading edits and suspicious-frame scores, on the real two-fly clip."""

from __future__ import annotations

import attrs
import numpy as np
import pytest

from napari_pose.core import proofreading as pr
from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.pose_arrays import arrays_to_labels, labels_to_arrays
from napari_pose.nn.metrics import identity_metrics


@pytest.fixture(scope="module")
def clip(sleap_dir):
    """2 flies (tracks female, male) on every one of 1500 frames, user instances."""
    return labels_to_arrays(load_labels(sleap_dir / "tracks" / "clip.slp"))


def test_clip_is_what_the_tests_expect(clip):
    assert [t.name for t in clip.tracks] == ["female", "male"]
    assert clip.frame.max() == 1499 and (np.bincount(clip.frame) == 2).all()
    assert set(clip.track.tolist()) == {0, 1}


def test_swap_from_a_frame_is_one_identity_switch_and_undoes_itself(clip):
    swapped = pr.swap_tracks(clip, 0, 1, 700)
    late = clip.frame >= 700
    np.testing.assert_array_equal(swapped.track[late], 1 - clip.track[late])
    np.testing.assert_array_equal(swapped.track[~late], clip.track[~late])
    assert clip.track is not swapped.track  # the input is untouched
    np.testing.assert_array_equal(pr.swap_tracks(swapped, 1, 0, 700).track, clip.track)
    assert identity_metrics(clip, swapped)["id_switches"] == 2
    assert pr.swap_tracks(clip, 0, 1, 0, video=1).track.tolist() == clip.track.tolist()
    with pytest.raises(ValueError, match="no track 2"):
        pr.swap_tracks(clip, 0, 2, 700)
    with pytest.raises(ValueError, match="'female' cannot be swapped with itself"):
        pr.swap_tracks(clip, 0, 0, 700)


def test_set_track_swaps_with_the_other_fly_of_the_frame(clip):
    row = int(np.flatnonzero((clip.frame == 300) & (clip.track == 0))[0])
    other = int(np.flatnonzero((clip.frame == 300) & (clip.track == 1))[0])
    edited = pr.set_track(clip, row, 1)
    assert edited.track[row] == 1 and edited.track[other] == 0
    changed = np.flatnonzero(edited.track != clip.track)
    assert sorted(changed.tolist()) == sorted([row, other])
    assert pr.set_track(clip, row, 0) is clip  # already on that track

    onward = pr.set_track(clip, row, 1, onward=True)
    np.testing.assert_array_equal(onward.track, pr.swap_tracks(clip, 0, 1, 300).track)
    # No frame ever holds one track twice.
    keys = onward.frame * 2 + onward.track
    assert len(np.unique(keys)) == len(keys)

    untracked = pr.set_track(clip, row, -1)
    assert untracked.track[row] == -1 and untracked.track[other] == 1


def test_delete_track_untracks_its_instances_and_shifts_the_others(clip):
    gone = pr.delete_track(clip, 0)
    assert [t.name for t in gone.tracks] == ["male"] and gone.tracks[0] is clip.tracks[1]
    assert (gone.track == -1).sum() == (clip.track == 0).sum() == 1500
    np.testing.assert_array_equal(gone.track[clip.track == 1], 0)
    assert len(gone) == len(clip)  # instances are kept, only their identity goes
    assert len(pr.delete_track(gone, 0).tracks) == 0


def test_merge_refuses_tracks_that_share_frames_and_joins_fragments(clip):
    with pytest.raises(ValueError, match=r"1500 frame\(s\): 0, 1, 2, .* and 1490 more"):
        pr.merge_tracks(clip, 0, 1)
    with pytest.raises(ValueError, match="'male' cannot be merged into itself"):
        pr.merge_tracks(clip, 1, 1)
    # Break the female's track in two at frame 900, as a tracker losing her would.
    broken = attrs.evolve(clip, tracks=[*clip.tracks, type(clip.tracks[0])("female 2")],
                          track=np.where((clip.track == 0) & (clip.frame >= 900), 2,
                                         clip.track).astype(np.int32))  # fmt: skip
    mended = pr.merge_tracks(broken, 0, 2)
    np.testing.assert_array_equal(mended.track, clip.track)
    assert mended.tracks == clip.tracks
    # Keeping the later track: indices above the removed one shift down.
    kept_late = pr.merge_tracks(broken, 2, 0)
    assert [t.name for t in kept_late.tracks] == ["male", "female 2"]
    np.testing.assert_array_equal(kept_late.track, np.where(clip.track == 0, 1, 0))


def test_rename_keeps_names_unique_and_the_old_list_intact(clip):
    renamed = pr.rename_track(clip, 1, "  fly B ")
    assert [t.name for t in renamed.tracks] == ["female", "fly B"]
    assert clip.tracks[1].name == "male" and renamed.tracks[0] is clip.tracks[0]
    with pytest.raises(ValueError, match="already a track named 'female'"):
        pr.rename_track(clip, 1, "female")
    with pytest.raises(ValueError, match="needs a name"):
        pr.rename_track(clip, 1, " ")
    assert pr.rename_track(clip, 0, "female").tracks[0].name == "female"  # its own name is fine


def test_suspicion_finds_an_identity_swap(clip):
    swapped = pr.swap_tracks(clip, 0, 1, 700)
    scores = pr.suspicion(swapped)
    assert set(scores) == set(pr.CRITERIA)
    assert all(len(v) == 1500 for v in scores.values())
    assert int(np.argmax(scores["speed_jump"])) == 700
    assert scores["speed_jump"][700] > 10 * pr.SPEED_JUMP_FLAG
    assert not scores["count_change"].any() and not scores["low_score"].any()
    assert pr.suspicious_frames(swapped)[0] == 700
    assert pr.suspicious_frames(swapped, top=1).tolist() == [700]
    # Without the swap, frame 700 is unremarkable.
    assert pr.suspicion(clip)["speed_jump"][700] < pr.SPEED_JUMP_FLAG


def test_suspicion_counts_scores_and_closeness(clip):
    missing = clip.select(~((clip.frame == 50) & (clip.track == 1)))
    count = pr.suspicion(missing)["count_change"]
    assert np.flatnonzero(count).tolist() == [50, 51]

    n = len(clip)
    tracking = np.where(clip.frame == 20, 0.2, 0.0).astype(np.float32)  # 0: SLEAP's "none"
    predicted = attrs.evolve(clip, predicted=np.ones(n, bool), score=np.full(n, 0.9, np.float32),
                             tracking_score=tracking)  # fmt: skip
    low = pr.suspicion(predicted)["low_score"]
    assert low[20] == pytest.approx(0.8) and np.allclose(np.delete(low, 20), 0.1)
    assert 20 in pr.suspicious_frames(predicted)

    centre = pr.centroids(clip)
    gap = np.linalg.norm(centre[clip.track == 0] - centre[clip.track == 1], axis=1)
    close = pr.suspicion(clip, min_distance=float(np.median(gap)))["close"]
    assert close.sum() == pytest.approx((gap < np.median(gap)).sum(), abs=1)
    assert pr.suspicion(clip, min_distance=0.0)["close"].sum() == 0
    assert pr.suspicion(clip, video=3)["speed_jump"].shape == (0,)


def test_edited_tracks_survive_saving(clip, sleap_dir, tmp_path):
    labels = load_labels(sleap_dir / "tracks" / "clip.slp")
    edited = pr.rename_track(pr.swap_tracks(clip, 0, 1, 700), 0, "fly A")
    edited = pr.delete_track(pr.set_track(edited, 5, -1), 1)
    save_labels(arrays_to_labels(edited), tmp_path / "edited.slp")
    reopened = labels_to_arrays(load_labels(tmp_path / "edited.slp"))
    assert [t.name for t in reopened.tracks] == ["fly A"]
    np.testing.assert_array_equal(reopened.track, edited.track)
    np.testing.assert_array_equal(reopened.xy, edited.xy)
    assert len(labels.tracks) == 2  # the project loaded from disk is untouched
