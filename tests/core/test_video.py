"""Video access on the real data: frame accuracy across sparse keyframes, caching, prefetch,
grayscale detection, image folders, embedded frames, dask arrays and bad files.

The reference frames come from a plain sequential PyAV decode (no seeking), so a reader that
lands on the wrong frame after a seek, or mixes up frames while walking forward, fails.
"""

from __future__ import annotations

import gc
import threading
import time
from pathlib import Path

import av
import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.errors import VideoFileError
from napari_pose.core.video import (
    FrameReader,
    ImageSequenceReader,
    SleapVideoReader,
    VideoReader,
    open_video,
    video_to_dask,
)

N_REFERENCE = 280  # frames 0-279 span the keyframes at 0 and 250


@pytest.fixture(scope="module")
def clip(data_dir: Path) -> Path:
    return data_dir / "sleap" / "tracks" / "clip.mp4"


@pytest.fixture(scope="module")
def reference(clip: Path) -> np.ndarray:
    """Frames 0-279 of clip.mp4, decoded in order from the start without any seek."""
    frames = []
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="gray"))
            if len(frames) == N_REFERENCE:
                break
    return np.stack(frames)


def _wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _remux_faststart(source: Path, target: Path) -> None:
    """Copy a video's packets into an mp4 whose index (moov) precedes the data."""
    out = av.open(str(target), "w", options={"movflags": "faststart"})
    with av.open(str(source)) as src, out:
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)


# -- VideoReader on clip.mp4 ------------------------------------------------------------------


def test_index_describes_clip(clip: Path) -> None:
    with VideoReader(clip) as reader:
        assert reader.shape == (1500, 1024, 1024)
        assert reader.n_frames == len(reader) == 1500
        assert reader.grayscale and reader.dtype == np.uint8
        assert reader.fps == 25.0
        assert reader.keyframes.tolist() == [0, 250, 500, 750, 1000, 1250]


def test_random_access_is_frame_accurate(clip: Path, reference: np.ndarray) -> None:
    # A two-frame cache and no prefetch: every read below is a real seek or decode.
    order = [251, 249, 250, 5, 260, 3, 279, 252, 0, 1, -1221]
    order += np.random.default_rng(0).integers(250, N_REFERENCE, 3).tolist()
    with VideoReader(clip, cache_frames=2, prefetch=0) as reader:
        for index in order:
            frame = reader[index]
            assert frame.shape == (1024, 1024)
            expected = reference[index % 1500]
            np.testing.assert_array_equal(frame, expected, err_msg=f"frame {index}")


def test_reads_step_forward_within_a_gop_and_seek_across(clip: Path) -> None:
    with VideoReader(clip, prefetch=0) as reader:
        seeks: list[int] = []
        seek = reader._seek
        reader._seek = lambda keyframe: seeks.append(keyframe) or seek(keyframe)
        reader[3]
        reader[6]  # ahead in the same GOP: decode on
        assert seeks == [0]
        reader[252]  # past keyframe 250: jump there rather than decode 7-249
        assert seeks == [0, 250] and 100 not in reader.cache
        reader[10]  # behind: seek back
        assert seeks == [0, 250, 0]


def test_frames_differ_so_accuracy_tests_can_fail(reference: np.ndarray) -> None:
    neighbours = np.abs(np.diff(reference[245:256].astype(np.int16), axis=0)).max(axis=(1, 2))
    assert (neighbours > 0).all()


def test_block_equals_single_reads(clip: Path, reference: np.ndarray) -> None:
    with VideoReader(clip, prefetch=0) as reader:
        block = reader.read_block(250, 262)
        np.testing.assert_array_equal(block, reference[250:262])
        singles = np.stack([reader[i] for i in range(250, 262)])
    np.testing.assert_array_equal(block, singles)


def test_cache_is_bounded_in_bytes_and_frames(clip: Path) -> None:
    frame_bytes = 1024 * 1024
    with VideoReader(clip, cache_bytes=10 * frame_bytes, prefetch=0) as reader:
        reader.read_block(0, 40)
        assert len(reader.cache) == 10
        assert reader.cache.nbytes <= 10 * frame_bytes
        assert all(i in reader.cache for i in range(30, 40))  # the most recent ones
    with VideoReader(clip, cache_frames=3, prefetch=0) as reader:
        reader.read_block(0, 20)
        assert len(reader.cache) == 3


