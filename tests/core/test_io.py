"""Labels-file I/O: format detection, loading with clear errors, video paths, atomic writers.

Round trips compare every field a labels file carries, through :func:`assert_labels_equal`.
DeepLabCut's own tables are tested in ``test_dlc.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import sleap_io as sio

from napari_pose.core import io as pose_io
from napari_pose.core.errors import MissingVideoError, PoseFileError
from napari_pose.core.io import (
    detect_labels_format,
    load_labels,
    materialize_labels,
    missing_videos,
    save_labels,
)
from napari_pose.core.paths import resolve_video_path

# --------------------------------------------------------------------------------------------
# Comparing labels
# --------------------------------------------------------------------------------------------


def _instance_table(labels: sio.Labels) -> dict[str, np.ndarray]:
    """Every instance of ``labels`` as parallel arrays, frames in (video, frame) order."""
    videos, tracks = labels.videos, labels.tracks
    rows: dict[str, list] = {k: [] for k in ("key", "predicted", "track", "xy", "visible")}
    rows.update({k: [] for k in ("point_scores", "score", "tracking_score", "from_predicted")})
    frames = sorted(labels.labeled_frames, key=lambda lf: (videos.index(lf.video), lf.frame_idx))
    for lf in frames:
        for inst in lf.instances:
            predicted = isinstance(inst, sio.PredictedInstance)
            n_nodes = len(inst.points)
            rows["key"].append((videos.index(lf.video), lf.frame_idx))
            rows["predicted"].append(predicted)
            rows["track"].append(-1 if inst.track is None else tracks.index(inst.track))
            rows["xy"].append(inst.points["xy"])
            rows["visible"].append(inst.points["visible"])
            rows["point_scores"].append(
                inst.points["score"] if predicted else np.full(n_nodes, np.nan)
            )
            rows["score"].append(inst.score if predicted else np.nan)
            rows["tracking_score"].append(
                np.nan if inst.tracking_score is None else inst.tracking_score
            )
            source = inst.from_predicted
            rows["from_predicted"].append(-1 if source is None else lf.instances.index(source))
    table = {k: np.array(v) for k, v in rows.items()}
    for key in ("score", "tracking_score"):  # .slp stores instance scores as float32
        table[key] = table[key].astype(np.float32)
    return table


def _points(labels: sio.Labels) -> np.ndarray:
    """All instances' points in frame order, full precision (``Labels.numpy`` is float32)."""
    return np.stack([inst.numpy() for lf in labels for inst in lf])


