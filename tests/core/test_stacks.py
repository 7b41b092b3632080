"""Lazy TIFF stacks: values, axes and pixel sizes of stacks written with tifffile, and that
opening reads tags only (pixels are read per plane, when indexed)."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_pose.core.errors import VideoFileError
from napari_pose.core.stacks import Stack, _TiffPages, open_tiff

RNG = np.random.default_rng(7)


@pytest.fixture
def movie() -> np.ndarray:
    return RNG.integers(0, 4096, (7, 24, 32), dtype=np.uint16)  # (T, Y, X)


@pytest.fixture
def hyperstack() -> np.ndarray:
    return RNG.integers(0, 256, (3, 4, 2, 16, 20), dtype=np.uint8)  # (T, Z, C, Y, X)


def test_plain_multipage_tiff(tmp_path: Path, movie: np.ndarray) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, photometric="minisblack")
    stack = open_tiff(path)
    assert isinstance(stack, Stack) and stack.path == path
    assert isinstance(stack.data, da.Array)
    assert stack.axes == "TYX"  # the generic page axis is time
    assert stack.scale == {}
    assert stack.data.shape == movie.shape and stack.data.dtype == movie.dtype
    assert stack.data.numblocks == (7, 1, 1)  # one chunk per page
    np.testing.assert_array_equal(stack.data.compute(), movie)
    np.testing.assert_array_equal(stack.data[4, 3:9, ::2].compute(), movie[4, 3:9, ::2])


def test_ome_tiff_axes_and_pixel_sizes(tmp_path: Path, hyperstack: np.ndarray) -> None:
    path = tmp_path / "cells.ome.tif"
    metadata = {"axes": "TZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, hyperstack, ome=True, metadata=metadata)
    stack = open_tiff(path)
    assert stack.axes == "TZCYX"
    assert stack.scale == {"Z": 2.0, "Y": 0.5, "X": 0.5}
    assert stack.data.shape == hyperstack.shape
    assert stack.data.numblocks == (3, 4, 2, 1, 1)
    np.testing.assert_array_equal(stack.data.compute(), hyperstack)
    np.testing.assert_array_equal(stack.data[2, 1, 1].compute(), hyperstack[2, 1, 1])


def test_compressed_ome_tiff_reads_only_the_pages_indexed(
    tmp_path: Path, hyperstack: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cells.ome.tif"
    metadata = {"axes": "TZCYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm"}
    tifffile.imwrite(path, hyperstack, ome=True, compression="zlib", metadata=metadata)
    pages_read: list[int] = []
    read_page = _TiffPages._read_page
    monkeypatch.setattr(
        _TiffPages, "_read_page", lambda self, n: pages_read.append(n) or read_page(self, n)
    )
    stack = open_tiff(path)
    assert pages_read == []  # opening reads no pixels
    assert stack.scale == {"X": 0.25}  # nm to micrometres
    # Page order is T, then Z, then C: (t=1, z=2, c=0) is page 1 * 8 + 2 * 2 + 0.
    np.testing.assert_array_equal(stack.data[1, 2, 0].compute(), hyperstack[1, 2, 0])
    assert pages_read == [12]
    pages_read.clear()
    block = stack.data[:, 3, 1, 5:9].compute(scheduler="threads")
    np.testing.assert_array_equal(block, hyperstack[:, 3, 1, 5:9])
    assert sorted(pages_read) == [7, 15, 23]
    assert stack.data[1, 0:0].compute().shape == (0, 2, 16, 20)


def test_rgb_pages(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, (5, 12, 10, 3), dtype=np.uint8)
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", compression="zlib")
    stack = open_tiff(path)
    assert stack.axes == "TYXS"
    np.testing.assert_array_equal(stack.data[3].compute(), rgb[3])


def test_not_a_tiff(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("these are notes\n")
    with pytest.raises(VideoFileError, match="notes.tif: not a TIFF"):
        open_tiff(path)
    with pytest.raises(VideoFileError, match="missing.tif: file not found"):
        open_tiff(tmp_path / "missing.tif")


@pytest.mark.parametrize(
    ("options", "kept"),
    [
        ({}, 2 / 3),  # the chain of pages breaks
        ({"truncate": True}, 2 / 3),  # one page's tags describe every frame: data too short
        ({"compression": "zlib"}, 0.999),  # the last page's data runs past the end
    ],
)
def test_truncated_tiff(tmp_path: Path, movie: np.ndarray, options: dict, kept: float) -> None:
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, photometric="minisblack", **options)
    assert open_tiff(path).data.shape == movie.shape
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(VideoFileError, match="cut.tif: truncated TIFF"):
        open_tiff(cut)


def test_planes_of_a_stack_are_frames_in_c_order(tmp_path: Path, hyperstack: np.ndarray) -> None:
    """(t, z) planes are numbered as stack labels number them; channels move last."""
    from napari_pose.core.stacks import StackPlaneReader
    from napari_pose.core.video import open_video

    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, hyperstack, ome=True, metadata={"axes": "TZCYX"})
    reader = open_video(path)
    assert isinstance(reader, StackPlaneReader)
    assert len(reader) == 12 and reader.plane_shape == (3, 4) and reader.shape[1:] == (16, 20, 2)
    t, z = np.unravel_index(7, (3, 4))
    np.testing.assert_array_equal(reader[7], np.moveaxis(hyperstack[t, z], 0, -1))


def test_16_bit_planes_are_stretched_to_8_bits(tmp_path: Path, movie: np.ndarray) -> None:
    from napari_pose.core.stacks import to_uint8
    from napari_pose.core.video import open_video

    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie, photometric="minisblack")
    plane = open_video(path)[3]
    assert plane.dtype == np.uint8 and plane.min() == 0 and plane.max() == 255
    expected = (movie[3].astype(float) - movie[3].min()) * 255 / np.ptp(movie[3])
    np.testing.assert_allclose(plane, expected, atol=0.51)
    assert to_uint8(np.full((4, 4), 7, np.uint16)).max() == 0  # flat plane: no division by 0


@pytest.fixture
def pages(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A (5, 3, 32, 32) stack written with no axes: tifffile guesses 'QSYX' (3 RGB samples)."""
    stack = RNG.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, stack, metadata=None)
    return path, stack


