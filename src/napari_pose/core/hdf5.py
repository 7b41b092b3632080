"""Guards for the HDF5 files napari-pose reads and writes, in plain h5py.

h5py never runs code from a file, which makes it the tool to look with before anything else
does:

- :func:`refuse_pickles` runs before pandas opens a DeepLabCut table. pandas reads HDF5
  through PyTables, which unpickles every attribute that looks like a pickle as soon as a node
  is touched, and every object array (how pandas' "fixed" layout stores an object column) when
  it is read. Unpickling can run any code, so a table from elsewhere could run code merely by
  being probed for its format.
- :func:`add_checksums` runs after sleap-io writes a ``.slp`` or analysis file: sleap-io stores
  its tables without checksums, so a flipped bit on a disk or in a transfer loads as a point
  hundreds of pixels off without a word. The copy puts HDF5's Fletcher-32 filter on every
  dataset that can carry it; h5py (like SLEAP, MATLAB or any HDF5 reader) verifies it on every
  read, and :func:`damaged_dataset` names the dataset that fails.
"""

from __future__ import annotations

import pickletools
from pathlib import Path

import h5py
import numpy as np

from napari_pose.core.errors import UnsafeFileError

__all__ = ["add_checksums", "damaged_dataset", "is_pandas_store", "refuse_pickles"]

#: Pickle opcodes that only build plain data (numbers, strings, bytes, lists, tuples, dicts,
#: sets) or frame the stream. Every other opcode finds or calls a Python object by name
#: (GLOBAL, REDUCE, BUILD, ...), which is how a pickle runs code.
_PLAIN_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "MEMOIZE",
    "PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET",
    "NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
    "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES",
    "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1",
    "TUPLE2", "TUPLE3", "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "EMPTY_SET", "ADDITEMS",
    "FROZENSET",
})  # fmt: skip

#: Rows copied at once by ``add_checksums``: bounds memory for large embedded videos.
_COPY_BYTES = 64 * 2**20
#: Size of the chunks ``add_checksums`` gives contiguous datasets (a checksum is per chunk).
_CHUNK_BYTES = 2**20
#: Highest gzip level of a copy: sleap-io's analysis files use 9, which made the copy of
#: clip's 4x slower (83 ms, not 22) for a file 4% smaller.
_GZIP_LEVEL = 4


def is_pandas_store(path: Path) -> bool:
    """Whether ``path`` holds a pandas table (a group with pandas' ``pandas_type`` mark).

    Any other HDF5 file cannot be a DeepLabCut table, so PyTables never needs to touch it.
    """
    with h5py.File(path, "r") as f:
        return f.visititems(lambda _, obj: True if "pandas_type" in obj.attrs else None) is True


def refuse_pickles(path: Path) -> None:
    """Raise ``UnsafeFileError`` if PyTables (hence pandas) would unpickle anything in ``path``.

    Refused: object arrays (PyTables' ``ObjectAtom``, attribute ``PSEUDOATOM == "object"``),
    whatever they hold, and attributes whose pickle finds or calls Python objects. pandas'
    own pickled attributes of "table" layouts (lists, dicts and strings) build plain data and
    pass; so do DeepLabCut's tables, whose strings are fixed-size byte arrays, not pickles.
    """
    with h5py.File(path, "r") as f:
        found = _pickle_in("/", f) or f.visititems(_pickle_in)
    if found:
        raise UnsafeFileError(
            path,
            f"{found}, which could run code when read; napari-pose does not open such files "
            "(re-save the table with numeric columns only)",
        )


def _pickle_in(name: str, obj: h5py.Group | h5py.Dataset) -> str | None:
    """What in ``obj`` would be unpickled into Python objects, or None."""
    if isinstance(obj, h5py.Dataset) and _text(obj.attrs.get("PSEUDOATOM")) == b"object":
        return f"dataset {name} holds pickled Python objects"
    for attr in obj.attrs:
        try:
            value = obj.attrs[attr]
        except (OSError, TypeError):  # types h5py cannot read are not strings, so no pickles
            continue
        if _builds_objects(value):
            return f"attribute {attr!r} of {name} is a pickle of Python objects"
    return None