def assert_labels_equal(a: sio.Labels, b: sio.Labels) -> None:
    """Assert that two labels hold the same skeletons, videos, tracks, suggestions and poses."""
    assert [s.name for s in a.skeletons] == [s.name for s in b.skeletons]
    for sa, sb in zip(a.skeletons, b.skeletons, strict=True):
        assert sa.node_names == sb.node_names
        assert sa.edge_names == sb.edge_names
        assert {frozenset(p) for p in sa.symmetry_names} == {
            frozenset(p) for p in sb.symmetry_names
        }
    assert [v.filename for v in a.videos] == [v.filename for v in b.videos]
    assert [t.name for t in a.tracks] == [t.name for t in b.tracks]
    assert [(a.videos.index(s.video), s.frame_idx) for s in a.suggestions] == [
        (b.videos.index(s.video), s.frame_idx) for s in b.suggestions
    ]
    assert len(a) == len(b)
    ta, tb = _instance_table(a), _instance_table(b)
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def _built_labels(video_path: Path) -> sio.Labels:
    """Small labels using every field a .slp round trip must keep."""
    skeleton = sio.Skeleton(
        nodes=["head", "thorax", "wingL", "wingR"],
        edges=[("head", "thorax"), ("thorax", "wingL"), ("thorax", "wingR")],
        symmetries=[("wingL", "wingR")],
        name="fly",
    )
    video = sio.Video(filename=video_path.as_posix(), open_backend=False)
    female, male = sio.Track(name="female"), sio.Track(name="male")
    xy = np.array([[10.0, 20.0], [30.5, 40.5], [50.0, 60.0], [70.0, 80.0]])
    prediction = sio.PredictedInstance.from_numpy(
        points_data=xy,
        point_scores=np.array([0.9, 0.8, 0.7, 0.6]),
        score=0.95,
        skeleton=skeleton,
        track=female,
        tracking_score=0.5,
    )
    corrected = sio.Instance.from_numpy(points_data=xy + 1, skeleton=skeleton, track=female)
    corrected.points["visible"][2] = False  # hidden but placed: coordinates must survive
    corrected.from_predicted = prediction
    other = sio.PredictedInstance.from_numpy(
        points_data=xy + 100, point_scores=np.ones(4), score=0.5, skeleton=skeleton, track=male
    )
    untracked = sio.Instance.from_numpy(
        points_data=np.where([[1], [1], [0], [1]], xy, np.nan), skeleton=skeleton
    )
    return sio.Labels(
        labeled_frames=[
            sio.LabeledFrame(video=video, frame_idx=0, instances=[corrected, prediction, other]),
            sio.LabeledFrame(video=video, frame_idx=5, instances=[untracked]),
        ],
        videos=[video],
        skeletons=[skeleton],
        tracks=[female, male],
        suggestions=[sio.SuggestionFrame(video=video, frame_idx=7)],
    )


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("relative", "expected"),
    [
        ("sleap/tracks/clip.slp", "slp"),
        ("sleap-io-js/minimal_instance.pkg.slp", "slp"),
        ("sleap/hdf5_format_v1/centered_pair_predictions.h5", "slp"),  # old SLEAP labels as .h5
        ("sleap/hdf5_format_v1/small_robot.000_small_robot_3_frame.analysis.h5", "analysis_h5"),
        ("deeplabcut/openfield/config.yaml", "dlc"),
        ("deeplabcut/openfield/labeled-data/m4s1/CollectedData_Pranav.csv", "dlc"),
        ("deeplabcut/openfield/labeled-data/m4s1/CollectedData_Pranav.h5", "dlc"),
        ("deeplabcut/openfield/labeled-data/m4s1/img0000.png", None),
        ("sleap/tracks/clip.mp4", None),
        ("sleap/json_format_v2/minimal_instance.json", None),
        ("sleap/skeleton/fly_skeleton_legs.json", None),
        ("sleap", None),
        ("does/not/exist.slp", None),
    ],
)
def test_detects_real_files(data_dir: Path, relative: str, expected: str | None) -> None:
    assert detect_labels_format(data_dir / relative) == expected


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("junk.slp", b"\x89HDF\r\n\x1a\n but not really"),
        ("text.h5", b"hello"),
        ("zero.slp", b""),
        ("table.csv", b"a,b,c\n1,2,3\n"),
        ("binary.csv", bytes(range(256)) * 10),
        ("settings.yaml", b"name: x\nvalues: [1, 2]\n"),
        ("broken.yaml", b"key: [unclosed\n"),
        ("list.yaml", b"- bodyparts\n"),
        ("latin1.csv", "scorer,é\n".encode("latin-1")),
    ],
)
def test_detection_rejects_random_files_without_raising(
    tmp_path: Path, name: str, content: bytes
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    assert detect_labels_format(path) is None


def test_detection_rejects_hdf5_of_other_kinds(tmp_path: Path, sleap_dir: Path) -> None:
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["data"] = np.zeros(3)
    analysis_named_slp = tmp_path / "analysis.slp"
    shutil.copy(
        sleap_dir / "hdf5_format_v1/small_robot.000_small_robot_3_frame.analysis.h5",
        analysis_named_slp,
    )
    assert detect_labels_format(other) is None
    assert detect_labels_format(analysis_named_slp) is None  # content and extension disagree


# --------------------------------------------------------------------------------------------
# Loading errors
# --------------------------------------------------------------------------------------------


def _load_error(path: Path) -> str:
    with pytest.raises(PoseFileError) as info:
        load_labels(path)
    assert info.value.path == path
    assert str(info.value).startswith(str(path))
    return info.value.problem


def test_truncated_slp(tmp_path: Path, sleap_dir: Path) -> None:
    path = tmp_path / "clip_trunc.slp"
    path.write_bytes((sleap_dir / "tracks/clip.slp").read_bytes()[:3000])
    assert _load_error(path) == "not a valid SLEAP labels file (HDF5 truncated or corrupt)"


def test_slp_that_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.slp"
    path.write_text("not a labels file")
    assert _load_error(path) == "not a valid SLEAP labels file (not an HDF5 file)"


def test_slp_with_analysis_content(tmp_path: Path, sleap_dir: Path) -> None:
    path = tmp_path / "robot.slp"
    shutil.copy(sleap_dir / "hdf5_format_v1/small_robot.000_small_robot_3_frame.analysis.h5", path)
    assert "no /metadata group" in _load_error(path)


def _corrupt_skeleton(tmp_path: Path, sleap_dir: Path, edit) -> Path:
    path = tmp_path / "bad_skeleton.slp"
    shutil.copy(sleap_dir / "slp_hdf5/minimal_instance.slp", path)
    path.chmod(0o644)
    with h5py.File(path, "r+") as f:
        metadata = json.loads(f["metadata"].attrs["json"])
        edit(metadata["skeletons"][0])
        f["metadata"].attrs["json"] = np.bytes_(json.dumps(metadata))
    return path


def test_skeleton_edge_to_unknown_node(tmp_path: Path, sleap_dir: Path) -> None:
    def edit(skeleton: dict) -> None:
        skeleton["links"][0]["target"] = 7

    path = _corrupt_skeleton(tmp_path, sleap_dir, edit)
    assert (
        _load_error(path)
        == "skeleton 'Skeleton-0' has an edge to node 7 but only 2 nodes are defined"
    )


def test_skeleton_node_outside_node_list(tmp_path: Path, sleap_dir: Path) -> None:
    def edit(skeleton: dict) -> None:
        skeleton["nodes"].append({"id": 5})

    path = _corrupt_skeleton(tmp_path, sleap_dir, edit)
    assert (
        _load_error(path)
        == "skeleton 'Skeleton-0' uses node 5 but only 2 nodes are defined in the file"
    )


def test_sleap_labels_older_than_format_1(sleap_dir: Path) -> None:
    # centered_pair_predictions.h5 is SLEAP's pre-1.0 labels format, which sleap-io cannot read.
    problem = _load_error(sleap_dir / "hdf5_format_v1/centered_pair_predictions.h5")
    assert "before format 1.0 (no format_id)" in problem


def test_missing_and_unknown_files(tmp_path: Path) -> None:
    assert _load_error(tmp_path / "absent.slp") == "file not found"
    (tmp_path / "notes.txt").write_text("hi")
    assert "not a labels file napari-pose can read" in _load_error(tmp_path / "notes.txt")
    (tmp_path / "data.h5").write_text("hi")
    assert _load_error(tmp_path / "data.h5") == "not an HDF5 file"
    (tmp_path / "config.yaml").write_text("Task: x\n")
    assert "not a DeepLabCut project config" in _load_error(tmp_path / "config.yaml")


# --------------------------------------------------------------------------------------------
# Video paths
# --------------------------------------------------------------------------------------------


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """``root/data/sleap/{tracks/clip.mp4, videos/robot.mp4, labels/x.slp}`` (files are empty)."""
    sleap = tmp_path / "data" / "sleap"
    for relative in ("tracks/clip.mp4", "videos/robot.mp4", "labels/x.slp"):
        (sleap / relative).parent.mkdir(parents=True, exist_ok=True)
        (sleap / relative).touch()
    return sleap


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        ("tests/data/tracks/clip.mp4", "tracks/clip.mp4"),  # repository-relative
        ("tests/data/tracks\\clip.mp4", "tracks/clip.mp4"),  # Windows separators
        ("D:\\data\\videos\\robot.mp4", "videos/robot.mp4"),
        ("D:/social/sleap/tests/data/videos\\robot.mp4", "videos/robot.mp4"),
        ("C:/Users/x/clip.mp4", None),  # only the bare name matches, and not beside the labels
        ("../tracks/clip.mp4", "tracks/clip.mp4"),  # relative to the labels folder
        ("x.slp", "labels/x.slp"),
        ("", None),
        ("/nowhere/at/all.mp4", None),
    ],
)
def test_resolve_video_path(project: Path, stored: str, expected: str | None) -> None:
    resolved = resolve_video_path(stored, project / "labels" / "x.slp")
    assert resolved == (None if expected is None else project / expected)
    assert resolved is None or resolved.is_absolute()