def test_given_axes_decide_what_a_frame_is(pages: tuple[Path, np.ndarray]) -> None:
    from napari_pose.core.video import open_video

    path, stack = pages
    assert open_tiff(path).axes == "TSYX"
    assert open_video(path).shape == (5, 32, 32, 3)  # the file's guess: 5 RGB frames
    assert open_tiff(path, axes="tzyx").axes == "TZYX"
    reader = open_video(path, axes="TZYX")  # 15 gray planes
    assert reader.shape == (15, 32, 32) and reader.plane_shape == (5, 3)
    assert reader.plane_axes == "TZ"
    np.testing.assert_array_equal(reader[4], stack[1, 1])  # plane 4 is (t=1, z=1)
    reader = open_video(path, axes="ZTYX")  # the same planes in the same order; time is second
    assert reader.plane_shape == (5, 3) and reader.plane_axes == "ZT"
    np.testing.assert_array_equal(reader[5], stack[1, 2])
    assert open_tiff(path, axes="tsyx").axes == "TSYX"  # the file's own, S not last: taken
    assert open_tiff(path, axes="TCYX").axes == "TCYX"
    reader = open_video(path, axes="TCYX")  # channels move last
    assert reader.shape == (5, 32, 32, 3) and reader.plane_shape == (5,)
    assert reader.plane_axes == "T"
    np.testing.assert_array_equal(reader[2], np.moveaxis(stack[2], 0, -1))


@pytest.mark.parametrize(
    ("axes", "problem"),
    [
        ("TYX", "3 letters for 4 axes"),
        ("TTYX", "T more than once"),
        ("TZYY", "Y more than once; no X"),
        ("TQYX", "unknown Q"),
        ("STYX", "S \\(RGB samples\\) not last"),  # not TSYX: the file's own axes fit
    ],
)
def test_axes_that_do_not_fit_are_refused(
    pages: tuple[Path, np.ndarray], axes: str, problem: str
) -> None:
    path, _ = pages
    with pytest.raises(VideoFileError, match=rf"pages.tif: axes '{axes}' .*\(5, 3, 32, 32\).*"
                       rf"'TSYX'.*{problem}; expected 4 of the letters TZCYXS"):  # fmt: skip
        open_tiff(path, axes=axes)


def test_axes_are_refused_for_videos_that_are_not_stacks(tmp_path: Path) -> None:
    from napari_pose.core.video import open_video

    with pytest.raises(ValueError, match="clip.mp4: axes \\('TZYX'\\) can only be given for TIFF"):
        open_video(tmp_path / "clip.mp4", axes="TZYX")


