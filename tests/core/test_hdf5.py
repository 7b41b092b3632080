"""HDF5 guards: pickles refused before pandas reads a table, checksums on what we write.

The pickle tests build files whose pickles create a marker file when unpickled: if the marker
ever appears, code from the file ran.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import h5py
import pandas as pd
import pytest
import sleap_io as sio
import tables

from napari_pose.core import dlc
from napari_pose.core.errors import PoseFileError, PoseWarning, UnsafeFileError
from napari_pose.core.hdf5 import add_checksums
from napari_pose.core.io import detect_labels_format, load_labels, save_labels

FIXTURES = Path(__file__).parent / "test_io_data"


def _touch(path: str) -> None:
    Path(path).write_text("code from a data file ran")


class _Payload:
    """Unpickles into a call of ``_touch``: what an attacker's object would do, harmlessly."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return _touch, (self.marker,)


def _dlc_frame() -> pd.DataFrame:
    columns = pd.MultiIndex.from_tuples([("me", "snout", "x"), ("me", "snout", "y")],
                                        names=["scorer", "bodyparts", "coords"])  # fmt: skip
    return pd.DataFrame([[1.0, 2.0]], index=["labeled-data/v/img0.png"], columns=columns)


def _assert_refused(table: Path, marker: Path, what: str) -> None:
    """Opening and probing ``table`` fail naming it and ``what``, and no code ever ran."""
    with pytest.raises(UnsafeFileError, match=what) as error:
        load_labels(table)
    assert error.value.path == table
    with pytest.raises(UnsafeFileError, match=what):
        detect_labels_format(table)
    with pytest.raises(UnsafeFileError, match=what):
        dlc.is_dlc_file(table)
    assert not marker.exists()


def test_pickled_object_column_is_refused_before_it_runs(tmp_path: Path) -> None:
    """A DLC table with an object column (pandas' "fixed" layout pickles it)."""
    marker = tmp_path / "pwned"
    frame = _dlc_frame()
    frame[("me", "note", "x")] = [_Payload(marker)]
    table = tmp_path / "CollectedData_me.h5"
    with pytest.warns(pd.errors.PerformanceWarning):  # pandas: "will pickle"
        frame.to_hdf(table, key="df_with_missing", mode="w", format="fixed")
    _assert_refused(table, marker, "dataset .* holds pickled Python objects")
    pd.read_hdf(table)  # the same file as pandas reads it: the payload works
    assert marker.exists()


def test_pickled_attribute_is_refused_before_it_runs(tmp_path: Path) -> None:
    """PyTables unpickles attributes as soon as pandas looks for tables: even a valid DLC
    table with one such attribute must not be opened."""
    marker = tmp_path / "pwned"
    table = tmp_path / "labels.h5"
    _dlc_frame().to_hdf(table, key="keypoints", mode="w", format="table")
    with tables.open_file(table, "a") as f:
        f.root.keypoints._v_attrs.note = _Payload(marker)
    marker.unlink(missing_ok=True)  # PyTables may read the attribute back as it writes it
    _assert_refused(table, marker, "attribute 'note' of keypoints is a pickle of Python objects")
    pd.read_hdf(table)  # the same file as pandas reads it: the payload works
    assert marker.exists()


def test_real_dlc_tables_are_not_pickles(openfield: Path) -> None:
    """DLC's own tables, fixed layout (napari-deeplabcut's) and table layout (DLC's), open:
    their strings are byte arrays and pandas' pickled attributes build plain lists."""
    assert len(load_labels(FIXTURES / "CollectedData_alice.h5")) == 3
    assert len(load_labels(openfield / "labeled-data/m4s1/CollectedData_Pranav.h5")) == 116


