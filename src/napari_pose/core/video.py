"""Frame-accurate, lazy access to videos, image folders and SLEAP's embedded frames.

Every reader has the same small interface (``FrameReader``): ``shape`` is ``(n, h, w)`` for
grayscale and ``(n, h, w, 3)`` for colour, ``reader[i]`` returns exactly frame ``i``, and
``read_block(start, stop)`` returns a contiguous run. ``video_to_dask`` wraps any reader as a lazy
dask array for a napari Image layer.

``VideoReader`` is where the work is. Compressed videos can only be decoded forward from a
keyframe, and SLEAP's clips have a keyframe every 250 frames, so naive ``seek`` + ``decode`` is
either slow or, where a library trusts the container's frame counter after a seek, off by a few
frames. On open the reader demuxes the packets once (no decoding, milliseconds) to learn every
frame's presentation timestamp (pts) and which frames are keyframes. A read then seeks to the
keyframe at or before the frame, decodes forward and recognises frames by pts alone. The decoder
stays open between reads, so stepping forward never seeks, and a background thread decodes the
next frames while the user looks at the current one, so scrubbing stays instant.
"""

from __future__ import annotations

import re
import threading
import weakref
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import av
import dask.array as da
import imageio.v3 as iio
import numpy as np
import sleap_io as sio

from napari_pose.core.errors import VideoFileError

#: Suffixes that ``open_video`` hands to PyAV.
MEDIA_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"})
#: Suffixes that ``ImageSequenceReader`` collects from a folder.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
#: Single files opened as stacks of planes (``core.stacks``) rather than as one image.
STACK_SUFFIXES = frozenset({".tif", ".tiff"})


def is_stack_file(name: str | Path | list) -> bool:
    """Whether ``name`` (a video's filename) is one TIFF file, read as a stack of planes."""
    return not isinstance(name, list) and Path(name).suffix.lower() in STACK_SUFFIXES


#: Default bound of a ``VideoReader``'s frame cache: 512 frames of 1024 x 1024 gray.
DEFAULT_CACHE_BYTES = 512 * 2**20
#: Frames decoded ahead in the background after each read.
DEFAULT_PREFETCH = 16

# Frames this far before a requested one are decoded (and cached) in full on the way to it,
# for users stepping back a little; frames further back are passed through as cheaply as the
# codec allows.
_KEEP_BEHIND = 16

# Largest difference between RGB channels still counted as gray: chroma off neutral by one code
# value (encoder rounding) moves a channel by about two.
_GRAY_TOLERANCE = 3