def test_resolve_prefers_longest_matching_tail(project: Path) -> None:
    (project / "labels" / "clip.mp4").touch()  # same name, but not under "tracks/"
    assert (
        resolve_video_path("old/tracks/clip.mp4", project / "labels" / "x.slp")
        == project / "tracks/clip.mp4"
    )
    assert (
        resolve_video_path("other/clip.mp4", project / "labels" / "x.slp")
        == project / "labels/clip.mp4"
    )


def test_resolve_absolute_path_as_stored(project: Path) -> None:
    video = project / "tracks" / "clip.mp4"
    assert resolve_video_path(video.as_posix(), "/elsewhere/labels.slp") == video


def test_every_shared_slp_finds_its_videos(data_dir: Path) -> None:
    """All .slp files in shared/data store foreign paths, and every one resolves to a real file.

    (The package's embedded video is the package itself; its source-video reference is not
    resolved and is not needed to show frames.)
    """
    paths = sorted(data_dir.rglob("*.slp"))
    assert len(paths) == 9
    assert {p.name: missing_videos(load_labels(p)) for p in paths} == {p.name: [] for p in paths}
    for path in paths:
        for video in load_labels(path).videos:
            files = video.filename if isinstance(video.filename, list) else [video.filename]
            assert all(Path(f).is_absolute() and Path(f).exists() for f in files), path