def test_pixel_sizes_follow_given_axes(tmp_path: Path) -> None:
    path = tmp_path / "cells.ome.tif"
    metadata = {"axes": "TZYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "PhysicalSizeZ": 2.0}
    tifffile.imwrite(path, RNG.integers(0, 256, (5, 3, 16, 20), dtype=np.uint8), ome=True,
                     metadata=metadata)  # fmt: skip
    assert open_tiff(path, axes="TZYX").scale == {"Z": 2.0, "Y": 0.5, "X": 0.5}
    assert open_tiff(path, axes="ZTYX").scale == {"Z": 2.0, "Y": 0.5, "X": 0.5}  # the z-step
    assert open_tiff(path, axes="TCYX").scale == {"Y": 0.5, "X": 0.5}  # no Z: no z-step


def test_recorded_axes_survive_saving_and_open_the_same_planes(
    tmp_path: Path, pages: tuple[Path, np.ndarray]
) -> None:
    """Labels of planes read as 'TZYX' keep those axes in their video through .slp files
    (sleap-io's ``videos_json``, where a closed video's backend metadata is written as it is),
    and the video opens on the same planes; given axes still win."""
    import json

    import h5py
    import sleap_io as sio

    from napari_pose.core.io import load_labels, save_labels
    from napari_pose.core.stacks import record_axes
    from napari_pose.core.video import open_video

    path, stack = pages
    video = sio.Video(filename=str(path))  # sleap-io opens its own TIFF backend: 5 RGB frames
    with open_video(video, axes="tzyx") as reader:
        record_axes(video, reader)
    assert video.backend is None
    assert video.backend_metadata["axes"] == "TZYX" and video.shape == [15, 32, 32, 1]
    skeleton = sio.Skeleton(["head", "tail"])
    instance = sio.PredictedInstance.from_numpy(np.array([[3.0, 4.0], [5.0, 6.0]]), skeleton,
                                                point_scores=np.ones(2), score=1.0)  # fmt: skip
    frame = sio.LabeledFrame(video=video, frame_idx=4, instances=[instance])
    save_labels(sio.Labels(videos=[video], skeletons=[skeleton], labeled_frames=[frame]),
                tmp_path / "a.slp")  # fmt: skip
    with h5py.File(tmp_path / "a.slp", "r") as f:
        (entry,) = [json.loads(raw) for raw in f["videos_json"][:]]
    assert entry["backend"]["axes"] == "TZYX" and entry["backend"]["shape"] == [15, 32, 32, 1]
    save_labels(load_labels(tmp_path / "a.slp"), tmp_path / "b.slp")  # loaded, saved again
    loaded = load_labels(tmp_path / "b.slp").videos[0]
    assert loaded.backend_metadata["axes"] == "TZYX"
    reader = open_video(loaded)
    assert reader.shape == (15, 32, 32) and reader.plane_axes == "TZ"
    np.testing.assert_array_equal(reader[4], stack[1, 1])  # frame 4 is still (t=1, z=1)
    assert open_video(loaded, axes="TCYX").plane_shape == (5,)


def test_planes_as_a_stack_array(pages: tuple[Path, np.ndarray]) -> None:
    """``planes_to_dask``: (t, z, y, x) in 8 bits, one plane a chunk, each plane read alone."""
    from napari_pose.core.stacks import planes_to_dask
    from napari_pose.core.video import open_video

    path, stack = pages
    reader = open_video(path, axes="TZYX")
    data = planes_to_dask(reader)
    assert data.shape == (5, 3, 32, 32) and data.dtype == np.uint8
    assert data.numblocks == (5, 3, 1, 1) and len(data.dask.layers) == 1
    np.testing.assert_array_equal(data.compute(), stack)
    np.testing.assert_array_equal(data[2, 1].compute(), stack[2, 1])
    np.testing.assert_array_equal(data[1:4, 2, 5:9, ::3].compute(), stack[1:4, 2, 5:9, ::3])
    rgb = planes_to_dask(open_video(path))  # the file's own axes: 5 RGB planes
    assert rgb.shape == (5, 32, 32, 3)
    np.testing.assert_array_equal(rgb[3].compute(), np.moveaxis(stack[3], 0, -1))
