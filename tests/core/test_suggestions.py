"""Frame suggestions: random and strided frames, visually diverse frames, and merging into labels.

Diversity is checked on a video of a few very different "scenes", where the right answer is
known (one frame per scene), and on SLEAP's real fly clip, where the flies sit still for the
first ~1000 frames and then run about: the suggestions must be distinct, spread out and more
varied than evenly spaced frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import sleap_io as sio
from skimage.filters import gaussian

from napari_pose.core.suggestions import (
    diverse_frames,
    iter_diverse_frames,
    merge_suggestions,
    random_frames,
    strided_frames,
    to_suggestions,
)
from napari_pose.core.video import FrameReader, open_video


class ArrayReader(FrameReader):
    """Frames held in memory, read through the ``FrameReader`` interface (recording reads)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames
        self.path = Path("memory")
        self.shape = frames.shape
        self.dtype = frames.dtype
        self.fps = None
        self.reads: list[int] = []

    def _read(self, index: int) -> np.ndarray:
        self.reads.append(index)
        return self.frames[index]


def scene_video(
    n_frames: int = 240, n_scenes: int = 4, colour: bool = False, seed: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Frames cut between very different backgrounds, each with a small moving square.

    Scenes recur in several runs of unequal length, so a method that clusters by time
    rather than by appearance fails. The frame size (90 x 124) is not a multiple of the
    thumbnail size, so thumbnails are area-resampled with partial pixels. Returns the frames
    and every frame's scene.
    """
    rng = np.random.default_rng(seed)
    height, width = 90, 124
    channels = (3,) if colour else ()
    backgrounds = [
        40 + 170 * gaussian(rng.random((height, width, *channels)), sigma=6, channel_axis=None)
        for _ in range(n_scenes)
    ]
    backgrounds = [(b - b.min()) / (b.max() - b.min()) * 200 + 20 for b in backgrounds]
    runs = rng.integers(5, 30, size=n_frames)
    scene = np.repeat(np.arange(runs.size) % n_scenes, runs)[:n_frames]
    frames = np.empty((n_frames, height, width, *channels), np.float64)
    for i, s in enumerate(scene):
        frames[i] = backgrounds[s] + rng.normal(0, 4, backgrounds[s].shape)
        y, x = 10 + (i * 3) % (height - 20), 10 + (i * 7) % (width - 20)
        frames[i, y : y + 4, x : x + 4] = 255
    return np.clip(frames, 0, 255).astype(np.uint8), scene


# -- random and strided ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["random", "strided"])
def test_simple_methods_count_range_uniqueness(method: str) -> None:
    exclude = {0, 5, 6, 7, 99, 500}  # 500 is out of range and ignored
    for k in (0, 1, 10, 37):
        frames = (
            random_frames(100, k, seed=3, exclude=exclude)
            if method == "random"
            else strided_frames(100, k, exclude=exclude)
        )
        assert frames.dtype.kind == "i"
        assert len(frames) == k
        assert np.all(np.diff(frames) > 0)  # sorted and unique
        assert frames.size == 0 or (frames.min() >= 0 and frames.max() < 100)
        assert not set(frames.tolist()) & exclude


def test_simple_methods_return_every_frame_left_when_k_is_too_large() -> None:
    expected = np.setdiff1d(np.arange(20), [3, 4])
    np.testing.assert_array_equal(random_frames(20, 50, exclude=[3, 4]), expected)
    np.testing.assert_array_equal(strided_frames(20, 50, exclude=[3, 4]), expected)
    assert random_frames(0, 5).size == 0


def test_random_frames_are_seeded() -> None:
    np.testing.assert_array_equal(random_frames(1000, 20, seed=7), random_frames(1000, 20, seed=7))
    assert not np.array_equal(random_frames(1000, 20, seed=7), random_frames(1000, 20, seed=8))


def test_strided_frames_are_evenly_spaced_over_the_frames_left() -> None:
    np.testing.assert_array_equal(strided_frames(101, 5), [0, 25, 50, 75, 100])
    # Excluding the first half spreads all suggestions over the second half.
    frames = strided_frames(100, 5, exclude=range(50))
    np.testing.assert_array_equal(frames, [50, 62, 74, 87, 99])


def test_negative_k_is_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        random_frames(10, -1)
    with pytest.raises(ValueError, match="non-negative"):
        strided_frames(10, -1)


# -- diverse ---------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [False, True])
def test_diverse_frames_pick_one_frame_per_scene(colour: bool) -> None:
    frames, scene = scene_video(colour=colour)
    chosen = diverse_frames(ArrayReader(frames), 4, size=32)
    assert len(chosen) == 4
    assert sorted(scene[chosen].tolist()) == [0, 1, 2, 3]


def test_diverse_frames_respect_exclusion() -> None:
    frames, scene = scene_video()
    exclude = np.flatnonzero(scene == 2)
    chosen = diverse_frames(ArrayReader(frames), 3, size=32, exclude=exclude.tolist())
    assert not set(chosen.tolist()) & set(exclude.tolist())
    assert sorted(scene[chosen].tolist()) == [0, 1, 3]


def test_diverse_frames_progress_and_reading_order() -> None:
    frames, _ = scene_video()
    reader = ArrayReader(frames)
    steps = iter_diverse_frames(reader, 4, max_samples=100, size=32, exclude=[0, 1])
    progress = []
    with pytest.raises(StopIteration) as stop:
        while True:
            progress.append(next(steps))
    chosen = stop.value.value
    assert progress[0] == (0, 100) and progress[-1] == (100, 100)
    assert [done for done, _ in progress] == list(range(101))
    assert {total for _, total in progress} == {100}
    assert reader.reads == sorted(set(reader.reads)) and len(reader.reads) == 100
    assert 0 not in reader.reads and 1 not in reader.reads
    assert set(chosen.tolist()) <= set(reader.reads)


def test_diverse_frames_are_deterministic() -> None:
    frames, _ = scene_video(n_scenes=3)
    first = diverse_frames(ArrayReader(frames), 10, size=32, seed=5)
    second = diverse_frames(ArrayReader(frames), 10, size=32, seed=5)
    np.testing.assert_array_equal(first, second)
    assert len(first) == 10 and np.all(np.diff(first) > 0)


def test_diverse_frames_fill_up_when_frames_coincide() -> None:
    """A static video still gets k distinct frames, although k-means finds fewer clusters."""
    frames = np.zeros((50, 40, 40), np.uint8)
    frames[40:] = 200
    chosen = diverse_frames(ArrayReader(frames), 6, size=16)
    assert len(chosen) == 6 and np.all(np.diff(chosen) > 0)
    assert np.any(chosen >= 40) and np.any(chosen < 40)


def test_diverse_frames_need_no_reading_when_every_sample_is_suggested() -> None:
    frames, _ = scene_video(n_frames=30)
    reader = ArrayReader(frames)
    steps = iter_diverse_frames(reader, 40, exclude=[3])
    with pytest.raises(StopIteration) as stop:
        next(steps)
    np.testing.assert_array_equal(stop.value.value, np.setdiff1d(np.arange(30), [3]))
    assert reader.reads == []
    assert diverse_frames(reader, 0).size == 0 and reader.reads == []


def test_diverse_frames_on_real_clip(data_dir: Path) -> None:
    """20 distinct frames over the whole clip, more varied than 20 evenly spaced frames.

    The flies in clip.mp4 barely move until about frame 1000 and then run about, so most
    suggestions belong to the end, but the quiet start must not be ignored.
    """
    reader = open_video(data_dir / "sleap" / "tracks" / "clip.mp4")
    n = reader.n_frames
    chosen = diverse_frames(reader, 20, max_samples=300)
    assert len(chosen) == 20 and np.all(np.diff(chosen) > 0)
    assert chosen[0] >= 0 and chosen[-1] < n
    assert np.any(chosen < 1000) and np.any(chosen >= 1000)
    assert chosen[-1] - chosen[0] > n / 2

    def spread(indices: np.ndarray) -> float:
        """Mean distance of each frame's 32 x 32 thumbnail to its nearest other suggestion."""
        thumbs = np.stack([reader[int(i)].reshape(32, 32, 32, 32).mean((1, 3)) for i in indices])
        flat = thumbs.reshape(len(indices), -1)
        distances = np.linalg.norm(flat[:, None] - flat[None], axis=-1)
        np.fill_diagonal(distances, np.inf)
        return float(distances.min(axis=1).mean())

    assert spread(chosen) > 1.5 * spread(strided_frames(n, 20))


# -- SuggestionFrames ------------------------------------------------------------------------


def clip_video(data_dir: Path) -> sio.Video:
    """A new ``sio.Video`` of clip.mp4, left closed: sleap-io counts an open media video's
    frames on saving, which takes seconds."""
    return sio.Video(filename=str(data_dir / "sleap" / "tracks" / "clip.mp4"), open_backend=False)


def test_merge_suggestions_without_duplicates_survives_saving(
    data_dir: Path, tmp_path: Path
) -> None:
    video, other = clip_video(data_dir), clip_video(data_dir)
    labels = sio.Labels(videos=[video, other])

    added = merge_suggestions(labels, to_suggestions(np.array([40, 7, 300]), video))
    assert [s.frame_idx for s in added] == [40, 7, 300]
    added = merge_suggestions(
        labels, to_suggestions([7, 5, 300, 5], video) + to_suggestions([7], other)
    )
    # Frame 7 of the other video is a different frame, even though it is the same file.
    assert [(s.video is other, s.frame_idx) for s in added] == [(False, 5), (True, 7)]
    expected = [(0, 5), (0, 7), (0, 40), (0, 300), (1, 7)]
    assert [(labels.videos.index(s.video), s.frame_idx) for s in labels.suggestions] == expected

    path = tmp_path / "suggested.slp"
    sio.save_slp(labels, str(path))
    loaded = sio.load_slp(str(path))
    assert [(loaded.videos.index(s.video), s.frame_idx) for s in loaded.suggestions] == expected
    assert merge_suggestions(loaded, to_suggestions([5, 300], loaded.videos[0])) == []
    assert len(loaded.suggestions) == len(expected)


def test_merge_suggestions_refuses_a_video_not_in_the_labels(data_dir: Path) -> None:
    labels = sio.Labels(videos=[clip_video(data_dir)])
    stranger = clip_video(data_dir)
    with pytest.raises(ValueError, match="not in the labels"):
        merge_suggestions(labels, to_suggestions([1], stranger))
    assert labels.suggestions == []
