"""Multi-page TIFF and OME-TIFF stacks as lazy dask arrays with named axes and pixel sizes.

Microscopy stacks easily outgrow memory, so ``open_tiff`` reads only the file's tags: pixels
are read per plane when napari (or a model) asks for them. Uncompressed files are memory-mapped;
compressed ones are read one page per dask chunk. Axes use tifffile's letters, with a generic
page axis ('I' or 'Q', as in a plain multi-page TIFF) taken as time, so the axes are drawn from
'T' (time), 'Z' (depth), 'C' (channel), 'Y', 'X' and 'S' (RGB samples). Where a file names its
axes wrongly or not at all (a plain multi-page TIFF of a (t, z) stack is just pages), the user
gives them (``open_tiff(path, axes="TZYX")``).
"""

from __future__ import annotations

import logging
import struct
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from xml.etree import ElementTree

import attrs
import dask.array as da
import numpy as np
import sleap_io as sio
import tifffile

from napari_pose.core.errors import VideoFileError
from napari_pose.core.video import FrameReader

#: Lengths in OME's units, in micrometres (OME's default unit).
_MICROMETRES = {
    "pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6
}  # fmt: skip


@attrs.frozen
class Stack:
    """A lazily read image stack.

    Attributes:
        data: The pixels, a dask array with one chunk per plane.
        axes: One letter per axis of ``data``, e.g. ``"TZCYX"``.
        scale: Physical size of a pixel in micrometres along the axes whose size the file
            records (from OME metadata), e.g. ``{"Z": 2.0, "Y": 0.25, "X": 0.25}``; for the
            scale of a napari layer, axes missing here have size 1.
        path: The file.
    """

    data: da.Array
    axes: str
    scale: dict[str, float]
    path: Path


#: Axis letters a user may give ``open_tiff``: time, depth, channel, rows, columns, RGB samples.
AXIS_LETTERS = "TZCYXS"


def open_tiff(path: str | Path, axes: str | None = None) -> Stack:
    """Open the first series of a TIFF or OME-TIFF without reading its pixels.

    ``axes`` (letters from ``AXIS_LETTERS``, any case, one per axis of the data) replaces the
    axes the file records; the file's own (as ``Stack.axes`` has them) are taken as they are,
    even where tifffile puts RGB samples before other axes, so axes recorded from a stack
    (``record_axes``) always open it again. Pixel sizes follow the letters: OME records one per
    dimension name (``PhysicalSizeZ``...), and a file whose axes are mislabelled, e.g. z-slices
    saved as time points, still records the right z-step for whichever axis really is Z.

    Raises:
        VideoFileError: The file is missing, not a TIFF, or truncated, or ``axes`` do not fit
            its data.
    """
    path = Path(path)
    if not path.is_file():
        raise VideoFileError(path, "file not found")
    with _logged_errors() as errors:
        try:
            tif = tifffile.TiffFile(path)
        except (ValueError, struct.error, OSError) as error:  # TiffFileError is a ValueError
            raise VideoFileError(path, f"not a TIFF file, or truncated ({error})") from error
        try:
            series = tif.series[0]
            if errors:
                raise VideoFileError(path, f"truncated TIFF, or corrupt: {errors[0]}")
            recorded = normalise_axes(series.axes)
            if axes is None or axes.upper() == recorded:  # the file's own axes always fit it
                axes = recorded
            else:
                axes = _given_axes(path, axes, series.shape, recorded)
            scale = _ome_scale(tif.ome_metadata, axes)
            offset = series.dataoffset
            if offset is not None:
                data = _memory_mapped(path, series, offset)
                tif.close()
            else:
                data = _page_reads(path, tif, series)
        except BaseException:
            tif.close()
            raise
    return Stack(data=data, axes=axes, scale=scale, path=path)


