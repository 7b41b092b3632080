"""The npe2 readers and writers as napari calls them (no viewer needed): every kind of file."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import sleap_io as sio
import tifffile

from napari_pose.core.errors import PoseFileError
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.napari._reader import get_folder_reader, get_image_reader, get_labels_reader
from napari_pose.napari._writer import write_analysis_h5, write_dlc, write_slp


def _read(getter, path: Path):
    reader = getter(str(path))
    assert reader is not None, f"no reader for {path}"
    return reader(str(path))


def _kinds(layers) -> list[tuple[str, str]]:
    return [(kw["name"], kind) for _, kw, kind in layers]


def _full(layers):
    """What napari hands a writer: (data, attributes, type) with features and metadata."""
    return [(d, {"features": kw.get("features"), "metadata": kw.get("metadata", {})}, kind)
            for d, kw, kind in layers]  # fmt: skip


def test_readers_pick_files_by_extension_and_content(data_dir, tmp_path):
    text = tmp_path / "notes.csv"
    text.write_text("a,b\n1,2\n")
    assert get_labels_reader(str(text)) is None  # a CSV that is not DeepLabCut's
    assert get_labels_reader(str(data_dir / "sleap/tracks/clip.slp")) is not None
    assert get_labels_reader(str(data_dir / "deeplabcut/openfield/config.yaml")) is not None
    assert get_image_reader(str(data_dir / "sleap/tracks/clip.mp4")) is not None
    assert get_image_reader(str(data_dir / "sleap/tracks/clip.slp")) is None
    assert get_folder_reader(str(data_dir / "deeplabcut/openfield")) is not None
    assert get_folder_reader(str(data_dir / "deeplabcut/openfield/labeled-data/m4s1")) is not None
    assert get_folder_reader(str(tmp_path)) is None


def test_package_slp_shows_embedded_frames(data_dir):
    layers = _read(get_labels_reader, data_dir / "sleap-io-js/minimal_instance.pkg.slp")
    (image, kw, kind), *rest = layers
    assert kind == "image" and image.shape[1:] == (384, 384)
    frame = np.asarray(image[0])
    assert frame.std() > 5  # real pixels, not a black placeholder
    points = next(d for d, _, k in rest if k == "points")
    assert len(points) == 4


def test_analysis_h5_opens_with_tracks(data_dir, tmp_path):
    slp = sio.load_slp(data_dir / "sleap/tracks/clip.slp")
    analysis = tmp_path / "clip.analysis.h5"
    write_analysis_h5(
        str(analysis), _full(_read(get_labels_reader, data_dir / "sleap/tracks/clip.slp"))
    )
    shutil.copy(data_dir / "sleap/tracks/clip.mp4", tmp_path / "clip.mp4")
    layers = _read(get_labels_reader, analysis)
    assert ("clip tracks", "tracks") in _kinds(layers)
    points = next(kw for d, kw, k in layers if k == "points" and len(d))
    assert set(points["features"]["track"]) == {"female", "male"}
    a, b = labels_to_arrays(slp), labels_to_arrays(points["metadata"]["napari_pose"].labels)
    np.testing.assert_allclose(np.nanmean(a.xy), np.nanmean(b.xy), rtol=1e-6)


@pytest.mark.parametrize("target", ["config.yaml", "folder", "CollectedData_Pranav.h5"])
def test_deeplabcut_project_opens(data_dir, target):
    project = data_dir / "deeplabcut/openfield"
    path = {"config.yaml": project / "config.yaml", "folder": project,
            "CollectedData_Pranav.h5": project / "labeled-data/m4s1/CollectedData_Pranav.h5"}[target]  # fmt: skip
    layers = _read(get_folder_reader if target == "folder" else get_labels_reader, path)
    image = next(d for d, _, k in layers if k == "image")
    assert image.shape[0] == 116 and image.shape[1:3] == (480, 640)
    data, kw = next((d, kw) for d, kw, k in layers if k == "points")
    assert list(kw["features"]["node"].cat.categories) == [
        "snout",
        "leftear",
        "rightear",
        "tailbase",
    ]
    assert data[:, 0].max() < 116 and len(data) > 300


def test_write_dlc_and_slp_from_layers(data_dir, tmp_path):
    layers = _full(_read(get_labels_reader, data_dir / "deeplabcut/openfield/config.yaml"))
    original = labels_to_arrays(
        next(kw for _, kw, k in layers if k == "points")["metadata"]["napari_pose"].labels
    )
    for name, writer in (("CollectedData_Me.csv", write_dlc), ("CollectedData_Me.h5", write_dlc),
                         ("out.slp", write_slp)):  # fmt: skip
        out = tmp_path / name
        assert writer(str(out), layers) == [str(out)]
        back = _read(get_labels_reader, out)
        binding = next(kw for _, kw, k in back if k == "points")["metadata"]["napari_pose"]
        arrays = labels_to_arrays(binding.labels)
        np.testing.assert_allclose(arrays.xy, original.xy, err_msg=name)
        np.testing.assert_array_equal(arrays.frame, original.frame)


def test_video_reader_layer(data_dir):
    ((data, kw, kind),) = _read(get_image_reader, data_dir / "sleap/videos/small_robot.mp4")
    assert kind == "image" and kw["rgb"] and data.shape == (166, 320, 560, 3)
    ((data, kw, kind),) = _read(get_image_reader, data_dir / "sleap/tracks/clip.mp4")
    assert not kw["rgb"] and data.shape == (1500, 1024, 1024) and data.chunks[0][0] == 1


def test_ome_tiff_stack_layer(tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (3, 4, 2, 32, 48), dtype=np.uint8)
    path = tmp_path / "cells.ome.tif"
    tifffile.imwrite(path, stack, ome=True, photometric="minisblack",
                     metadata={"axes": "TZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5,
                               "PhysicalSizeZ": 2.0})  # fmt: skip
    ((data, kw, kind),) = _read(get_image_reader, path)
    assert kind == "image" and kw["channel_axis"] == 2
    assert kw["axis_labels"] == ("t", "z", "y", "x") and kw["scale"] == (1.0, 2.0, 0.5, 0.5)
    np.testing.assert_array_equal(np.asarray(data), stack)


def test_image_folder_layer(data_dir):
    ((data, kw, kind),) = _read(
        get_folder_reader, data_dir / "deeplabcut/openfield/labeled-data/m4s1"
    )
    assert kind == "image" and data.shape[0] == 116 and kw["name"] == "m4s1"


@pytest.mark.parametrize("case", ["text.mp4", "truncated.mp4", "truncated.slp", "unknown_node.slp",
                                  "CollectedData_empty.csv", "text.slp"])  # fmt: skip
def test_bad_input_raises_one_clear_error(data_dir, tmp_path, case):
    import json

    import h5py

    path = tmp_path / case
    clip = data_dir / "sleap/tracks"
    if case == "text.mp4":
        path.write_text("hello")
    elif case == "truncated.mp4":
        path.write_bytes((clip / "clip.mp4").read_bytes()[:20_000])
    elif case == "truncated.slp":
        path.write_bytes((clip / "clip.slp").read_bytes()[:5000])
    elif case == "unknown_node.slp":
        shutil.copy(data_dir / "sleap/slp_hdf5/minimal_instance.slp", path)
        path.chmod(0o644)
        with h5py.File(path, "r+") as f:
            metadata = json.loads(f["metadata"].attrs["json"])
            metadata["skeletons"][0]["links"][0]["target"] = 7
            f["metadata"].attrs["json"] = np.bytes_(json.dumps(metadata))
    elif case == "text.slp":
        path.write_text("not labels")
    else:
        path.write_text("")
    getter = get_image_reader if case.endswith(".mp4") else get_labels_reader
    reader = getter(str(path))
    assert reader is not None  # our extensions: napari must not answer "no reader found"
    with pytest.raises(PoseFileError) as info:
        reader(str(path))
    assert case in str(info.value)


def test_stack_labels_open_on_the_planes_their_video_records(tmp_path):
    """Labels of a TIFF stack open with the axes their video records (``record_axes``), each
    point on its plane; a video recording none (older files) opens with the file's own."""
    from napari_pose.core.io import save_labels
    from napari_pose.core.stacks import record_axes
    from napari_pose.core.video import open_video

    stack = np.random.default_rng(0).integers(0, 255, (5, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, stack, metadata=None)  # tifffile takes it for 5 RGB images
    skeleton = sio.Skeleton(["head", "tail"])
    video = sio.Video(filename=str(path), open_backend=False)
    frame = sio.LabeledFrame(video=video, frame_idx=4, instances=[
        sio.Instance.from_numpy(np.array([[3.0, 5.0], [7.0, 9.0]]), skeleton)])  # fmt: skip
    labels = sio.Labels(videos=[video], skeletons=[skeleton], labeled_frames=[frame])
    with open_video(video, axes="TZYX") as reader:
        record_axes(video, reader)
    save_labels(labels, tmp_path / "zt.slp")
    layers = _read(get_labels_reader, tmp_path / "zt.slp")
    ((image, kw),) = [(d, kw) for d, kw, kind in layers if kind == "image"]
    assert image.shape == (5, 3, 32, 32) and not kw["rgb"]
    assert kw["axis_labels"] == ("t", "z", "y", "x")
    np.testing.assert_array_equal(np.asarray(image), stack)
    points, points_kw = next((d, kw) for d, kw, kind in layers if kind == "points" and len(d))
    np.testing.assert_array_equal(points, [[1, 1, 5, 3], [1, 1, 9, 7]])  # frame 4: t 1, z 1
    assert points_kw["axis_labels"] == kw["axis_labels"]  # the points name the image's axes

    del video.backend_metadata["axes"]
    save_labels(labels, tmp_path / "t.slp")
    layers = _read(get_labels_reader, tmp_path / "t.slp")
    ((image, kw),) = [(d, kw) for d, kw, kind in layers if kind == "image"]
    assert image.shape == (5, 32, 32, 3) and kw["rgb"] and kw["axis_labels"] == ("t", "y", "x")
    points = next(d for d, _, kind in layers if kind == "points" and len(d))
    np.testing.assert_array_equal(points, [[4, 5, 3], [4, 9, 7]])