class FrameReader(ABC):
    """A sequence of same-sized frames, read one at a time or in contiguous blocks.

    Subclasses set ``path``, ``shape``, ``dtype`` and ``fps`` and implement ``_read``; the base
    class checks indices so every reader reports a bad index in the same words.
    """

    path: Path
    shape: tuple[int, ...]
    dtype: np.dtype
    fps: float | None

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def grayscale(self) -> bool:
        return len(self.shape) == 3

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, index: int) -> np.ndarray:
        if not isinstance(index, int | np.integer):
            raise TypeError(f"frame index must be an integer, not {type(index).__name__}")
        return self._read(self._check_index(int(index)))

    def __iter__(self) -> Iterator[np.ndarray]:
        # Without this, ``for frame in reader`` would run past the end: Python's fallback
        # iteration stops on IndexError, and a bad index here is a VideoFileError.
        return (self[i] for i in range(self.n_frames))

    def read_block(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` to ``stop - 1`` as one ``(stop - start, ...)`` array."""
        self._check_block(start, stop)
        return np.stack([self._read(i) for i in range(start, stop)])

    def close(self) -> None:
        """Release the file; readers without an open file have nothing to do."""

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, shape={self.shape})"

    @abstractmethod
    def _read(self, index: int) -> np.ndarray:
        """Frame ``index``, already checked to be in range."""

    def _check_index(self, index: int) -> int:
        n = self.n_frames
        if not -n <= index < n:
            raise VideoFileError(self.path, f"frame {index} out of range: video has {n} frames")
        return index % n

    def _check_block(self, start: int, stop: int) -> None:
        if not 0 <= start < stop <= self.n_frames:
            raise VideoFileError(
                self.path,
                f"frames {start}:{stop} out of range: video has {self.n_frames} frames",
            )


class FrameCache:
    """A thread-safe LRU of decoded frames holding at most ``capacity`` frames.

    Cached frames are made read-only, since the same array is handed to every caller.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._frames: OrderedDict[int, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, index: int) -> np.ndarray | None:
        with self._lock:
            frame = self._frames.get(index)
            if frame is not None:
                self._frames.move_to_end(index)
            return frame

    def put(self, index: int, frame: np.ndarray) -> None:
        frame.flags.writeable = False
        with self._lock:
            self._frames[index] = frame
            self._frames.move_to_end(index)
            while len(self._frames) > self.capacity:
                self._frames.popitem(last=False)

    def __contains__(self, index: int) -> bool:
        return index in self._frames

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def nbytes(self) -> int:
        with self._lock:
            return sum(frame.nbytes for frame in self._frames.values())


class _PrefetchState:
    """What the prefetch thread shares with its reader, without keeping the reader alive.

    ``waiting`` counts foreground reads queued for the decoder: the prefetch thread gives way
    whenever it is non-zero. ``generation`` increases with every request so that an old request
    stops as soon as a newer one arrives.
    """

    def __init__(self) -> None:
        self.condition = threading.Condition()
        self.request: tuple[int, int] | None = None
        self.generation = 0
        self.waiting = 0
        self.closed = False


class VideoReader(FrameReader):
    """Frame-accurate, thread-safe random access to one video file through PyAV.

    Args:
        path: Any file FFmpeg can demux (mp4, avi, mov, mkv, ...).
        grayscale: Force grayscale (``True``) or colour (``False``) frames. By default a video is
            grayscale when its pixel format is gray or its first frame has no colour, as with
            SLEAP's fly clips, which are stored as yuv420p.
        cache_bytes: Upper bound on the memory of decoded frames kept for re-reading.
        cache_frames: Optional upper bound in frames, whichever bound is smaller wins.
        prefetch: Frames decoded ahead in the background after each read (0: none).

    Raises:
        VideoFileError: The file is missing, not a video, or truncated.
    """

    _next: int | None  # index of the frame the decoder gives next; None: unknown, seek first

    def __init__(
        self,
        path: str | Path,
        *,
        grayscale: bool | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        cache_frames: int | None = None,
        prefetch: int = DEFAULT_PREFETCH,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoFileError(self.path, "file not found")
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as error:
            raise VideoFileError(
                self.path, f"not a video FFmpeg can read, or truncated ({error.strerror})"
            ) from error
        self._lock = threading.Lock()  # one decoder: every seek and decode holds this
        self._skip_before = [0]  # frames shown before this pts may be left undecoded
        self._state = _PrefetchState()
        self._finalizer = weakref.finalize(
            self, _shut_down, self._state, self._lock, self._container
        )
        if not self._container.streams.video:
            self.close()
            raise VideoFileError(self.path, "the file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads: decoding forward is most of a read
        try:
            self._pts, self._keyframes = self._build_index()
            first = self._decode_first()
        except VideoFileError:
            self.close()
            raise
        except av.FFmpegError as error:
            self.close()
            raise VideoFileError(self.path, f"corrupt video: {error.strerror}") from error
        if grayscale is None:
            grayscale = _looks_gray(first)
        self._convert = _to_gray if grayscale else _to_rgb
        height, width = first.height, first.width
        self.shape = (len(self._pts), height, width) + (() if grayscale else (3,))
        self.dtype = np.dtype(np.uint8)
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None

        frame_bytes = int(np.prod(self.shape[1:]))
        capacity = cache_bytes // frame_bytes
        self._cache = FrameCache(capacity if cache_frames is None else min(capacity, cache_frames))
        # Prefetching more than half the cache would evict the frames being looked at.
        self._prefetch = min(prefetch, self._cache.capacity // 2)
        if self._prefetch > 0:
            threading.Thread(
                target=_prefetch_loop,
                args=(weakref.ref(self), self._state),
                name=f"prefetch {self.path.name}",
                daemon=True,
            ).start()

    # -- public ------------------------------------------------------------------------------

    @property
    def keyframes(self) -> np.ndarray:
        """Indices of the keyframes, where decoding can start after a seek."""
        return self._keyframes

    @property
    def cache(self) -> FrameCache:
        """The decoded frames kept for re-reading (to inspect its size and contents)."""
        return self._cache

    def read_block(self, start: int, stop: int) -> np.ndarray:
        """Frames ``start`` to ``stop - 1`` in one forward pass of the decoder."""
        self._check_block(start, stop)
        cached = [self._cache.get(i) for i in range(start, stop)]
        missing = [i for i, frame in enumerate(cached) if frame is None]
        decoded: dict[int, np.ndarray] = {}
        if missing:
            with self._foreground():
                for k in missing:
                    decoded[k] = self._decode_until(start + k)
        self._request_prefetch(stop)
        return np.stack([decoded[k] if frame is None else frame for k, frame in enumerate(cached)])

    def close(self) -> None:
        """Stop the prefetch thread and close the file (also done on garbage collection)."""
        self._finalizer()

    # -- reading -----------------------------------------------------------------------------

    def _read(self, index: int) -> np.ndarray:
        frame = self._cache.get(index)
        if frame is None:
            with self._foreground():
                frame = self._decode_until(index)
        self._request_prefetch(index + 1)
        return frame

    @contextmanager
    def _foreground(self) -> Iterator[None]:
        """Hold the decoder for a user's read, asking the prefetch thread to give way."""
        state = self._state
        with state.condition:
            state.waiting += 1
        try:
            with self._lock:
                if state.closed:  # checked under the lock, which close() takes to free the file
                    raise VideoFileError(self.path, "the video has been closed")
                yield
        finally:
            with state.condition:
                state.waiting -= 1

    def _decode_until(self, index: int) -> np.ndarray:
        """Decode forward to frame ``index`` (decoder lock held), caching every frame passed."""
        frame = self._cache.get(index)  # the prefetch thread may have decoded it meanwhile
        while frame is None:
            decoded, array = self._decode_next(index)
            if decoded == index:
                frame = array
        return frame

    def _decode_next(self, target: int) -> tuple[int, np.ndarray | None]:
        """Decode one frame on the way to ``target``; returns its index and pixels.

        Seeks first unless the decoder can reach ``target`` by going forward without passing a
        keyframe it could have jumped to. Returns index -1 for a frame that is not one of
        ours, such as an open-GOP frame from before the keyframe just sought to.
        """
        keyframe = self._keyframe_before(target)
        expected = self._next  # index of the frame the decoder gives next, when known
        if expected is None or not keyframe <= expected <= target:
            self._seek(keyframe)
            expected = keyframe
        # Frames well before the target are only decoded for the frames that refer to them:
        # the decoder may drop those no frame refers to (B-frames, most of an H.264 GOP).
        self._skip_before[0] = int(self._pts[max(target - _KEEP_BEHIND, 0)])
        frame = next(self._frames, None)
        if frame is None:
            self._next = None
            raise VideoFileError(
                self.path, f"frame {target} cannot be decoded: the video ends before it"
            )
        index = self._index_of(frame.pts)
        if index < expected:
            return -1, None
        self._next = index + 1
        if index < target - _KEEP_BEHIND:  # passing through on a seek: no need for its pixels
            return index, None
        array = self._convert(frame)
        self._cache.put(index, array)
        if index > target:
            self._next = None
            raise VideoFileError(
                self.path, f"frame {target} cannot be decoded: its data is missing or corrupt"
            )
        return index, array

    def _seek(self, keyframe: int) -> None:
        self._container.seek(
            int(self._pts[keyframe]), stream=self._stream, backward=True, any_frame=False
        )
        self._frames = _decode_packets(self._container, self._stream, self._skip_before)
        self._next = keyframe  # frames before it that come out of the decoder are ignored

    def _keyframe_before(self, index: int) -> int:
        # Frames before the first keyframe (a stream cut mid-GOP) decode, if at all, from the
        # start of the file.
        k = np.searchsorted(self._keyframes, index, side="right") - 1
        return int(self._keyframes[k]) if k >= 0 else 0

    def _index_of(self, pts: int | None) -> int:
        if pts is None:
            return -1
        k = int(np.searchsorted(self._pts, pts))
        return k if k < len(self._pts) and self._pts[k] == pts else -1

    # -- opening -----------------------------------------------------------------------------

    def _build_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted frame timestamps and keyframe indices, read from packets without decoding."""
        stamps, keyframe, n_packets = [], [], 0
        for packet in self._container.demux(self._stream):
            if packet.pts is None:  # the empty packet that flushes the decoder
                continue
            n_packets += 1
            if not packet.is_discard:  # edit-list packets that are decoded but never shown
                stamps.append(packet.pts)
                keyframe.append(packet.is_keyframe)
        if not stamps:
            raise VideoFileError(self.path, "the video has no frames")
        if n_packets < self._stream.frames:
            raise VideoFileError(
                self.path,
                f"truncated video: the header lists {self._stream.frames} frames "
                f"but only {n_packets} are in the file",
            )
        pts = np.asarray(stamps, dtype=np.int64)
        order = np.argsort(pts, kind="stable")
        return pts[order], np.flatnonzero(np.asarray(keyframe)[order])

    def _decode_first(self) -> av.VideoFrame:
        self._seek(0)
        frame = next(self._frames, None)
        if frame is None:
            raise VideoFileError(self.path, "no frame of the video can be decoded")
        self._next = None  # this frame was not cached (its layout was unknown): reads seek anew
        return frame

    # -- prefetch ----------------------------------------------------------------------------

    def _request_prefetch(self, start: int) -> None:
        stop = min(start + self._prefetch, self.n_frames)
        if start >= stop:
            return
        state = self._state
        with state.condition:
            state.request = (start, stop)
            state.generation += 1
            state.condition.notify()

    def _prefetch_range(self, start: int, stop: int, generation: int) -> None:
        """Decode frames ``start:stop`` into the cache, one frame per hold of the decoder.

        Stops as soon as a foreground read waits, a newer request arrives or the reader closes;
        errors are left for the foreground read of that frame to report.
        """
        state = self._state
        for index in range(start, stop):
            while index not in self._cache:
                if state.waiting or state.closed or state.generation != generation:
                    return
                with self._lock:
                    if state.closed:
                        return
                    try:
                        decoded, _ = self._decode_next(index)
                    except VideoFileError:
                        return
                if decoded == index:  # even if the cache could not keep it
                    break


def _decode_packets(
    container: av.container.InputContainer, stream: av.VideoStream, skip_before: list[int]
) -> Iterator[av.VideoFrame]:
    """Decoded frames from the current position, skipping packets the decoder rejects.

    Packets shown before ``skip_before[0]`` (a timestamp the reader moves as it reads) are
    decoded only if other frames refer to them, which halves the cost of reaching a frame deep
    in a long GOP. A corrupt packet costs only its own frames (reported by ``_decode_next`` when one is
    asked for), not every frame after it, nor the earlier frames the decoder was still holding
    back for reordering when it was fed the bad packet. (A module function, not a method, so
    that the reader holding this generator is not in a reference cycle and is freed as soon
    as it is dropped.)
    """
    codec = stream.codec_context
    for packet in container.demux(stream):
        skip = packet.pts is not None and packet.pts < skip_before[0]
        codec.skip_frame = "NONREF" if skip else "DEFAULT"
        try:
            frames = stream.decode(packet)
        except av.FFmpegError:
            continue
        yield from frames


def _prefetch_loop(reader_ref: weakref.ref[VideoReader], state: _PrefetchState) -> None:
    """Body of a reader's prefetch thread: serve the latest request until the reader closes.

    The thread holds the reader only while it works on a request, so an unused reader can still
    be garbage collected; its finalizer then closes ``state`` and wakes this loop to exit.
    """
    while True:
        with state.condition:
            while state.request is None and not state.closed:
                state.condition.wait()
            request = state.request
            if state.closed or request is None:  # the wait ends on a request or on closing
                return
            (start, stop), state.request = request, None
            generation = state.generation
        reader = reader_ref()
        if reader is None:
            return
        reader._prefetch_range(start, stop, generation)
        del reader


def _shut_down(
    state: _PrefetchState, lock: threading.Lock, container: av.container.InputContainer
) -> None:
    with state.condition:
        state.closed = True
        state.condition.notify_all()
    with lock:  # wait for a decode in progress before freeing the decoder
        container.close()


def _looks_gray(frame: av.VideoFrame) -> bool:
    """Whether a frame has no colour: a gray pixel format, or equal RGB channels everywhere."""
    if frame.format.name.startswith(("gray", "ya")):
        return True
    rgb = frame.to_ndarray(format="rgb24").astype(np.int16)
    return int(np.abs(np.diff(rgb, axis=-1)).max()) <= _GRAY_TOLERANCE


def _to_gray(frame: av.VideoFrame) -> np.ndarray:
    """Luma as 0-255 gray, exactly as FFmpeg's ``gray`` conversion and SLEAP's RGB decoding.

    For 8-bit YUV the luma plane is the gray image, so it is read directly (limited-range luma,
    16-235, stretched through a lookup table), skipping a full software-scaler pass.
    """
    if frame.format.name in _YUV8:
        plane = frame.planes[0]
        # A plane is a buffer; PyAV's stubs do not declare the buffer protocol.
        pixels = np.frombuffer(plane, np.uint8)  # type: ignore[call-overload]
        luma = pixels.reshape(frame.height, plane.line_size)
        luma = luma[:, : frame.width]
        full_range = frame.format.name.startswith("yuvj") or frame.color_range == _JPEG_RANGE
        return luma.copy() if full_range else np.take(_LIMITED_TO_FULL, luma)  # 2x faster than []
    return frame.to_ndarray(format="gray")


# 8-bit YUV formats whose first plane is luma, one byte per pixel.
_YUV8 = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv440p", "yuv411p", "yuv410p",
                   "yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "nv12", "nv21"})  # fmt: skip
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG: luma already spans 0-255
_LIMITED_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _match_layout(image: np.ndarray, grayscale: bool) -> np.ndarray:
    """An ``(h, w)`` or ``(h, w, c)`` image as ``(h, w)`` gray or ``(h, w, 3)`` RGB.

    Alpha is dropped; colour becomes gray by BT.601 luma, as FFmpeg converts video frames.
    """
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        image = image[..., :3]
        if grayscale:
            luma = image @ np.array([0.299, 0.587, 0.114])
            return np.round(luma).astype(image.dtype)
        return image
    return image if grayscale else np.repeat(image[..., None], 3, axis=-1)


def _is_gray_image(image: np.ndarray) -> bool:
    if image.ndim == 2 or image.shape[-1] == 1:
        return True
    rgb = image[..., :3].astype(np.int32)
    return int(np.abs(np.diff(rgb, axis=-1)).max()) <= _GRAY_TOLERANCE


def _natural_key(path: Path) -> list[str | int]:
    """Sort key ordering names as people do: ``img2`` before ``img10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


class ImageSequenceReader(FrameReader):
    """A folder (or an explicit list) of image files read as the frames of one video.

    Args:
        source: A folder, whose PNG/JPEG/TIFF/BMP files are taken in natural name order, or a
            list of image files, taken in the order given (as SLEAP stores image videos).
        grayscale: Force grayscale or colour; by default taken from the first image.
        fps: Frame rate, unknown for images unless given.
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        *,
        grayscale: bool | None = None,
        fps: float | None = None,
    ) -> None:
        if isinstance(source, str | Path):
            self.path = Path(source)
            if not self.path.is_dir():
                raise VideoFileError(self.path, "folder not found")
            files = [p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
            self.files = sorted(files, key=_natural_key)
            if not self.files:
                raise VideoFileError(self.path, "the folder has no image files")
        else:
            self.files = [Path(p) for p in source]
            if not self.files:
                raise ValueError("an image sequence needs at least one file")
            self.path = self.files[0]
        first = self._load(0)
        if grayscale is None:
            grayscale = _is_gray_image(first)
        self._grayscale = grayscale
        first = _match_layout(first, grayscale)
        self.shape = (len(self.files), *first.shape)
        self.dtype = first.dtype
        self.fps = fps

    def _load(self, index: int) -> np.ndarray:
        path = self.files[index]
        if not path.is_file():
            raise VideoFileError(path, f"frame {index}: image file not found")
        try:
            return iio.imread(path)
        except Exception as error:  # imageio raises a different type for every plugin
            raise VideoFileError(path, f"frame {index}: not a readable image: {error}") from error

    def _read(self, index: int) -> np.ndarray:
        image = _match_layout(self._load(index), self._grayscale)
        if image.shape != self.shape[1:]:
            raise VideoFileError(
                self.files[index],
                f"frame {index} has shape {image.shape}, unlike the first frame's {self.shape[1:]}",
            )
        return image.astype(self.dtype, copy=False)


class SleapVideoReader(FrameReader):
    """Any ``sleap_io.Video`` (frames embedded in a ``.pkg.slp``, HDF5 or TIFF) as a reader.

    Frames keep the numbers of the video they were taken from, which are the numbers the labels
    use: a package holding frames 3 and 90 of a clip has 91 frames here, and the frames that
    were not embedded read as black.
    """

    def __init__(self, video: sio.Video, *, grayscale: bool | None = None) -> None:
        filename = video.filename
        self.path = Path(filename[0] if isinstance(filename, list) else filename)
        self.video = video
        self._lock = threading.Lock()  # sleap-io backends keep one open file handle
        try:
            if not video.is_open:
                video.open()
            _, height, width, channels = video.shape
            frame_map = getattr(video.backend, "frame_map", None)
            n_frames = max(frame_map) + 1 if frame_map else len(video)
            self._stored = frame_map
        except Exception as error:  # sleap-io surfaces h5py, imageio and OS errors as they are
            raise VideoFileError(self.path, f"cannot open the video: {error}") from error
        self._grayscale = channels == 1 if grayscale is None else grayscale
        frame_shape = (height, width) if self._grayscale else (height, width, 3)
        self.shape = (int(n_frames), *map(int, frame_shape))
        self.dtype = np.dtype(np.uint8)
        self.fps = video.fps

    def _read(self, index: int) -> np.ndarray:
        if self._stored and index not in self._stored:
            return np.zeros(self.shape[1:], self.dtype)
        try:
            with self._lock:
                image = self.video[index]
        except Exception as error:  # as in __init__
            raise VideoFileError(self.path, f"frame {index} cannot be read: {error}") from error
        return _match_layout(image, self._grayscale).astype(self.dtype, copy=False)

    def close(self) -> None:
        self.video.close()


def open_video(source: str | Path | sio.Video, *, grayscale: bool | None = None,
               axes: str | None = None) -> FrameReader:  # fmt: skip
    """The right reader for a video file, an image folder or a ``sleap_io.Video``.

    Media files go to PyAV (``VideoReader``), (OME-)TIFF files to ``StackPlaneReader`` (each
    plane of a (t, z) stack is a frame), folders and image lists to ``ImageSequenceReader``,
    and everything else sleap-io can read (embedded frames of a ``.pkg.slp``, HDF5 videos) to
    ``SleapVideoReader``. For a ``sleap_io.Video`` the
    grayscale setting recorded in the labels file is kept unless ``grayscale`` says otherwise.
    ``axes`` replaces a TIFF stack's recorded axes (see ``open_tiff``), which decides what a
    frame is; other sources have no such axes, so giving them ``axes`` is an error
    (``ValueError``) rather than silently ignored. A ``sleap_io.Video`` of a stack opens with
    the axes its labels were made with (``stacks.record_axes``) unless ``axes`` says otherwise,
    so its frame numbers mean the same planes again.
    """
    if axes is not None:
        name = source.filename if isinstance(source, sio.Video) else source
        if not is_stack_file(name) or Path(name).is_dir():
            raise ValueError(f"{name}: axes ({axes!r}) can only be given for TIFF stacks")
    if isinstance(source, sio.Video):
        if grayscale is None:
            grayscale = source.backend_metadata.get("grayscale")
        filename = source.filename
        if isinstance(filename, list):
            return ImageSequenceReader(filename, grayscale=grayscale)
        path = Path(filename)
        stack = is_stack_file(path)
        if path.suffix.lower() not in MEDIA_SUFFIXES and not path.is_dir() and not stack:
            return SleapVideoReader(source, grayscale=grayscale)
        if stack and axes is None:
            axes = source.backend_metadata.get("axes")
    else:
        path = Path(source)
    if path.is_dir():
        return ImageSequenceReader(path, grayscale=grayscale)
    if is_stack_file(path):
        from napari_pose.core.stacks import StackPlaneReader, open_tiff  # stacks reads frames

        return StackPlaneReader(open_tiff(path, axes))
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSequenceReader([path], grayscale=grayscale)
    return VideoReader(path, grayscale=grayscale)


class _FrameSource:
    """A reader seen as the array-like that ``dask.array.from_array`` slices.

    dask fuses napari's ``array[i]`` with the chunk's getter, so the key here is the final
    selection and a single-frame view reads exactly one frame, whatever the chunk size.
    """

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.shape = reader.shape
        self.dtype = reader.dtype
        self.ndim = len(reader.shape)

    def __getitem__(self, key: tuple) -> np.ndarray:
        frames, pixels = key[0], key[1:]
        if isinstance(frames, int | np.integer):
            return self.reader[int(frames)][pixels]
        selected = range(self.shape[0])[frames]
        if len(selected) == 0:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None), *pixels)]
        if selected.step == 1:
            block = self.reader.read_block(selected.start, selected.stop)
        else:
            block = np.stack([self.reader[i] for i in selected])
        return block[(slice(None), *pixels)]


def video_to_dask(reader: FrameReader, frames_per_chunk: int = 1) -> da.Array:
    """A lazy dask array of every frame of ``reader``, ``frames_per_chunk`` frames a chunk.

    The graph is one blockwise layer, not one task per frame, so building it for 100,000
    frames takes milliseconds, and indexing one frame touches one chunk. The reader is
    thread-safe, so any dask scheduler (napari uses the threaded one) may read concurrently.
    """
    source = _FrameSource(reader)
    chunks = (frames_per_chunk,) + (-1,) * (source.ndim - 1)
    return da.from_array(
        source,
        chunks=chunks,
        name=False,  # a random name: hashing the reader would be slow and meaningless
        lock=False,
        asarray=False,
        inline_array=True,
        meta=np.empty((0,) * source.ndim, reader.dtype),
    )