class _ErrorList(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _logged_errors() -> Iterator[list[str]]:
    """Collect the errors tifffile logs while parsing.

    tifffile recovers from a broken chain of pages (a truncated file) by logging an error and
    returning the pages it could read, which would silently open a shorter stack.
    """
    handler = _ErrorList()
    tifffile_logger = logging.getLogger("tifffile")
    tifffile_logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        tifffile_logger.removeHandler(handler)


def normalise_axes(axes: str) -> str:
    """tifffile's axis letters with the first generic page axis ('I' or 'Q') named time."""
    if "T" in axes:
        return axes
    for generic in "IQ":
        if generic in axes:
            return axes.replace(generic, "T", 1)
    return axes


def _given_axes(path: Path, given: str, shape: tuple[int, ...], recorded: str) -> str:
    """``given`` in capitals, checked against the ``shape`` it names; every problem is reported
    at once, with the file's own ``recorded`` axes, so one look at the message fixes the flag.
    """
    axes = given.upper()
    unknown = sorted(set(axes) - set(AXIS_LETTERS))
    repeated = sorted({a for a in axes if axes.count(a) > 1})
    missing = [a for a in "YX" if a not in axes]
    checks = {
        f"{len(axes)} letters for {len(shape)} axes": len(axes) != len(shape),
        f"unknown {', '.join(unknown)}": bool(unknown),
        f"{', '.join(repeated)} more than once": bool(repeated),
        f"no {' and no '.join(missing)}": bool(missing),
        "S (RGB samples) not last": "S" in axes[:-1],
    }
    problems = [problem for problem, failed in checks.items() if failed]
    if problems:
        raise VideoFileError(
            path,
            f"axes {given!r} do not fit the data of shape {tuple(shape)} (read from the file "
            f"as {recorded!r}): {'; '.join(problems)}; expected {len(shape)} of the letters "
            f"{AXIS_LETTERS}, each at most once, with Y and X, and S only last",
        )
    return axes


def _plane_chunks(path: Path, series: tifffile.TiffPageSeries) -> tuple[int, ...]:
    """One chunk per page: size 1 along the axes that index pages, whole along the rest."""
    page_shape = series.keyframe.shape
    n_page_axes = len(series.shape) - len(page_shape)
    if n_page_axes < 0 or tuple(series.shape[n_page_axes:]) != tuple(page_shape):
        raise VideoFileError(
            path,
            f"unsupported layout: pages of shape {page_shape} in a series of shape {series.shape}",
        )
    return (1,) * n_page_axes + tuple(page_shape)


def _memory_mapped(path: Path, series: tifffile.TiffPageSeries, offset: int) -> da.Array:
    """An uncompressed series stored contiguously from byte ``offset``, mapped rather than read."""
    try:
        pixels = np.memmap(path, dtype=series.dtype, mode="r", offset=offset, shape=series.shape)
    except ValueError as error:  # the file is shorter than its tags say
        raise VideoFileError(path, f"truncated TIFF: {error}") from error
    data = da.from_array(pixels, chunks=_plane_chunks(path, series), name=False)
    return data.astype(series.dtype.newbyteorder("="))


def _page_reads(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> da.Array:
    """A compressed or scattered series, read (and decompressed) one page per chunk."""
    last = series.pages[-1]
    if last is None:  # tifffile's placeholder for a page the file lacks
        raise VideoFileError(path, "truncated TIFF: the last page of the series is missing")
    end = max(o + n for o, n in zip(last.dataoffsets, last.databytecounts, strict=True))
    if end > path.stat().st_size:
        raise VideoFileError(path, f"truncated TIFF: page data ends at byte {end}, past the end")
    source = _TiffPages(path, tif, series)
    return da.from_array(
        source,
        chunks=_plane_chunks(path, series),
        name=False,
        lock=False,  # _TiffPages locks the file itself
        asarray=False,
        meta=np.empty((0,) * source.ndim, source.dtype),
    )


class _TiffPages:
    """A series as the array-like that dask slices: leading axes pick pages, the rest pixels.

    Holds the open ``TiffFile`` and closes it when the last dask array using it is collected.
    """

    def __init__(self, path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries):
        self.path = path
        self.shape = tuple(series.shape)
        self.dtype = series.dtype.newbyteorder("=")
        self.ndim = len(self.shape)
        self._pages = series.pages
        self._page_shape = tuple(series.keyframe.shape)
        self._lead_shape = self.shape[: self.ndim - len(self._page_shape)]
        self._lock = threading.Lock()  # one file position shared by every page read
        weakref.finalize(self, tif.close)

    def __getitem__(self, key: tuple) -> np.ndarray:
        n_lead = len(self._lead_shape)
        numbers = np.arange(len(self._pages)).reshape(self._lead_shape)[key[:n_lead]]
        block = np.empty((numbers.size, *self._page_shape), self.dtype)
        for i, number in enumerate(numbers.ravel()):
            block[i] = self._read_page(int(number))
        return block.reshape(numbers.shape + self._page_shape)[(..., *key[n_lead:])]

    def _read_page(self, number: int) -> np.ndarray:
        try:
            with self._lock:
                page = self._pages[number]
                if page is None:  # tifffile's placeholder for a page the file lacks
                    raise ValueError("the page is missing from the file")
                return page.asarray()
        except Exception as error:  # each codec raises its own error type
            raise VideoFileError(self.path, f"page {number} cannot be read: {error}") from error


def _ome_scale(ome_xml: str | None, axes: str) -> dict[str, float]:
    """Pixel sizes in micrometres from the first OME ``Pixels`` element, for axes present."""
    if not ome_xml:
        return {}
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rpartition("}")[2] == "Pixels"), None)
    if pixels is None:
        return {}
    scale = {}
    for axis in "ZYX":
        size = pixels.get(f"PhysicalSize{axis}")
        unit = pixels.get(f"PhysicalSize{axis}Unit", "µm")
        if axis in axes and size is not None and unit in _MICROMETRES:
            scale[axis] = float(size) * _MICROMETRES[unit]
    return scale