def _text(value: object) -> bytes | None:
    """A string attribute as bytes (h5py gives fixed-size ones as bytes, others as str)."""
    if isinstance(value, bytes):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    return None


def _builds_objects(value: object) -> bool:
    """Whether PyTables would unpickle ``value`` into more than plain data.

    PyTables tries to unpickle any string attribute ending in ``"."``. Opcodes are checked as
    ``pickletools`` parses them: where parsing fails, unpickling fails too, so what comes after
    can never run.
    """
    if isinstance(value, np.ndarray) and value.dtype.kind in "OSU":
        return any(_builds_objects(item) for item in value.ravel())
    data = _text(value)
    if data is None or not data.endswith(b"."):
        return False
    try:
        return any(op.name not in _PLAIN_OPCODES for op, _, _ in pickletools.genops(data))
    except Exception:  # not a pickle at all (any text ending in "."), or a broken one
        return False


def add_checksums(source: Path, dest: Path) -> None:
    """Copy the HDF5 file ``source`` to ``dest`` with a Fletcher-32 checksum on each dataset
    that can carry one: values of a fixed size (numbers, records, fixed-length strings) and at
    least one of them. Data, shapes, chunking, compression (gzip at most at ``_GZIP_LEVEL``) and
    attributes are kept; scalars and variable-length strings (sleap-io's JSON) are copied as
    they are."""
    with h5py.File(source, "r") as src, h5py.File(dest, "w") as dst:
        _copy_attrs(src, dst)

        def copy(name: str, obj: h5py.Group | h5py.Dataset) -> None:
            if isinstance(obj, h5py.Group):
                _copy_attrs(obj, dst.create_group(name))
            elif obj.dtype.hasobject or obj.ndim == 0 or obj.size == 0:
                src.copy(obj, dst, name=name)
            else:
                _copy_checksummed(obj, dst, name)

        src.visititems(copy)


def _copy_checksummed(data: h5py.Dataset, dst: h5py.File, name: str) -> None:
    """A checksummed copy of ``data``. Contiguous datasets (sleap-io's tables) get chunks of
    about ``_CHUNK_BYTES`` whole rows: h5py's own guess for a table of records is ~10 kB,
    and reading 100,000 frames' points in chunks that small took twice as long."""
    row_bytes = max(1, data.size // data.shape[0] * data.dtype.itemsize)
    chunks = data.chunks or (min(data.shape[0], max(1, _CHUNK_BYTES // row_bytes)),
                             *data.shape[1:])  # fmt: skip
    level = data.compression_opts
    if data.compression == "gzip":
        level = min(level, _GZIP_LEVEL)
    copy = dst.create_dataset(
        name, shape=data.shape, dtype=data.dtype, maxshape=data.maxshape, chunks=chunks,
        compression=data.compression, compression_opts=level, shuffle=data.shuffle,
        fletcher32=True,
    )  # fmt: skip
    step = max(1, _COPY_BYTES // row_bytes)
    for start in range(0, data.shape[0], step):
        copy[start : start + step] = data[start : start + step]
    _copy_attrs(data, copy)


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    """Attributes with their exact HDF5 types (fixed or variable strings, scalar or array)."""
    for name in src.attrs:
        stored = src.attrs.get_id(name)
        dst.attrs.create(name, src.attrs[name], shape=stored.shape, dtype=stored.dtype)


def damaged_dataset(path: Path) -> str | None:
    """Name of the first checksummed dataset of ``path`` that fails its checksum, or None.

    Reads every checksummed dataset in full, so it is for explaining a failed load, not for
    every load: h5py already verifies what sleap-io reads.
    """

    def check(name: str, obj: h5py.Group | h5py.Dataset) -> str | None:
        if isinstance(obj, h5py.Dataset) and obj.fletcher32:
            try:
                for chunk in obj.iter_chunks():
                    obj[chunk]
            except OSError:
                return name
        return None

    with h5py.File(path, "r") as f:
        return f.visititems(check)