def test_minimal_instance_video_found_in_sibling_folder(sleap_dir: Path) -> None:
    labels = load_labels(sleap_dir / "slp_hdf5/minimal_instance.slp")
    assert (
        labels.videos[0].filename
        == (sleap_dir / "json_format_v1/centered_pair_low_quality.mp4").as_posix()
    )
    assert labels.videos[0].backend is None  # located, not opened


def test_image_list_videos_resolve_each_image(sleap_dir: Path) -> None:
    labels = load_labels(sleap_dir / "siv_format_v1/small_robot_siv.slp")
    expected = [(sleap_dir / f"videos/robot{i}.jpg").as_posix() for i in range(3)]
    assert labels.videos[0].filename == expected
    assert labels.videos[0].backend_metadata["filenames"] == expected


def test_unresolvable_video_keeps_stored_path(tmp_path: Path, sleap_dir: Path) -> None:
    path = tmp_path / "minimal_instance.slp"
    shutil.copy(sleap_dir / "slp_hdf5/minimal_instance.slp", path)
    labels = load_labels(path)
    stored = "tests/data/json_format_v1/centered_pair_low_quality.mp4"
    assert labels.videos[0].filename == stored
    assert missing_videos(labels) == [stored]
    assert "centered_pair_low_quality.mp4" in str(
        MissingVideoError(path, f"video not found: {stored}")
    )


def test_saving_keeps_resolved_paths(tmp_path: Path, sleap_dir: Path) -> None:
    labels = load_labels(sleap_dir / "tracks/clip.2node.slp")
    save_labels(labels, tmp_path / "moved.slp")
    assert (
        load_labels(tmp_path / "moved.slp").videos[0].filename
        == (sleap_dir / "tracks/clip.mp4").as_posix()
    )


# --------------------------------------------------------------------------------------------
# .slp
# --------------------------------------------------------------------------------------------


def test_slp_laziness(sleap_dir: Path) -> None:
    assert load_labels(sleap_dir / "tracks/clip.slp").is_lazy
    assert not load_labels(sleap_dir / "tracks/clip.slp", lazy=False).is_lazy


@pytest.mark.parametrize("lazy", [True, False])
def test_package_frames_stay_readable(data_dir: Path, lazy: bool) -> None:
    path = data_dir / "sleap-io-js/minimal_instance.pkg.slp"
    labels = load_labels(path, lazy=lazy)
    video = labels.videos[0]
    assert video.filename == path.as_posix()
    assert labels.is_lazy == lazy
    frame = video[labels[0].frame_idx]
    assert frame.shape == (384, 384, 1)
    assert frame.std() > 0


@pytest.mark.parametrize(("lazy", "read_first"), [(True, False), (False, False), (False, True)])
def test_package_frames_survive_saving(
    tmp_path: Path, data_dir: Path, lazy: bool, read_first: bool
) -> None:
    labels = load_labels(data_dir / "sleap-io-js/minimal_instance.pkg.slp", lazy=lazy)
    expected = labels.videos[0][0]
    if not read_first:
        labels = load_labels(data_dir / "sleap-io-js/minimal_instance.pkg.slp", lazy=lazy)
    save_labels(labels, tmp_path / "copy.slp")
    copy = load_labels(tmp_path / "copy.slp")
    assert copy.videos[0].filename == (tmp_path / "copy.slp").as_posix()
    np.testing.assert_array_equal(copy.videos[0][0], expected)
    np.testing.assert_array_equal(_points(copy), _points(labels))


