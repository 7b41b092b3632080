"""DeepLabCut labels: project configs and CollectedData tables (CSV and pandas HDF5).

Tables are compared with DeepLabCut's own files (the openfield example project) and with what
pandas reads back, since DeepLabCut itself reads them with ``pd.read_csv``/``pd.read_hdf``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sleap_io as sio
from test_io import (
    _built_labels,
    _load_error,
    _points,
    assert_labels_equal,
    save_losing_nothing,
)

from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import detect_labels_format, load_labels, missing_videos, save_labels

FIXTURES = Path(__file__).parent / "test_io_data"


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "file is empty"),
        (
            "scorer,me,me\nbodyparts,snout,snout\ncoords,x,y\n",
            "has DeepLabCut header rows but no labelled frames",
        ),
        (
            "scorer,me,me\nparts,snout,snout\ncoords,x,y\nlabeled-data/v/img0.png,1,2\n",
            "not a DeepLabCut CSV: its first rows must be scorer, (individuals,) bodyparts",
        ),
        (
            "scorer,me,me\nbodyparts,snout,snout\ncoords,x,z\nlabeled-data/v/img0.png,1,2\n",
            "body part 'snout' has no 'y' coordinate column",
        ),
        (
            "scorer,me,me\nindividuals,a,a\nbodyparts,snout,snout\ncoords,y,likelihood\nlabeled-data/v/img0.png,1,2\n",
            "body part 'snout' of individual 'a' has no 'x' coordinate column",
        ),
        (
            "scorer,me,me\nbodyparts,snout,snout\ncoords,x,y\nlabeled-data/v/img0.png,1,left\n",
            "has non-numeric coordinates",
        ),
        (
            "scorer,me,me\nbodyparts,snout,snout\ncoords,x,y\n0,1,2\n1,3,4\n",
            "rows are not labelled image paths",
        ),
    ],
)
def test_bad_dlc_csv(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "CollectedData_me.csv"
    path.write_text(content)
    assert _load_error(path).startswith(problem)


def test_dlc_project_without_tables(tmp_path: Path) -> None:
    (tmp_path / "labeled-data" / "video").mkdir(parents=True)
    (tmp_path / "config.yaml").write_text("scorer: me\nbodyparts: [a, b]\n")
    assert "no labeled-data/*/CollectedData_* files" in _load_error(tmp_path / "config.yaml")


def test_project_table_that_is_not_dlc(tmp_path: Path) -> None:
    """The error names the bad table, not the config that led to it."""
    table = tmp_path / "labeled-data" / "video" / "CollectedData_me.h5"
    table.parent.mkdir(parents=True)
    pd.DataFrame({"a": [1.0]}).to_hdf(table, key="df_with_missing", mode="w")
    (tmp_path / "config.yaml").write_text("scorer: me\nbodyparts: [a, b]\n")
    with pytest.raises(PoseFileError, match="holds no DeepLabCut table") as info:
        load_labels(tmp_path / "config.yaml")
    assert info.value.path == table


def test_h5_table_with_repeated_columns(tmp_path: Path) -> None:
    columns = pd.MultiIndex.from_tuples(
        [("me", "snout", "x"), ("me", "snout", "y"), ("me", "snout", "x")],
        names=["scorer", "bodyparts", "coords"],
    )
    table = tmp_path / "CollectedData_me.h5"
    frame = pd.DataFrame([[1.0, 2.0, 3.0]], index=["labeled-data/v/img0.png"], columns=columns)
    frame.to_hdf(table, key="df_with_missing", mode="w", format="table")  # "fixed" refuses
    assert _load_error(table) == "repeats the column ('', 'snout', 'x')"


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def test_dlc_project_loads_every_folder(openfield: Path) -> None:
    labels = load_labels(openfield / "config.yaml")
    assert len(labels) == 116
    assert labels.skeletons[0].node_names == [
        "snout",
        "leftear",
        "rightear",
        "tailbase",
    ]  # table order
    assert labels.tracks == []
    video = labels.videos[0]
    assert len(video.filename) == 116 and missing_videos(labels) == []
    assert (
        video.filename[labels[0].frame_idx]
        == (openfield / "labeled-data/m4s1/img0000.png").as_posix()
    )
    csv = pd.read_csv(
        openfield / "labeled-data/m4s1/CollectedData_Pranav.csv", header=[0, 1, 2], index_col=0
    )
    np.testing.assert_array_equal(_points(labels).reshape(116, 8), csv.to_numpy())


@pytest.mark.parametrize("table", ["CollectedData_Pranav.csv", "CollectedData_Pranav.h5"])
def test_dlc_single_table_equals_project(openfield: Path, table: str) -> None:
    project = load_labels(openfield / "config.yaml")
    single = load_labels(openfield / "labeled-data/m4s1" / table)
    assert_labels_equal(project, single)
    assert single.provenance["dlc_scorer"] == "Pranav"


@pytest.mark.parametrize(
    "name", ["CollectedData_Pranav.csv", "CollectedData_Pranav.h5", "export.csv"]
)
def test_dlc_round_trip_of_openfield(tmp_path: Path, openfield: Path, name: str) -> None:
    original = load_labels(openfield / "config.yaml")
    save_labels(original, tmp_path / name)
    loaded = load_labels(tmp_path / name)
    assert len(loaded) == 116
    assert loaded.skeletons[0].node_names == original.skeletons[0].node_names
    np.testing.assert_array_equal(_points(loaded), _points(original))
    assert loaded.videos[0].filename[:2] == [
        "labeled-data/m4s1/img0000.png",
        "labeled-data/m4s1/img0001.png",
    ]


def test_dlc_csv_written_like_deeplabcut(tmp_path: Path, openfield: Path) -> None:
    save_labels(load_labels(openfield / "config.yaml"), tmp_path / "CollectedData_Pranav.csv")
    original = (openfield / "labeled-data/m4s1/CollectedData_Pranav.csv").read_text()
    assert (tmp_path / "CollectedData_Pranav.csv").read_text() == original


def test_dlc_h5_readable_by_pandas(tmp_path: Path, openfield: Path) -> None:
    save_labels(load_labels(openfield / "config.yaml"), tmp_path / "CollectedData_Pranav.h5")
    written = pd.read_hdf(tmp_path / "CollectedData_Pranav.h5", "df_with_missing")
    original = pd.read_hdf(
        openfield / "labeled-data/m4s1/CollectedData_Pranav.h5", "df_with_missing"
    )
    pd.testing.assert_frame_equal(written, original, check_index_type=False)


def _multi_animal_project(root: Path) -> Path:
    """A DLC >= 2.2 multi-animal project: three index columns, individuals, real images."""
    folder = root / "labeled-data" / "session1"
    folder.mkdir(parents=True)
    for i in (3, 7, 12):
        (folder / f"img{i:03d}.png").touch()
    (root / "config.yaml").write_text(
        "Task: mice\nscorer: alice\nmultianimalproject: true\nbodyparts: MULTI!\n"
        "multianimalbodyparts: [snout, tail]\nindividuals: [mouse1, mouse2]\n"
        "skeleton:\n- [snout, tail]\n- [snout, ear]\n"
    )
    (folder / "CollectedData_alice.csv").write_text(
        "scorer,,,alice,alice,alice,alice,alice,alice,alice,alice\n"
        "individuals,,,mouse1,mouse1,mouse1,mouse1,mouse2,mouse2,mouse2,mouse2\n"
        "bodyparts,,,snout,snout,tail,tail,snout,snout,tail,tail\n"
        "coords,,,x,y,x,y,x,y,x,y\n"
        "labeled-data,session1,img003.png,0.25,1.25,2.25,3.25,4.25,5.25,6.25,7.25\n"
        "labeled-data,session1,img007.png,8.25,9.25,10.25,11.25,,,,\n"
        "labeled-data,session1,img012.png,16.25,17.25,,,20.25,21.25,22.25,23.25\n"
    )
    return root / "config.yaml"


def _expected_multi_animal() -> np.ndarray:
    points = (np.arange(24, dtype=float) + 0.25).reshape(3, 2, 2, 2)
    points[1, 1] = np.nan
    points[2, 0, 1] = np.nan
    return points


def test_dlc_multi_animal_project(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="snout', 'ear"):
        labels = load_labels(_multi_animal_project(tmp_path))
    assert [t.name for t in labels.tracks] == ["mouse1", "mouse2"]
    skeleton = labels.skeletons[0]
    assert (skeleton.name, skeleton.node_names, skeleton.edge_names) == (
        "mice",
        ["snout", "tail"],
        [("snout", "tail")],
    )
    assert [len(lf) for lf in labels] == [2, 1, 2]
    assert missing_videos(labels) == []
    np.testing.assert_array_equal(labels.numpy()[[0, 1, 2]], _expected_multi_animal())


def test_dlc_h5_written_by_pandas(tmp_path: Path) -> None:
    """napari-deeplabcut's layout: pandas "fixed" HDF5, key "keypoints", 3-level row index.

    ``test_io_data/CollectedData_alice.h5`` holds the table of ``_multi_animal_project``,
    written with ``DataFrame.to_hdf(path, key="keypoints", mode="w")`` (pandas 3, PyTables
    3.11): a key other than DLC's own, and a row index unlike the openfield table's.
    """
    table = tmp_path / "labeled-data" / "session1" / "CollectedData_alice.h5"
    config = _multi_animal_project(tmp_path)
    shutil.copy(FIXTURES / "CollectedData_alice.h5", table)
    (table.parent / "CollectedData_alice.csv").unlink()
    assert detect_labels_format(table) == "dlc"
    with pytest.warns(UserWarning):
        assert_labels_equal(load_labels(table), load_labels(config))


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_dlc_multi_animal_round_trip(tmp_path: Path, suffix: str) -> None:
    with pytest.warns(UserWarning):
        original = load_labels(_multi_animal_project(tmp_path / "project"))
    path = tmp_path / "project" / "labeled-data" / "session1" / f"CollectedData_alice{suffix}"
    path.unlink(missing_ok=True)
    save_labels(original, path)
    with pytest.warns(UserWarning):
        assert_labels_equal(original, load_labels(path))


def test_dlc_project_of_several_videos(tmp_path: Path) -> None:
    """Folders become videos; body parts missing from one table are NaN there."""
    header = "scorer,me,me,me,me\nbodyparts,{0},{0},{1},{1}\ncoords,x,y,x,y\n"
    tables = {"walk": ("snout", "tail"), "rest": ("snout", "ear")}
    for video, parts in tables.items():
        folder = tmp_path / "labeled-data" / video
        folder.mkdir(parents=True)
        rows = "".join(f"labeled-data/{video}/img{i}.png,{i},1,2,3\n" for i in (4, 9))
        (folder / "CollectedData_me.csv").write_text(header.format(*parts) + rows)
    (tmp_path / "config.yaml").write_text("scorer: me\nbodyparts: [snout, tail, ear]\n")
    labels = load_labels(tmp_path / "config.yaml")
    assert labels.skeletons[0].node_names == ["snout", "ear", "tail"]  # first table is "rest"
    assert [v.filename[-1].rsplit("/", 2)[1] for v in labels.videos] == ["rest", "walk"]
    assert [(labels.videos.index(lf.video), lf.frame_idx) for lf in labels] == [
        (0, 0),
        (0, 1),
        (1, 0),
        (1, 1),
    ]
    np.testing.assert_array_equal(labels[2][0].numpy(), [[4, 1], [np.nan, np.nan], [2, 3]])


def test_dlc_from_lazy_labels_keeps_corrections_only(tmp_path: Path) -> None:
    """An untracked prediction a user corrected is not written beside its correction.

    Telling them apart needs ``from_predicted``, which sleap-io's lazy frames lack.
    """
    skeleton = sio.Skeleton(["a", "b"])
    video = sio.Video(filename=(tmp_path / "v.mp4").as_posix(), open_backend=False)
    prediction = sio.PredictedInstance.from_numpy(
        points_data=np.array([[1.0, 2.0], [3.0, 4.0]]),
        point_scores=np.ones(2),
        score=1.0,
        skeleton=skeleton,
    )
    correction = sio.Instance.from_numpy(
        points_data=np.array([[1.5, 2.0], [3.0, 4.0]]), skeleton=skeleton
    )
    correction.from_predicted = prediction
    frame = sio.LabeledFrame(video=video, frame_idx=0, instances=[correction, prediction])
    save_labels(
        sio.Labels(labeled_frames=[frame], videos=[video], skeletons=[skeleton]), tmp_path / "v.slp"
    )
    labels = load_labels(tmp_path / "v.slp")
    assert labels.is_lazy
    save_labels(labels, tmp_path / "v.csv")
    assert (tmp_path / "v.csv").read_text().splitlines()[1:] == [
        "bodyparts,a,a,b,b",
        "coords,x,y,x,y",
        "labeled-data/v/img0.png,1.5,2.0,3.0,4.0",
    ]


def test_dlc_from_sleap_labels(tmp_path: Path) -> None:
    """Tracks become individuals, extra untracked instances get their own, hidden points NaN."""
    labels = _built_labels(tmp_path / "fly.mp4")
    save_labels(labels, tmp_path / "flies.csv")
    frame = pd.read_csv(tmp_path / "flies.csv", header=[0, 1, 2, 3], index_col=0)
    assert list(frame.index) == ["labeled-data/fly/img0.png", "labeled-data/fly/img5.png"]
    assert list(dict.fromkeys(frame.columns.get_level_values(1))) == [
        "female",
        "male",
        "individual2",
    ]
    loaded = load_labels(tmp_path / "flies.csv")
    assert [t.name for t in loaded.tracks] == ["female", "male", "individual2"]
    female = loaded[0][0].numpy()
    np.testing.assert_array_equal(female, labels[0][0].numpy())  # the user's correction
    assert np.isnan(female[2]).all()
    np.testing.assert_array_equal(loaded[0][1].numpy(), labels[0][2].numpy())
    np.testing.assert_array_equal(loaded[1][0].numpy(), labels[1][0].numpy())


def test_dlc_single_animal_from_untracked_labels(tmp_path: Path, sleap_dir: Path) -> None:
    labels = load_labels(sleap_dir / "slp_hdf5/small_robot_minimal.slp")
    save_labels(labels, tmp_path / "robot.csv")
    assert (tmp_path / "robot.csv").read_text().splitlines()[1].startswith("bodyparts,")
    loaded = load_labels(tmp_path / "robot.csv")
    assert loaded.videos[0].filename == [
        "labeled-data/small_robot/img00.png",
        "labeled-data/small_robot/img79.png",
    ]
    np.testing.assert_array_equal(_points(loaded), _points(labels))


# --------------------------------------------------------------------------------------------
# Refused or warned of
# --------------------------------------------------------------------------------------------


def test_csv_with_a_repeated_body_part_is_refused(tmp_path: Path) -> None:
    """pandas renames the second ``snout`` columns ``x.1``/``y.1``: read as they are written,
    they are refused, where they used to vanish with the node."""
    path = tmp_path / "CollectedData_me.csv"
    path.write_text("scorer,me,me,me,me,me,me\nbodyparts,snout,snout,tail,tail,snout,snout\n"
                    "coords,x,y,x,y,x,y\nlabeled-data/v/img0.png,1,2,3,4,5,6\n")  # fmt: skip
    assert _load_error(path) == "repeats the column ('', 'snout', 'x')"


def test_dlc_export_warns_of_what_it_leaves_out(tmp_path: Path) -> None:
    """The built labels (frames 0 and 5 of fly.mp4) have a hidden but placed point."""
    from napari_pose.core.errors import PoseWarning

    target = tmp_path / "flies.csv"
    with pytest.warns(PoseWarning) as caught:
        save_labels(_built_labels(tmp_path / "fly.mp4"), target)
    assert sorted(str(w.message) for w in caught) == [
        f"{target}: DeepLabCut tables know frames by image file only: the 2 labelled frames "
        f"of {(tmp_path / 'fly.mp4').as_posix()} are written as labeled-data/fly/img*.png rows, "
        "and read back they are numbered 0-1 in that image folder, not by their frame numbers "
        "in the video",
        f"{target}: points marked invisible are written without their positions (DeepLabCut "
        "tables have no visibility flag: an invisible point is an empty cell): 1",
    ]


def test_dlc_export_of_a_dlc_project_does_not_warn(tmp_path: Path, openfield: Path) -> None:
    save_losing_nothing(load_labels(openfield / "config.yaml"), tmp_path / "CollectedData_me.h5")
