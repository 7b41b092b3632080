"""The synthetic sample data: deterministic, drawn where its labels say, and stored losslessly.

Everything else (readers, layers, training) is tested against this data on the assumption that
its ground truth is exact, so these tests check the images themselves, not only the arrays.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core import synthetic
from napari_pose.core.synthetic import (
    ABDOMEN,
    HEAD,
    LEFT_WING,
    RIGHT_WING,
    THORAX,
    make_synthetic,
    to_labels,
    write_sample_project,
    write_video,
)

N_FRAMES, SIZE = 60, 128


@pytest.fixture(scope="module")
def data() -> synthetic.SyntheticData:
    return make_synthetic()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_project(tmp_path_factory.mktemp("sample"), n_frames=N_FRAMES, size=SIZE)


def _window_mean(data: synthetic.SyntheticData, node: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the 3x3 pixels around ``node`` of every animal, and where that node is visible."""
    n_frames, size = data.frames.shape[:2]
    centre = np.rint(data.points[:, :, node]).astype(int)  # (F, A, 2) as (x, y)
    offsets = np.stack(np.meshgrid([-1, 0, 1], [-1, 0, 1]), axis=-1).reshape(-1, 2)
    xy = np.clip(centre[:, :, None, :] + offsets, 0, size - 1)  # (F, A, 9, 2)
    frame = np.arange(n_frames)[:, None, None]
    values = data.frames[frame, xy[..., 1], xy[..., 0]].astype(float)
    return values.mean(axis=-1), data.visible[:, :, node]


def _decode_luma(path: Path, indices: list[int]) -> np.ndarray:
    """The Y planes of the given frames, read straight from the decoded pictures (no conversion)."""
    wanted, out = set(indices), {}
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index in wanted:
                plane = frame.planes[0]
                rows = np.frombuffer(plane, np.uint8).reshape(frame.height, plane.line_size)
                out[index] = rows[:, : frame.width].copy()
    return np.stack([out[i] for i in indices])


def test_shapes_and_types(data: synthetic.SyntheticData) -> None:
    assert data.frames.shape == (200, 256, 256) and data.frames.dtype == np.uint8
    assert data.points.shape == (200, 2, 5, 2) and data.points.dtype == np.float64
    assert data.visible.shape == (200, 2, 5) and data.visible.dtype == bool
    assert data.skeleton.node_names == list(synthetic.NODE_NAMES)
    assert data.skeleton.symmetry_names == [("left_wing", "right_wing")]


def test_same_seed_same_data_other_seed_differs(data: synthetic.SyntheticData) -> None:
    again = make_synthetic()
    assert np.array_equal(again.frames, data.frames)
    assert np.array_equal(again.points, data.points)
    assert np.array_equal(again.visible, data.visible)
    other = make_synthetic(seed=1)
    assert not np.array_equal(other.frames, data.frames)
    assert not np.allclose(other.points, data.points)


def test_visibility_means_inside_the_image(data: synthetic.SyntheticData) -> None:
    inside = ((data.points >= -0.5) & (data.points <= 255.5)).all(axis=-1)
    assert np.array_equal(inside, data.visible)
    # The default sample does walk off the edge, so invisible points get exercised downstream.
    assert 0 < (~data.visible).sum() < 0.05 * data.visible.size
    assert data.visible[:, :, THORAX].all()


def test_motion_is_smooth_and_animals_keep_apart(data: synthetic.SyntheticData) -> None:
    step = np.linalg.norm(np.diff(data.points[:, :, THORAX], axis=0), axis=-1)
    assert step.max() < 6.0 and step.mean() > 0.5
    for seed, n_animals in [(0, 2), (3, 4)]:
        thorax = make_synthetic(n_frames=100, n_animals=n_animals, seed=seed).points[:, :, THORAX]
        gap = np.linalg.norm(thorax[:, :, None] - thorax[:, None, :], axis=-1)
        gap[:, np.arange(n_animals), np.arange(n_animals)] = np.inf
        assert gap.min() >= 1.6 * synthetic._REACH - 1e-6


def test_parts_are_drawn_where_the_labels_say(data: synthetic.SyntheticData) -> None:
    background = np.median(data.frames)
    head, head_visible = _window_mean(data, HEAD)
    abdomen, abdomen_visible = _window_mean(data, ABDOMEN)
    assert (head[head_visible] > background + 80).all()
    assert (abdomen[abdomen_visible] < background - 40).all()


def test_wings_are_drawn_and_left_is_left_of_the_heading(data: synthetic.SyntheticData) -> None:
    background = np.median(data.frames)
    for wing in (LEFT_WING, RIGHT_WING):
        mean, visible = _window_mean(data, wing)
        assert (mean[visible] > background + 40).mean() > 0.95
    # Seen from above with y down, the left wing is on the left of thorax -> head: chirality,
    # not appearance, tells left from right (so flips that swap the pair stay valid).
    heading = data.points[:, :, HEAD] - data.points[:, :, THORAX]
    for wing, sign in ((LEFT_WING, 1), (RIGHT_WING, -1)):
        side = data.points[:, :, wing] - data.points[:, :, THORAX]
        cross = heading[..., 0] * side[..., 1] - heading[..., 1] * side[..., 0]
        assert np.all(sign * cross < 0)