@pytest.mark.parametrize(
    ("relative", "lazy"),
    [
        ("tracks/clip.slp", True),  # format 1.1: sleap-io's lazy writer breaks these
        ("tracks/clip.slp", False),
        ("hdf5_format_v1/centered_pair_predictions.slp", True),
        ("hdf5_format_v1/centered_pair_predictions.slp", False),
        ("slp_hdf5/minimal_instance.slp", True),
        ("siv_format_v2/small_robot_siv_caching.slp", True),
    ],
)
def test_slp_round_trip(tmp_path: Path, sleap_dir: Path, relative: str, lazy: bool) -> None:
    original = load_labels(sleap_dir / relative, lazy=lazy)
    save_labels(original, tmp_path / "copy.slp")
    loaded = load_labels(tmp_path / "copy.slp", lazy=lazy)
    assert loaded.is_lazy == lazy
    assert_labels_equal(materialize_labels(original), materialize_labels(loaded))


def test_predictions_file_exercises_scores(sleap_dir: Path) -> None:
    """The predictions round trip above is only meaningful if the file has varied scores."""
    original = load_labels(sleap_dir / "hdf5_format_v1/centered_pair_predictions.slp", lazy=False)
    table = _instance_table(original)
    assert table["predicted"].all() and np.nanstd(table["point_scores"]) > 0
    assert len(original.tracks) == 27


def test_built_labels_round_trip(tmp_path: Path) -> None:
    original = _built_labels(tmp_path / "fly.mp4")
    save_labels(original, tmp_path / "built.slp")
    assert_labels_equal(original, load_labels(tmp_path / "built.slp", lazy=False))
    loaded = materialize_labels(load_labels(tmp_path / "built.slp"))
    assert_labels_equal(original, loaded)
    hidden = loaded[0][0]
    assert not hidden.points["visible"][2] and hidden.points["xy"][2].tolist() == [51.0, 61.0]


def test_overwriting_the_lazy_source_file(tmp_path: Path, sleap_dir: Path) -> None:
    path = tmp_path / "clip.slp"
    shutil.copy(sleap_dir / "tracks/clip.slp", path)
    labels = load_labels(path)
    expected = labels.numpy()
    save_labels(labels, path)
    np.testing.assert_array_equal(load_labels(path).numpy(), expected)


# --------------------------------------------------------------------------------------------
# SLEAP analysis HDF5
# --------------------------------------------------------------------------------------------


def test_analysis_round_trip_of_clip(tmp_path: Path, sleap_dir: Path) -> None:
    labels = load_labels(sleap_dir / "tracks/clip.slp", lazy=False)
    labels[3][0].points["visible"][5] = False  # clip.slp has no hidden points of its own
    save_labels(labels, tmp_path / "clip.analysis.h5")
    loaded = load_labels(tmp_path / "clip.analysis.h5")
    assert [t.name for t in loaded.tracks] == ["female", "male"]
    assert loaded.skeletons[0].edge_names == labels.skeletons[0].edge_names
    assert loaded.videos[0].filename == labels.videos[0].filename
    assert loaded.videos[0].backend is None
    expected, actual = labels.numpy(), loaded.numpy()
    np.testing.assert_array_equal(actual, expected)
    track = labels.tracks.index(labels[3][0].track)
    assert np.isnan(actual[labels[3].frame_idx, track, 5]).all()


def test_shared_analysis_file_loads(sleap_dir: Path) -> None:
    labels = load_labels(
        sleap_dir / "hdf5_format_v1/small_robot.000_small_robot_3_frame.analysis.h5"
    )
    assert labels.skeletons[0].node_names == ["top", "front", "rear"]
    assert labels.videos[0].filename == (sleap_dir / "videos/small_robot_3_frame.mp4").as_posix()


def test_analysis_needs_one_video(tmp_path: Path) -> None:
    labels = _built_labels(tmp_path / "a.mp4")
    labels.videos.append(sio.Video(filename=(tmp_path / "b.mp4").as_posix(), open_backend=False))
    with pytest.raises(PoseFileError, match="holds one video; these labels have 2"):
        save_labels(labels, tmp_path / "two.analysis.h5")


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a.slp", "slp"),
        ("a.pkg.slp", "slp"),
        ("a.analysis.h5", "analysis_h5"),
        ("a.h5", "analysis_h5"),
        ("CollectedData_me.h5", "dlc"),
        ("a.csv", "dlc"),
    ],
)
def test_save_format_from_name(tmp_path: Path, name: str, expected: str) -> None:
    assert pose_io._save_format(tmp_path / name) == expected