def test_cached_frames_are_read_only(clip: Path) -> None:
    with VideoReader(clip, prefetch=0) as reader:
        frame = reader[0]
        with pytest.raises(ValueError):
            frame[0, 0] = 1


def test_prefetch_decodes_following_frames(clip: Path, reference: np.ndarray) -> None:
    with VideoReader(clip, prefetch=8) as reader:
        reader[251]
        assert _wait_for(lambda: all(i in reader.cache for i in range(252, 260)))
        np.testing.assert_array_equal(reader.cache.get(259), reference[259])
        assert 260 not in reader.cache


def test_prefetch_thread_ends_on_close_and_garbage_collection(clip: Path) -> None:
    def new_prefetch_threads(before: set[threading.Thread]) -> set[threading.Thread]:
        # Threads of readers from earlier tests may end at any time: follow only new ones.
        return {t for t in threading.enumerate()
                if t.name == f"prefetch {clip.name}" and t not in before}  # fmt: skip

    before = set(threading.enumerate())
    reader = VideoReader(clip)
    reader[0]
    assert len(new_prefetch_threads(before)) == 1
    reader.close()
    assert _wait_for(lambda: not new_prefetch_threads(before))
    with pytest.raises(VideoFileError, match="closed"):
        reader[1000]

    # Dropping the reader is enough, even while it prefetches: it is in no reference cycle,
    # so neither the file nor the thread waits for the cyclic garbage collector.
    gc.disable()
    try:
        before = set(threading.enumerate())
        reader = VideoReader(clip)
        reader[0]
        assert len(new_prefetch_threads(before)) == 1
        del reader
        assert _wait_for(lambda: not new_prefetch_threads(before))
    finally:
        gc.enable()