def test_to_labels_round_trip(data: synthetic.SyntheticData) -> None:
    labels = to_labels(data, "nowhere/synthetic.mp4")
    assert [t.name for t in labels.tracks] == ["animal_0", "animal_1"]
    assert labels.skeleton.symmetry_names == [("left_wing", "right_wing")]
    assert len(labels) == 200 and not labels.suggestions
    expected = np.where(data.visible[..., None], data.points, np.nan)
    # Labels.numpy() is float32, so compare at that precision; instances hold float64 exactly.
    np.testing.assert_allclose(labels.numpy(), expected, rtol=1e-6, atol=1e-4)
    stored = np.stack([[inst.points["xy"] for inst in lf] for lf in labels])
    assert np.array_equal(stored, data.points)
    flags = np.stack([[inst.points["visible"] for inst in lf] for lf in labels])
    assert np.array_equal(flags, data.visible)
    assert all(type(inst) is sio.Instance for lf in labels for inst in lf)


def test_to_labels_subset_predicted_and_suggestions(data: synthetic.SyntheticData) -> None:
    labels = to_labels(data, "x.mp4", labelled_frames=slice(0, 200, 20), predicted=True)
    assert [lf.frame_idx for lf in labels] == list(range(0, 200, 20))
    instances = [inst for lf in labels for inst in lf]
    assert all(isinstance(inst, sio.PredictedInstance) and inst.score == 1.0 for inst in instances)
    assert all((inst.points["score"] == 1.0).all() for inst in instances)
    suggested = [s.frame_idx for s in labels.suggestions]
    assert len(suggested) == 10 and not set(suggested) & set(range(0, 200, 20))
    mask = np.zeros(200, bool)
    mask[[3, 7]] = True
    assert [lf.frame_idx for lf in to_labels(data, "x.mp4", labelled_frames=mask)] == [3, 7]


def test_write_video_is_lossless_and_atomic(tmp_path: Path) -> None:
    frames = make_synthetic(n_frames=N_FRAMES, size=SIZE).frames
    path = tmp_path / "clip.mp4"
    write_video(frames, path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    indices = [0, 1, 49, 50, 51, N_FRAMES - 1]
    assert np.array_equal(_decode_luma(path, indices), frames[indices])
    with av.open(str(path)) as container:
        keyframes = [
            round(packet.pts * packet.time_base * synthetic.FPS)
            for packet in container.demux(video=0)
            if packet.is_keyframe
        ]
    assert keyframes == [0, synthetic.KEYFRAME_INTERVAL]
    with pytest.raises(ValueError):
        write_video(frames[:, :, :-1], tmp_path / "odd.mp4")


def test_sample_project_reads_back(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = make_synthetic(n_frames=N_FRAMES, size=SIZE)
    monkeypatch.chdir(tmp_path)
    labels = sio.load_slp(str(project))
    np.testing.assert_allclose(
        labels.numpy(), np.where(data.visible[..., None], data.points, np.nan), rtol=1e-6, atol=1e-4
    )
    assert [t.name for t in labels.tracks] == ["animal_0", "animal_1"]
    video = labels.video
    assert Path(video.filename) == project.with_suffix(".mp4")
    assert video.shape == (N_FRAMES, SIZE, SIZE, 1)
    # Full-range flag: even sleap-io's RGB path returns the exact gray values.
    assert np.array_equal(video[13][..., 0], data.frames[13])
    video.close()
    indices = [0, 37, 50]
    assert np.array_equal(_decode_luma(project.with_suffix(".mp4"), indices), data.frames[indices])


def test_sample_project_survives_a_move(project: Path, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(project.parent, moved)
    original = project.with_suffix(".mp4")
    hidden = original.with_name("hidden.mp4")
    original.rename(hidden)
    try:
        labels = sio.load_slp(str(moved / "synthetic.slp"))
        assert Path(labels.video.filename) == moved / "synthetic.mp4"
        assert labels.video.exists()
        labels.video.close()
    finally:
        hidden.rename(original)


def test_sample_project_is_idempotent(project: Path) -> None:
    stamp = json.loads(project.with_suffix(".json").read_text())
    assert stamp["n_frames"] == N_FRAMES and stamp["size"] == SIZE
    mtimes = [p.stat().st_mtime_ns for p in sorted(project.parent.iterdir())]
    assert write_sample_project(project.parent, n_frames=N_FRAMES, size=SIZE) == project
    assert [p.stat().st_mtime_ns for p in sorted(project.parent.iterdir())] == mtimes