def test_hdf5_files_of_other_programs_are_left_to_them(tmp_path: Path) -> None:
    """An HDF5 file that is no pandas table is not ours, even with pickled attributes: PyTables
    never opens it, so nothing is unpickled and nothing is refused."""
    marker = tmp_path / "pwned"
    other = tmp_path / "other.h5"
    with tables.open_file(other, "w") as f:
        f.root._v_attrs.note = _Payload(marker)
    marker.unlink(missing_ok=True)
    assert detect_labels_format(other) is None and not marker.exists()
    tables.open_file(other).close()  # PyTables alone runs the payload
    assert marker.exists()


# --------------------------------------------------------------------------------------------
# Checksums
# --------------------------------------------------------------------------------------------


def _flip_byte_in(path: Path, dataset: str) -> None:
    """Flip one bit in the middle of ``dataset``'s stored bytes, as a bad disk would."""
    with h5py.File(path, "r") as f:
        data = f[dataset]
        if data.chunks:
            info = data.id.get_chunk_info(0)
            offset, size = info.byte_offset, info.size
        else:
            offset, size = data.id.get_offset(), data.id.get_storage_size()
    with open(path, "r+b") as fh:
        fh.seek(offset + size // 2)
        byte = fh.read(1)
        fh.seek(offset + size // 2)
        fh.write(bytes([byte[0] ^ 0x04]))


@pytest.mark.parametrize("name", ["clip.slp", "clip.analysis.h5"])
def test_damage_after_saving_is_caught(tmp_path: Path, sleap_dir: Path, name: str) -> None:
    saved = tmp_path / name
    with warnings.catch_warnings():  # what the analysis layout leaves out is tested elsewhere
        warnings.simplefilter("ignore", PoseWarning)
        save_labels(load_labels(sleap_dir / "tracks/clip.slp"), saved)
    with h5py.File(saved, "r") as f:
        dataset = "points" if name.endswith(".slp") else "tracks"
        assert f[dataset].fletcher32
    load_labels(saved)
    _flip_byte_in(saved, dataset)
    with pytest.raises(PoseFileError, match=f"dataset {dataset} is damaged") as error:
        load_labels(saved)
    assert error.value.path == saved


def test_checksummed_copy_is_the_same_file(tmp_path: Path, sleap_dir: Path) -> None:
    """Everything sleap-io wrote reads back the same: tables, JSON, attributes, shapes."""
    raw = tmp_path / "raw.slp"
    sio.save_slp(sio.load_slp(str(sleap_dir / "tracks/clip.slp")), str(raw))
    add_checksums(raw, tmp_path / "sums.slp")
    with h5py.File(raw, "r") as a, h5py.File(tmp_path / "sums.slp", "r") as b:
        names = []
        a.visit(names.append)
        assert names and sorted(b) == sorted(a)
        for name in ["/", *names]:
            assert dict(a[name].attrs) == dict(b[name].attrs), name
            if isinstance(a[name], h5py.Dataset):
                assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape
                old, new = a[name][()], b[name][()]
                same = (
                    old.tolist() == new.tolist()
                    if old.dtype.hasobject
                    else (old.tobytes() == new.tobytes())
                )  # bit for bit: NaN equals NaN
                assert same, name


def test_temporaries_of_killed_saves_go_when_the_file_is_opened(tmp_path: Path,
                                                                sleap_dir: Path) -> None:  # fmt: skip
    """Only this file's own temporaries, old enough not to be a save in progress."""
    labels = tmp_path / "clip.slp"
    save_labels(load_labels(sleap_dir / "tracks/clip.slp"), labels)
    old, fresh = tmp_path / ".0123abcd.clip.slp", tmp_path / ".89abcdef.clip.slp"
    others = [tmp_path / ".0123abcd.other.slp", tmp_path / ".notes.clip.slp",
              tmp_path / "sub" / ".0123abcd.clip.slp"]  # fmt: skip
    for path in [old, fresh, *others]:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"half a save")
    an_hour_ago = time.time() - 3600
    for path in [old, *others]:
        os.utime(path, (an_hour_ago, an_hour_ago))
    load_labels(labels)
    assert not old.exists()
    assert fresh.exists() and all(path.exists() for path in others)