def to_uint8(image: np.ndarray) -> np.ndarray:
    """``image`` as 8 bits, the range models are trained and run on.

    8-bit images are returned as they are; anything else (12/16-bit microscopy, floats) is
    stretched from its own minimum to its maximum, plane by plane, so a dim deep plane and a
    bright surface one both use the full range, the same way in training and prediction.
    """
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    if image.size == 0:
        return image.astype(np.uint8)
    low, high = float(image.min()), float(image.max())
    if high <= low:
        return np.zeros(image.shape, np.uint8)
    return np.round((image - low) * (255.0 / (high - low))).astype(np.uint8)


class StackPlaneReader(FrameReader):
    """The 2-D planes of a stack as frames: every (t, z, ...) position in C order, each plane
    ``(y, x)`` or ``(y, x, c)`` in 8 bits (``to_uint8``), read lazily.

    This is the frame numbering labels of stacks use (``frame_idx`` is the flat plane index),
    so predicting plane ``i`` lands on the plane the image layer shows at that index.

    Attributes:
        plane_shape: Sizes of the axes that number planes, e.g. ``(t, z)``; ``(1,)`` for a
            single plane.
        plane_axes: Their letters, e.g. ``"TZ"`` (empty for a single plane), so a caller can
            tell time from depth, e.g. to track along time only.
        axes: All the stack's axes, as read (e.g. ``"TZCYX"``): what labels of these planes
            record (``record_axes``) to be opened on the same planes again.
    """

    def __init__(self, stack: Stack) -> None:
        channel_axes = [i for i, a in enumerate(stack.axes) if a in "CS"]
        plane_axes = [i for i, a in enumerate(stack.axes) if a not in "CSYX"]
        order = [*plane_axes, stack.axes.index("Y"), stack.axes.index("X"), *channel_axes]
        data = stack.data.transpose(order)
        lead = data.shape[: len(plane_axes)]
        self.plane_shape: tuple[int, ...] = tuple(lead) or (1,)
        self.plane_axes = "".join(stack.axes[i] for i in plane_axes)
        self.axes = stack.axes
        self._planes = data.reshape(int(np.prod(lead)) if lead else 1, *data.shape[len(lead) :])
        if len(channel_axes) > 1:  # e.g. C and S together: fold into one last axis
            self._planes = self._planes.reshape(*self._planes.shape[:3], -1)
        self.path = stack.path
        self.shape = tuple(int(n) for n in self._planes.shape)
        self.dtype = np.dtype(np.uint8)
        self.fps = None

    def _read(self, index: int) -> np.ndarray:
        return to_uint8(np.asarray(self._planes[index]))


def planes_to_dask(reader: StackPlaneReader) -> da.Array:
    """The planes of ``reader`` as a lazy ``(*plane_shape, y, x[, c])`` dask array, one plane
    a chunk: the stack with its plane axes (e.g. ``(t, z)``) as napari shows it, in the 8 bits
    the model sees, so plane ``i`` of the labels sits at ``np.unravel_index(i, plane_shape)``.

    One graph layer, like ``video_to_dask``: reshaping a flat frame array instead builds a
    task per plane, slow to build and to slice for stacks of many planes.
    """
    source = _Planes(reader)
    return da.from_array(
        source,
        chunks=(1,) * len(reader.plane_shape) + (-1,) * (source.ndim - len(reader.plane_shape)),
        name=False,
        lock=False,
        asarray=False,
        inline_array=True,
        meta=np.empty((0,) * source.ndim, reader.dtype),
    )


class _Planes:
    """A reader's planes as the array-like that dask slices: leading axes pick planes."""

    def __init__(self, reader: StackPlaneReader) -> None:
        self.reader = reader
        self.numbers = np.arange(len(reader)).reshape(reader.plane_shape)
        self.shape = (*reader.plane_shape, *reader.shape[1:])
        self.dtype = reader.dtype
        self.ndim = len(self.shape)

    def __getitem__(self, key: tuple) -> np.ndarray:
        n_lead = self.numbers.ndim
        numbers = self.numbers[key[:n_lead]]
        frame_shape = self.shape[n_lead:]
        block = np.empty((numbers.size, *frame_shape), self.dtype)
        for i, number in enumerate(numbers.ravel().tolist()):
            block[i] = self.reader[number]
        pixels = (slice(None),) * numbers.ndim + tuple(key[n_lead:])
        return block.reshape(numbers.shape + frame_shape)[pixels]


def record_axes(video: sio.Video, reader: StackPlaneReader) -> None:
    """Record in ``video`` the axes ``reader`` read its stack with (``backend_metadata["axes"]``,
    where ``open_video`` finds them) and the shape of its planes as frames, so labels saved
    with it number and show planes as they were predicted or labelled, whatever the file says.

    The video is closed, and left closed: sleap-io saves a closed video's backend metadata as
    it is, but an open one's through a fixed list of keys per backend, and its own TIFF backend
    (which takes a stack for frames its own way, e.g. 3 z-slices for RGB) saves neither the
    axes nor this shape.
    """
    video.close()
    video.open_backend = False
    n_planes, height, width, *channels = reader.shape
    video.backend_metadata.update(
        axes=reader.axes,
        shape=[n_planes, height, width, channels[0] if channels else 1],
        grayscale=not channels,
    )