def test_concurrent_reads_are_consistent(clip: Path, reference: np.ndarray) -> None:
    results: dict[int, np.ndarray] = {}
    with VideoReader(clip, cache_frames=4) as reader:
        threads = [
            threading.Thread(target=lambda i=i: results.__setitem__(i, reader[i]))
            for i in (252, 3, 270, 10, 255)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for index, frame in results.items():
        np.testing.assert_array_equal(frame, reference[index], err_msg=f"frame {index}")


def test_iterating_stops_at_the_end(data_dir: Path) -> None:
    with VideoReader(data_dir / "sleap" / "videos" / "small_robot.mp4", prefetch=0) as reader:
        assert sum(1 for _ in reader) == 166


# -- grayscale ----------------------------------------------------------------------------------


def test_grayscale_detection(clip: Path, data_dir: Path) -> None:
    robot = data_dir / "sleap" / "videos" / "small_robot.mp4"
    with VideoReader(robot) as reader:  # yuv420p with colour
        assert reader.shape == (166, 320, 560, 3)
        assert not reader.grayscale
        frame = reader[10]
        assert frame.shape == (320, 560, 3)
        assert np.abs(np.diff(frame.astype(int), axis=-1)).max() > 50
    with VideoReader(robot, grayscale=True) as reader:
        assert reader.shape == (166, 320, 560) and reader[10].shape == (320, 560)
    with VideoReader(clip, grayscale=False, prefetch=0) as reader:  # yuv420p without colour
        assert reader.shape == (1500, 1024, 1024, 3)
        rgb = reader[0]
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


# -- image sequences and sleap-io videos --------------------------------------------------------


def test_image_folder_in_natural_order(tmp_path: Path) -> None:
    for number in (10, 2, 1):
        iio.imwrite(tmp_path / f"img{number}.png", np.full((6, 8, 3), number, np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    reader = open_video(tmp_path)
    assert isinstance(reader, ImageSequenceReader)
    assert [p.name for p in reader.files] == ["img1.png", "img2.png", "img10.png"]
    assert reader.shape == (3, 6, 8)  # equal channels: gray
    np.testing.assert_array_equal(reader.read_block(0, 3)[:, 0, 0], [1, 2, 10])
    assert reader.fps is None


def test_deeplabcut_labeled_frames(data_dir: Path) -> None:
    folder = data_dir / "deeplabcut" / "openfield" / "labeled-data" / "m4s1"
    reader = ImageSequenceReader(folder, grayscale=False)
    assert reader.shape == (116, 480, 640, 3)
    assert reader.files[0].name == "img0000.png"
    np.testing.assert_array_equal(reader[7], iio.imread(reader.files[7])[..., :3])
    # Stored as RGB, but every pixel is gray: detected as such, as for videos.
    assert ImageSequenceReader(folder).shape == (116, 480, 640)


def test_image_list_of_colour_frames(data_dir: Path) -> None:
    files = [data_dir / "sleap" / "videos" / f"robot{i}.jpg" for i in range(3)]
    reader = ImageSequenceReader(files)
    assert reader.shape == (3, 320, 560, 3)
    np.testing.assert_array_equal(reader[2], iio.imread(files[2]))


def test_image_of_another_size_is_an_error(tmp_path: Path) -> None:
    iio.imwrite(tmp_path / "a1.png", np.zeros((6, 8), np.uint8))
    iio.imwrite(tmp_path / "a2.png", np.zeros((7, 8), np.uint8))
    reader = ImageSequenceReader(tmp_path)
    with pytest.raises(VideoFileError, match="a2.png"):
        reader[1]


def test_embedded_frame_of_package(data_dir: Path) -> None:
    labels = sio.load_slp(str(data_dir / "sleap-io-js" / "minimal_instance.pkg.slp"))
    reader = open_video(labels.videos[0])
    assert isinstance(reader, SleapVideoReader)
    assert reader.shape == (1, 384, 384)
    embedded = reader[0]
    assert embedded.shape == (384, 384) and embedded.dtype == np.uint8
    # The embedded PNG is frame 0 of the source video, decoded by another library.
    source = data_dir / "sleap" / "json_format_v1" / "centered_pair_low_quality.mp4"
    with VideoReader(source, prefetch=0) as video:
        assert np.abs(embedded.astype(int) - video[0]).max() <= 2
        assert np.abs(embedded.astype(int) - video[300]).max() > 50


def test_open_video_picks_the_reader(clip: Path, data_dir: Path) -> None:
    with open_video(clip) as reader:
        assert isinstance(reader, VideoReader)
    labels = sio.load_slp(str(data_dir / "sleap" / "tracks" / "clip.slp"))
    with open_video(labels.videos[0]) as reader:
        assert isinstance(reader, VideoReader) and reader.shape == (1500, 1024, 1024)
    # Image videos stored with the Windows paths of the machine that made them.
    labels = sio.load_slp(str(data_dir / "sleap" / "siv_format_v1" / "small_robot_siv.slp"))
    with pytest.raises(VideoFileError, match="robot0.jpg"):
        open_video(labels.videos[0])


# -- dask -----------------------------------------------------------------------------------------


class _CountingReader(FrameReader):
    """A synthetic long video whose frame i is filled with i % 251, recording every read."""

    def __init__(self, n_frames: int) -> None:
        self.path = Path("synthetic.mp4")
        self.shape = (n_frames, 4, 5)
        self.dtype = np.dtype(np.uint8)
        self.fps = None
        self.reads: list[int] = []

    def _read(self, index: int) -> np.ndarray:
        self.reads.append(index)
        return np.full(self.shape[1:], index % 251, np.uint8)


def test_dask_array_of_clip(clip: Path, reference: np.ndarray) -> None:
    with VideoReader(clip) as reader:
        array = video_to_dask(reader)
        assert isinstance(array, da.Array)
        assert array.shape == reader.shape and array.dtype == np.uint8
        assert array.chunks[0] == (1,) * 1500 and array.chunks[1:] == ((1024,), (1024,))
        np.testing.assert_array_equal(np.asarray(array[251]), reference[251])
        # The threaded scheduler reads chunks concurrently from one reader.
        block = array[250:270, ::2, 100:300].compute(scheduler="threads")
        np.testing.assert_array_equal(block, reference[250:270, ::2, 100:300])
        assert video_to_dask(reader, frames_per_chunk=64).chunks[0][:2] == (64, 64)
        assert array[5:5, :3].compute().shape == (0, 3, 1024)


def test_dask_array_is_cheap_and_reads_only_what_is_indexed() -> None:
    reader = _CountingReader(100_000)
    start = time.perf_counter()
    array = video_to_dask(reader)
    assert time.perf_counter() - start < 0.5
    assert array.numblocks == (100_000, 1, 1)
    assert np.asarray(array[77_777])[0, 0] == 77_777 % 251
    assert reader.reads == [77_777]
    reader.reads.clear()
    blocky = video_to_dask(reader, frames_per_chunk=16)
    assert int(blocky[50_001, 2, 3].compute()) == 50_001 % 251
    assert reader.reads == [50_001]  # one frame, though its chunk holds 16


# -- bad input ------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(VideoFileError, match="nothere.mp4: file not found"):
        open_video(tmp_path / "nothere.mp4")


def test_text_file_named_mp4(tmp_path: Path) -> None:
    fake = tmp_path / "notes.mp4"
    fake.write_text("these are my notes, not a video\n")
    with pytest.raises(VideoFileError, match="notes.mp4"):
        VideoReader(fake)


def test_truncated_video(clip: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(clip.read_bytes()[:100_000])  # clip.mp4 keeps its index at the end
    with pytest.raises(VideoFileError, match="cut.mp4"):
        VideoReader(cut)
    # With the index first, the file opens but lacks the frames its index lists.
    faststart = tmp_path / "faststart.mp4"
    _remux_faststart(clip, faststart)
    assert VideoReader(faststart).n_frames == 1500
    data = faststart.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoFileError, match=r"cut.mp4: truncated video: .* 1500 frames"):
        VideoReader(cut)


def test_frame_out_of_range(clip: Path) -> None:
    with VideoReader(clip, prefetch=0) as reader:
        with pytest.raises(VideoFileError) as error:
            reader[2000]
        assert str(error.value) == f"{clip}: frame 2000 out of range: video has 1500 frames"
        with pytest.raises(VideoFileError, match="out of range"):
            reader.read_block(1490, 1501)
        with pytest.raises(TypeError):
            reader[1.5]


def test_corrupt_frames(clip: Path, tmp_path: Path, reference: np.ndarray) -> None:
    """Zero the data of frames 250-499: they fail by name, and the frames around still read."""
    damaged = tmp_path / "damaged.mp4"
    _remux_faststart(clip, damaged)
    with av.open(str(damaged)) as container:
        stream = container.streams.video[0]
        tick = 512  # clip.mp4: 12800 ticks per second, 25 frames per second
        packets = [p for p in container.demux(stream) if p.pts is not None]
        spans = [(p.pos, p.size) for p in packets if 250 * tick <= p.pts < 500 * tick]
    data = bytearray(damaged.read_bytes())
    for pos, size in spans:
        data[pos : pos + size] = bytes(size)
    damaged.write_bytes(bytes(data))
    with VideoReader(damaged, prefetch=0) as reader:
        with pytest.raises(VideoFileError, match="damaged.mp4: frame 260 cannot be decoded"):
            reader[260]
        # Frames held back by the decoder when the bad keyframe came in are still returned.
        np.testing.assert_array_equal(reader[249], reference[249])
        assert reader[500].shape == (1024, 1024)


@pytest.mark.parametrize(
    "name", ["deeplabcut/openfield/videos/m3v1mp4.mp4", "sleap/videos/centered_pair_small.mp4"]
)
def test_fast_gray_equals_ffmpeg_gray(data_dir: Path, name: str) -> None:
    """Gray frames come from the luma plane directly; they must equal FFmpeg's conversion."""
    path = data_dir / name
    with av.open(str(path)) as container:
        expected = [
            f.to_ndarray(format="gray") for _, f in zip(range(5), container.decode(video=0))
        ]
    with VideoReader(path, grayscale=True, prefetch=0) as reader:
        for i, frame in enumerate(expected):
            np.testing.assert_array_equal(reader[i], frame)


def test_full_range_gray_video(tmp_path: Path) -> None:
    from napari_pose.core.synthetic import make_synthetic, write_video

    frames = make_synthetic(n_frames=12, size=64).frames
    write_video(frames, tmp_path / "full.mp4")  # full-range (yuvj) luma, lossless
    with VideoReader(tmp_path / "full.mp4", prefetch=0) as reader:
        np.testing.assert_array_equal(reader.read_block(0, 12), frames)