def test_save_refuses_unknown_formats(tmp_path: Path) -> None:
    labels = _built_labels(tmp_path / "fly.mp4")
    with pytest.raises(PoseFileError, match="cannot tell the labels format"):
        save_labels(labels, tmp_path / "labels.txt")
    with pytest.raises(PoseFileError, match="unknown labels format 'nwb'"):
        save_labels(labels, tmp_path / "labels.slp", format="nwb")
    assert list(tmp_path.iterdir()) == []


def test_explicit_format_overrides_extension(tmp_path: Path, openfield: Path) -> None:
    save_labels(load_labels(openfield / "config.yaml"), tmp_path / "labels.h5", format="dlc")
    assert detect_labels_format(tmp_path / "labels.h5") == "dlc"


def test_failed_save_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    labels = _built_labels(tmp_path / "fly.mp4")
    path = tmp_path / "labels.slp"
    save_labels(labels, path)
    before = path.read_bytes()

    def crash_midway(labels: sio.Labels, filename: str, **kwargs: object) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(sio, "save_slp", crash_midway)
    with pytest.raises(
        PoseFileError, match=r"could not be written as SLEAP labels \(OSError: disk full\)"
    ):
        save_labels(labels, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.slp"]


def test_failed_dlc_save_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash_midway(frame: pd.DataFrame, path: Path) -> None:
        Path(path).write_text("scorer,")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_csv", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        save_labels(_built_labels(tmp_path / "fly.mp4"), tmp_path / "labels.csv")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Labels that cannot be right: refused on load (and save), whatever the format
# --------------------------------------------------------------------------------------------


def _repeated_node_labels(video_path: Path) -> sio.Labels:
    """A 13-node skeleton whose last node repeats the first one's name."""
    names = [f"n{i}" for i in range(12)] + ["n0"]
    skeleton = sio.Skeleton(nodes=names, name="fly")
    video = sio.Video(filename=video_path.as_posix(), open_backend=False)
    instance = sio.Instance.from_numpy(np.arange(26.0).reshape(13, 2), skeleton=skeleton)
    return sio.Labels(videos=[video], skeletons=[skeleton],
                      labeled_frames=[sio.LabeledFrame(video=video, frame_idx=0,
                                                       instances=[instance])])  # fmt: skip


@pytest.mark.parametrize("name", ["p.slp", "p.analysis.h5", "p.csv", "CollectedData_me.h5"])
def test_repeated_node_names_are_refused_on_save(tmp_path: Path, name: str) -> None:
    """Exported, the CSV read back with 12 of the 13 nodes; no format may be written."""
    with pytest.raises(PoseFileError, match="two nodes named 'n0'") as error:
        save_labels(_repeated_node_labels(tmp_path / "v.mp4"), tmp_path / name)
    assert error.value.path == tmp_path / name and not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["p.slp", "p.analysis.h5"])
