"""Label quality check: planted mistakes in exact synthetic labels are found, clean labels are
not flagged, and the real human labels of clip.slp give few flags, quickly."""

from __future__ import annotations

import time

import attrs
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.io import load_labels
from napari_pose.core.quality import KINDS, Flag, check_labels, counts, frame_size
from napari_pose.core.synthetic import (
    HEAD,
    LEFT_WING,
    RIGHT_WING,
    THORAX,
    make_synthetic,
    to_labels,
)

SIZE = 256
SIZES = {0: (SIZE, SIZE)}


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_frames=60, size=SIZE, n_animals=2, seed=3)


def clean(data) -> sio.Labels:
    # The video does not exist: no frame size is known unless a test gives one.
    return to_labels(data, "missing.mp4")


def user(labels: sio.Labels, frame: int, instance: int) -> sio.Instance:
    return labels.find(labels.video, frame)[0].instances[instance]


def test_synthetic_skeleton_declares_a_symmetry(data):
    assert [sorted(n.name for n in s.nodes) for s in data.skeleton.symmetries] == [
        ["left_wing", "right_wing"]
    ]


def test_clean_labels_give_no_flags(data):
    assert check_labels(clean(data), SIZES) == []


def test_swapped_pair_is_flagged(data):
    labels = clean(data)
    points = user(labels, 17, 1).points
    points["xy"][[LEFT_WING, RIGHT_WING]] = points["xy"][[RIGHT_WING, LEFT_WING]].copy()
    flags = check_labels(labels, SIZES)
    assert [(f.kind, f.frame, f.instance) for f in flags] == [("swap", 17, 1)]
    assert set(flags[0].nodes) == {"left_wing", "right_wing"}
    assert "look swapped" in flags[0].reason and flags[0].score >= 1


def test_node_far_from_its_edge_is_flagged_and_blamed(data):
    labels = clean(data)
    xy = user(labels, 30, 0).points["xy"]
    xy[HEAD] = xy[THORAX] + 5 * (xy[HEAD] - xy[THORAX])
    flags = check_labels(labels, SIZES)
    assert [(f.kind, f.frame, f.instance, f.nodes) for f in flags] == [("edge", 30, 0, ("head",))]
    assert "thorax-head" in flags[0].reason and "usually" in flags[0].reason


def test_instance_labelled_twice_is_flagged(data):
    labels = clean(data)
    frame = labels.find(labels.video, 12)[0]
    copy = frame.instances[0].numpy() + np.random.default_rng(0).normal(0, 1, (5, 2))
    frame.instances.append(sio.Instance.from_numpy(copy, data.skeleton))
    flags = check_labels(labels, SIZES)
    assert [(f.kind, f.frame, f.instance) for f in flags] == [("duplicate", 12, 2)]
    assert "instance 0" in flags[0].reason and flags[0].score >= 2


def test_node_outside_the_image_is_flagged_only_when_the_size_is_known(data):
    labels = clean(data)
    points = user(labels, 40, 1).points
    points["xy"][RIGHT_WING, 0] = SIZE + 50
    points["visible"][RIGHT_WING] = True
    assert all(f.kind != "outside" for f in check_labels(labels))  # size unknown: skipped
    outside = [f for f in check_labels(labels, SIZES) if f.kind == "outside"]
    assert [(f.frame, f.instance, f.nodes) for f in outside] == [(40, 1, ("right_wing",))]
    assert "outside the 256 x 256 image" in outside[0].reason


def test_occluded_points_may_lie_outside(data):
    labels = clean(data)
    points = user(labels, 40, 1).points
    points["xy"][RIGHT_WING, 0] = SIZE + 50
    points["visible"][RIGHT_WING] = False
    assert all(f.kind != "outside" for f in check_labels(labels, SIZES))


def test_every_planted_mistake_is_found_most_suspicious_first(data):
    labels = clean(data)
    wings = user(labels, 5, 0).points["xy"]
    wings[[LEFT_WING, RIGHT_WING]] = wings[[RIGHT_WING, LEFT_WING]].copy()
    xy = user(labels, 9, 1).points["xy"]
    xy[HEAD] = xy[THORAX] + 5 * (xy[HEAD] - xy[THORAX])
    frame = labels.find(labels.video, 20)[0]
    frame.instances.append(sio.Instance.from_numpy(frame.instances[1].numpy() + 0.5,
                                                   data.skeleton))  # fmt: skip
    user(labels, 50, 0).points["xy"][HEAD] = (-60.0, 10.0)
    flags = check_labels(labels, SIZES)
    assert {(f.kind, f.frame) for f in flags} >= {
        ("swap", 5), ("edge", 9), ("duplicate", 20), ("outside", 50)
    }  # fmt: skip
    assert counts(flags)["duplicate"] == 1 and list(counts(flags)) == list(KINDS)
    scores = [f.score for f in flags]
    assert scores == sorted(scores, reverse=True) and min(scores) >= 1
    as_dict = flags[0].to_dict()
    assert set(as_dict) == {field.name for field in attrs.fields(Flag)}
    assert isinstance(as_dict["nodes"], list)


def test_predictions_are_not_checked(data):
    labels = to_labels(data, "missing.mp4", predicted=True)
    inst = labels.find(labels.video, 3)[0].instances[0]
    inst.points["xy"][HEAD] = (SIZE + 80.0, 10.0)
    assert check_labels(labels, SIZES) == []


def test_skeleton_without_symmetries_has_no_swap_check(data):
    labels = clean(data)
    labels.skeleton.symmetries = []
    points = user(labels, 17, 1).points
    points["xy"][[LEFT_WING, RIGHT_WING]] = points["xy"][[RIGHT_WING, LEFT_WING]].copy()
    assert all(f.kind != "swap" for f in check_labels(labels, SIZES))


def test_clip_is_checked_quickly_with_few_flags(sleap_dir):
    """clip.slp: 1500 frames of two flies labelled by people (13 nodes, no symmetries)."""
    labels = load_labels(sleap_dir / "tracks" / "clip.slp")
    assert frame_size(labels.video) == (1024, 1024)  # from the video's header, not decoded
    start = time.perf_counter()
    flags = check_labels(labels)
    elapsed = time.perf_counter() - start
    print(f"clip.slp: {len(flags)} flags in {elapsed:.3f} s: {counts(flags)}")
    assert elapsed < 1.0
    assert len(flags) <= 10  # good human labels: a flood would mean wrong thresholds


def test_clip_with_the_fly_template_pairs_gives_few_swaps(sleap_dir):
    """clip.slp's skeleton declares no left/right pairs; with the fly template's five pairs the
    side check runs on real labels too, where touching foreleg tips or folded wings must not
    read as swaps."""
    labels = load_labels(sleap_dir / "tracks" / "clip.slp")
    for a, b in [("wingL", "wingR"), ("forelegL4", "forelegR4"), ("midlegL4", "midlegR4"),
                 ("hindlegL4", "hindlegR4"), ("eyeL", "eyeR")]:  # fmt: skip
        labels.skeleton.add_symmetry(a, b)
    flags = check_labels(labels, {0: (1024, 1024)})
    print(f"clip.slp with pairs: {len(flags)} flags: {counts(flags)}")
    for flag in flags:
        print(f"  frame {flag.frame} instance {flag.instance}: {flag.reason}")
    assert counts(flags)["swap"] <= 3 and len(flags) <= 10