def test_repeated_node_names_are_refused_on_load(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    labels = _repeated_node_labels(tmp_path / "v.mp4")
    if name.endswith(".slp"):
        sio.save_slp(labels, path.as_posix())  # sleap-io writes what we refuse to
    else:
        sio.save_analysis_h5(labels, path.as_posix())
    assert "the skeleton 'fly' has two nodes named 'n0'" in _load_error(path)


def _save_with_known_size(tmp_path: Path) -> Path:
    """A .slp whose video (64 x 64, 12 frames) records its size, as the CLI's predictions do."""
    from napari_pose.core.synthetic import make_synthetic, to_labels, write_video

    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    save_labels(to_labels(data, str(tmp_path / "v.mp4")), tmp_path / "p.slp")
    return tmp_path / "p.slp"


def _set_point(path: Path, row: int, x: float) -> None:
    with h5py.File(path, "r+") as f:
        points = f["points"][:]
        points["x"][row] = x
        f["points"][:] = points


@pytest.mark.parametrize("lazy", [True, False])
@pytest.mark.parametrize(
    ("x", "problem"),
    [
        (np.inf, "an infinite coordinate"),
        (-np.inf, "an infinite coordinate"),
        (200.0, "more than a frame size outside its 64x64 frame"),
        (-65.0, "more than a frame size outside its 64x64 frame"),
    ],
)
def test_impossible_coordinates_are_refused_naming_the_frame(
    tmp_path: Path, lazy: bool, x: float, problem: str
) -> None:
    path = _save_with_known_size(tmp_path)
    _set_point(path, 5 * 5 + 2, x)  # frame 5, third node
    with pytest.raises(PoseFileError) as error:
        load_labels(path, lazy=lazy)
    assert error.value.path == path
    assert error.value.problem.startswith(f"frame 5 of {(tmp_path / 'v.mp4').as_posix()}: node ")
    assert problem in error.value.problem and "the file is damaged" in error.value.problem


@pytest.mark.parametrize("x", [np.nan, 127.0, -63.0])
def test_unplaced_points_and_points_near_the_frame_load(tmp_path: Path, x: float) -> None:
    path = _save_with_known_size(tmp_path)
    _set_point(path, 27, x)
    assert load_labels(path).labeled_frames[5].instances[0].numpy()[2, 0] == pytest.approx(
        x, nan_ok=True)  # fmt: skip


def test_coordinates_beyond_a_million_pixels_are_refused_without_a_frame_size(
    tmp_path: Path, sleap_dir: Path
) -> None:
    """clip.slp records no video size: only coordinates no video can have are refused."""
    path = tmp_path / "clip.slp"
    shutil.copy(sleap_dir / "tracks/clip.slp", path)
    _set_point(path, 0, 1e7)
    assert "a coordinate beyond 1e+06 pixels" in _load_error(path)
    _set_point(path, 0, 5e5)
    load_labels(path)


def test_dlc_table_with_infinite_coordinates_names_the_image(tmp_path: Path) -> None:
    table = tmp_path / "CollectedData_me.csv"
    table.write_text("scorer,me,me\nbodyparts,snout,snout\ncoords,x,y\n"
                     "labeled-data/v/img0.png,1,2\nlabeled-data/v/img1.png,inf,2\n")  # fmt: skip
    problem = _load_error(table)
    assert problem.startswith("frame 1 of labeled-data/v/img1.png: node 'snout' is at (inf, 2)")


# --------------------------------------------------------------------------------------------
# What exports leave out
# --------------------------------------------------------------------------------------------


def test_analysis_export_warns_of_what_it_leaves_out(tmp_path: Path) -> None:
    """The built labels have a hidden but placed point and an untracked instance among
    tracked ones, and here a second female in frame 0: the analysis layout keeps none."""
    from napari_pose.core.errors import PoseWarning

    labels = _built_labels(tmp_path / "fly.mp4")
    female = labels.tracks[0]
    labels[0].instances.append(sio.Instance.from_numpy(np.ones((4, 2)), labels.skeletons[0],
                                                       track=female))  # fmt: skip
    with pytest.warns(PoseWarning) as caught:
        save_labels(labels, tmp_path / "fly.analysis.h5")
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        f"{tmp_path / 'fly.analysis.h5'}: instances left out, as an analysis file of tracked "
        "labels holds one instance per track and frame: 1 without a track, 1 on a track "
        "already taken in their frame",
        f"{tmp_path / 'fly.analysis.h5'}: points marked invisible are written without their "
        "positions (analysis files have no visibility flag: an invisible point is NaN): 1",
    ]


def save_losing_nothing(labels, path: Path) -> None:
    """Save ``labels`` to ``path``, failing the test if the export warns of a loss."""
    import warnings

    from napari_pose.core.errors import PoseWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", PoseWarning)
        save_labels(labels, path)


def test_exports_that_lose_nothing_do_not_warn(tmp_path: Path, sleap_dir: Path) -> None:
    save_losing_nothing(load_labels(sleap_dir / "tracks/clip.slp"), tmp_path / "clip.analysis.h5")


def test_errors_survive_pickling(tmp_path: Path) -> None:
    """Errors raised on a dask worker reach the client pickled, and must still name the file."""
    import pickle

    from napari_pose.core.errors import VideoFileError

    error = pickle.loads(pickle.dumps(VideoFileError(tmp_path / "v.mp4", "frame 3 is damaged")))
    assert type(error) is VideoFileError and error.path == tmp_path / "v.mp4"
    assert str(error) == f"{tmp_path / 'v.mp4'}: frame 3 is damaged"
