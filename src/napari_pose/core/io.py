"""The one entry point for labels files: detect, load and save SLEAP and DeepLabCut labels.

The in-memory model is sleap-io's ``Labels``. sleap-io reads and writes ``.slp`` and SLEAP
analysis HDF5, and those go through it untouched apart from three repairs:

- every failure becomes one :class:`PoseFileError` that says what is wrong with which file
  (sleap-io lets h5py's ``OSError`` or a bare ``ValueError: 7 is not in list`` escape);
- stored video paths are resolved wherever the project now lives (:mod:`.paths`);
- lazily loaded labels from ``.slp`` files older than format 1.2 are materialised before saving,
  because sleap-io 0.9.5's fast lazy writer copies their 9-column instance table verbatim but
  stamps format 1.4, producing a file that neither it nor SLEAP can read back.

DeepLabCut configs and CollectedData tables are read and written by :mod:`.dlc`, not by
sleap-io (see there for why); this module only dispatches to it.

Loaded labels are checked before anyone sees them, whatever the format: a skeleton with two
nodes of one name (nodes are matched by name everywhere, so one would silently vanish) and
coordinates that cannot be real (infinite, or far outside the frame: a damaged file) are
refused, naming the file and the frame.

Every writer is atomic: a crash or a full disk never leaves a half-written labels file behind,
and the temporary files of saves that were killed are removed when their file is next saved or
opened. The HDF5 files written here (``.slp``, analysis) carry Fletcher-32 checksums
(:func:`.hdf5.add_checksums`), so damage done to them later is caught on reading.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import secrets
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import sleap_io as sio

from napari_pose.core import dlc
from napari_pose.core.dlc import CONFIG_SUFFIXES, HDF5_SUFFIXES
from napari_pose.core.errors import PoseFileError, PoseWarning, UnsafeFileError
from napari_pose.core.hdf5 import add_checksums, damaged_dataset
from napari_pose.core.paths import missing_videos, relink_videos
from napari_pose.core.pose_arrays import labels_to_arrays

__all__ = [
    "detect_labels_format",
    "load_labels",
    "materialize_labels",
    "missing_videos",
    "repeated_node",
    "save_labels",
]

FORMAT_NAMES = {
    "slp": "SLEAP labels",
    "analysis_h5": "SLEAP analysis HDF5",
    "dlc": "DeepLabCut labels",
}

#: sleap-io's lazy writer mis-saves instance tables of files older than this (see module doc).
_FIRST_LAZY_SAFE_SLP_FORMAT = 1.2
#: Pixels beyond which a coordinate is damage, not a pose, whatever the frame size; within a
#: frame of recorded size, points more than one frame size outside it are refused as well.
MAX_COORDINATE = 1e6


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def detect_labels_format(path: str | Path) -> str | None:
    """Say which labels format ``path`` holds: ``'slp'``, ``'analysis_h5'``, ``'dlc'`` or None.

    Both the extension and the content must agree, and only headers are read, because napari
    calls this on every file dropped on the viewer to decide whether our reader takes it.

    - ``'slp'``: ``.slp``/``.pkg.slp`` (or SLEAP's old ``.h5`` labels) with a ``metadata``
      group and a ``frames`` dataset.
    - ``'analysis_h5'``: ``.h5`` with ``tracks`` and ``node_names``.
    - ``'dlc'``: a DeepLabCut ``config.yaml`` listing ``bodyparts`` or
      ``multianimalbodyparts``, or a CSV/HDF5 table with DLC's scorer/(individuals)/bodyparts/
      coords header (``CollectedData_*`` or any other).

    Raises:
        UnsafeFileError: A pandas HDF5 table holds pickled objects. Such a file is not quietly
            "not ours" like other unreadable ones: reading it could run code, and the user
            must learn why it did not open.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return None
        if suffix == ".slp":
            return "slp" if _sniff_hdf5(path) == "slp" else None
        if suffix in HDF5_SUFFIXES:
            return _sniff_hdf5(path)
        if suffix == ".csv" or suffix in CONFIG_SUFFIXES:
            return "dlc" if dlc.is_dlc_file(path) else None
    except UnsafeFileError:
        raise
    except Exception:  # any other unreadable file simply is not ours
        return None
    return None


def _sniff_hdf5(path: Path) -> str | None:
    """Tell SLEAP labels, SLEAP analysis and DLC tables apart by their top-level layout.

    h5py looks first: most HDF5 files dropped on napari are SLEAP's, and only pandas knows
    a DLC table's column names.
    """
    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        if "metadata" in f and "frames" in f:
            return "slp"
        if "tracks" in f and "node_names" in f:
            return "analysis_h5"
    return "dlc" if dlc.is_dlc_file(path) else None


def _hdf5_problem(path: Path) -> str | None:
    """Say why ``path`` cannot be opened as HDF5, or None when it opens."""
    if not h5py.is_hdf5(path):
        return "not an HDF5 file"
    try:
        with h5py.File(path, "r"):
            return None
    except OSError:
        return "HDF5 truncated or corrupt"


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_labels(path: str | Path, *, lazy: bool = True) -> sio.Labels:
    """Load any supported labels file into sleap-io ``Labels`` with its videos located.

    Args:
        path: A ``.slp``/``.pkg.slp``, SLEAP analysis ``.h5``, DeepLabCut ``config.yaml``
            (all ``labeled-data/*/CollectedData_*``) or a single DLC ``.csv``/``.h5`` table.
        lazy: For ``.slp``, keep the raw HDF5 tables instead of building Python objects
            (``labels.is_lazy``): fast to load, display and save, but read-only; get an
            editable copy with :func:`materialize_labels`. Other formats are always eager.

    Returns:
        The labels. Video paths are resolved with :func:`~.paths.resolve_video_path`; those
        not found keep their stored value and are listed by :func:`missing_videos`. Videos
        are not opened, except that embedded (``.pkg.slp``) videos open themselves on the
        first frame read, since only sleap-io can decode them.

    Raises:
        PoseFileError: The file is missing, unrecognised, truncated or inconsistent; the
            message names the file and the problem.
    """
    path = Path(path)
    if not path.is_file():
        raise PoseFileError(
            path, "is a folder, not a labels file" if path.is_dir() else "file not found"
        )
    _remove_stale_temps(path)
    fmt = detect_labels_format(path) or _format_from_suffix(path)
    try:
        labels = _LOADERS[fmt](path, lazy)
    except PoseFileError:
        raise
    except Exception as exc:  # third-party failures become one clear error
        if fmt == "slp":
            raise PoseFileError(path, _diagnose_slp(path, exc)) from exc
        problem = _damage(path) if fmt == "analysis_h5" else None
        raise PoseFileError(
            path, problem or f"not a valid {FORMAT_NAMES[fmt]} file ({_describe(exc)})"
        ) from exc
    for skeleton in labels.skeletons:
        problem = repeated_node(skeleton)
        if problem is not None:
            raise PoseFileError(path, f"{problem}; rename one in the program that wrote it")
    _check_coordinates(labels, path)
    relink_videos(labels, path)
    return labels


def repeated_node(skeleton: sio.Skeleton) -> str | None:
    """Say which node name ``skeleton`` repeats, or None. Nodes are matched by name when
    labels are converted, merged or exported, so of two nodes with one name, one is lost."""
    repeated = next((n for n, count in Counter(skeleton.node_names).items() if count > 1), None)
    if repeated is None:
        return None
    named = f" {skeleton.name!r}" if skeleton.name else ""
    return f"the skeleton{named} has two nodes named {repeated!r}"


def _frame_bounds(videos: list[sio.Video]) -> np.ndarray:
    """``(n_videos, 2, 2)``: per video, the lowest and highest plausible ``(x, y)``.

    One frame size around the frame where the video's size is recorded (reading the video to
    learn it would make loading slow), else ``+-MAX_COORDINATE``.
    """
    shapes = [v.shape if v.shape is not None and len(v.shape) == 4 else None for v in videos]
    size = np.array([(s[2], s[1]) if s and min(s[1:3]) > 0 else (np.inf, np.inf)
                     for s in shapes], float).reshape(-1, 2)  # fmt: skip
    return np.stack([-np.minimum(size, MAX_COORDINATE), np.minimum(2 * size, MAX_COORDINATE)], 1)


def _check_coordinates(labels: sio.Labels, path: Path) -> None:
    """Refuse infinite or absurd coordinates (``_frame_bounds``), naming the first frame that
    has one. NaN is a point not placed, and fine.

    A lazily loaded ``.slp`` is first checked on its raw point tables against the tightest
    bounds of all its videos, a few milliseconds for 100,000 frames; only a point outside
    them costs the per-video check, which needs each point's frame.
    """
    bounds = _frame_bounds(labels.videos)
    store = getattr(labels, "_lazy_store", None)
    if store is not None and len(bounds):
        low, high = bounds[:, 0].max(axis=0), bounds[:, 1].min(axis=0)
        tables = (store.points_data, store.pred_points_data)
        if all(_plausible(np.stack([t["x"], t["y"]], -1), low, high).all() for t in tables):
            return
    for skeleton in labels.skeletons:
        arrays = labels_to_arrays(labels, skeleton)
        limits = bounds[arrays.video]
        bad = ~_plausible(arrays.xy, limits[:, None, 0], limits[:, None, 1]).all(axis=1)
        if not bad.any():
            continue
        row = int(np.argmax(bad))
        node = int(np.argmax(~_plausible(arrays.xy[row], *limits[row])))
        x, y = arrays.xy[row, node]
        video = arrays.videos[arrays.video[row]]
        frame = int(arrays.frame[row])
        name = video.filename[frame] if isinstance(video.filename, list) else video.filename
        if np.isinf([x, y]).any():
            why = "an infinite coordinate"
        elif np.abs(limits[row]).max() >= MAX_COORDINATE:
            why = f"a coordinate beyond {MAX_COORDINATE:g} pixels"
        else:
            width, height = limits[row, 1] / 2
            why = f"more than a frame size outside its {width:g}x{height:g} frame"
        raise PoseFileError(
            path,
            f"frame {frame} of {name}: node {skeleton.node_names[node]!r} is at ({x:g}, {y:g}), "
            f"{why}; the file is damaged (instances with such points: {int(bad.sum())})",
        )


def _plausible(xy: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per point ``(..., 2) -> (...)``: not placed (NaN), or inside ``[low, high]``."""
    return (np.isnan(xy) | ((xy >= low) & (xy <= high))).all(axis=-1)


def _format_from_suffix(path: Path) -> str:
    """Pick the loader whose diagnosis best explains why detection rejected ``path``."""
    suffix = path.suffix.lower()
    if suffix == ".slp":
        return "slp"
    if suffix == ".csv" or suffix in CONFIG_SUFFIXES:
        return "dlc"
    if suffix in HDF5_SUFFIXES:
        problem = _hdf5_problem(path) or (
            "HDF5 file holds neither SLEAP labels, a SLEAP analysis export nor DeepLabCut labels"
        )
        raise PoseFileError(path, problem)
    raise PoseFileError(
        path,
        "not a labels file napari-pose can read (.slp, SLEAP analysis .h5, or DeepLabCut "
        "config.yaml / CollectedData .csv or .h5)",
    )


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _load_slp(path: Path, lazy: bool) -> sio.Labels:
    labels = sio.load_slp(path.as_posix(), lazy=lazy, open_videos=False)
    for video in labels.videos:
        # Frames embedded in a .pkg.slp are readable only through sleap-io's HDF5 backend.
        if video.backend_metadata.get("filename") == ".":
            video.open_backend = True
    return labels


def materialize_labels(labels: sio.Labels) -> sio.Labels:
    """Return an editable (eager) copy of lazy labels, or ``labels`` itself when eager.

    Use this instead of ``labels.materialize()``: sleap-io 0.9.5 builds lazy instances without
    their ``from_predicted`` links (a corrected prediction would be saved as a fresh user
    instance), so they are restored here from the raw instance table the lazy labels keep.
    """
    if not labels.is_lazy:
        return labels
    store = labels._lazy_store
    eager = labels.materialize()
    instances = [inst for lf in eager.labeled_frames for inst in lf.instances]
    starts = store.frames_data["instance_id_start"].astype(np.int64)
    counts = store.frames_data["instance_id_end"].astype(np.int64) - starts
    # Row of the instance table behind each materialised instance, frame by frame.
    rows = np.arange(counts.sum()) + np.repeat(starts - np.cumsum(counts) + counts, counts)
    table = store.instances_data[rows]
    by_id = dict(zip(table["instance_id"].tolist(), instances, strict=True))
    for inst, source in zip(instances, table["from_predicted"].tolist(), strict=True):
        if source >= 0:
            inst.from_predicted = by_id.get(source)
    return eager


def _load_analysis(path: Path, lazy: bool) -> sio.Labels:
    """Load through sleap-io with a closed video: left to itself it opens the stored path."""
    with h5py.File(path, "r") as f:
        stored = _text(f["video_path"][()]) if "video_path" in f else ""
        metadata = json.loads(f.attrs.get("video_backend_metadata", "{}"))
    video = sio.Video(filename=stored, backend_metadata=metadata, open_backend=False)
    return sio.load_analysis_h5(path.as_posix(), video=video)


def _load_dlc(path: Path, lazy: bool) -> sio.Labels:
    """DLC tables are small, so they are always loaded eagerly whatever ``lazy`` says."""
    return dlc.load_dlc(path)


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _diagnose_slp(path: Path, exc: BaseException) -> str:
    """Explain why sleap-io could not read ``path``, checking the likely causes in order."""
    problem = _hdf5_problem(path) or _damage(path)
    if problem is not None:
        return f"not a valid SLEAP labels file ({problem})"
    with h5py.File(path, "r") as f:
        meta = f.get("metadata")
        if not isinstance(meta, h5py.Group) or "json" not in meta.attrs:
            return "not a SLEAP labels file (no /metadata group with a json attribute)"
        if "format_id" not in meta.attrs:
            return (
                "SLEAP labels file from before format 1.0 (no format_id), which sleap-io "
                "cannot read; open and re-save it in SLEAP"
            )
        raw = meta.attrs["json"]
    try:
        metadata = json.loads(raw)
    except ValueError:
        return "SLEAP labels file with corrupt metadata JSON"
    return _skeleton_problem(metadata) or f"not a valid SLEAP labels file ({_describe(exc)})"


def _damage(path: Path) -> str | None:
    """Say which dataset of ``path`` fails its checksum, or None (``hdf5.damaged_dataset``)."""
    damaged = damaged_dataset(path)
    if damaged is None:
        return None
    return (
        f"dataset {damaged} is damaged: its checksum does not match, so the file changed "
        "after it was saved (disk or transfer error); use a backup copy"
    )


def _skeleton_problem(metadata: dict) -> str | None:
    """Find a skeleton that refers to nodes the file does not define (sleap-io just crashes)."""
    try:
        n_nodes = len(metadata["nodes"])
        for skeleton in metadata["skeletons"]:
            graph = skeleton.get("nx_graph", skeleton)
            name = graph.get("graph", {}).get("name", "?")
            ids = [node["id"] for node in graph["nodes"]]
            unknown = [i for i in ids if not (isinstance(i, int) and 0 <= i < n_nodes)]
            if unknown:
                return (
                    f"skeleton '{name}' uses node {unknown[0]} but only {n_nodes} nodes are "
                    "defined in the file"
                )
            for link in graph["links"]:
                end = next((e for e in (link["source"], link["target"]) if e not in ids), None)
                if end is not None:
                    return (
                        f"skeleton '{name}' has an edge to node {end} but only {len(ids)} "
                        "nodes are defined"
                    )
    except (KeyError, TypeError, AttributeError):
        return "SLEAP labels file with malformed skeleton metadata"
    return None


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_labels(labels: sio.Labels, path: str | Path, format: str | None = None) -> None:
    """Write ``labels`` to ``path`` atomically: the old file stays intact if anything fails.

    Args:
        labels: Lazy or eager labels.
        path: Destination. Without ``format``: ``.slp`` -> SLEAP labels; ``.csv`` and
            ``CollectedData_*.h5`` -> DeepLabCut; ``.analysis.h5`` and other ``.h5`` -> SLEAP
            analysis HDF5 (sleap-io's convention).
        format: ``'slp'``, ``'dlc'`` (CSV or HDF5 by extension) or ``'analysis_h5'``.

    Raises:
        PoseFileError: The format is unknown, the labels cannot be represented in it (e.g. an
            analysis file of several videos, a skeleton with two nodes of one name), or
            writing failed.

    Warns:
        PoseWarning: The format cannot hold everything the labels have and some is left out
            (positions of invisible points, frame numbers, instances; see the writers).
    """
    path = Path(path)
    fmt = format or _save_format(path)
    if fmt not in _WRITERS:
        raise PoseFileError(path, f"unknown labels format {fmt!r}; use one of {sorted(_WRITERS)}")
    for skeleton in labels.skeletons:
        problem = repeated_node(skeleton)
        if problem is not None:  # a file that would not open again, or lose a node
            raise PoseFileError(path, f"cannot be written: {problem}; rename one first")
    try:
        atomic_write(path, lambda tmp: _WRITERS[fmt](labels, tmp, path))
    except PoseFileError:
        raise
    except Exception as exc:  # every writer failure is reported the same way
        raise PoseFileError(
            path, f"could not be written as {FORMAT_NAMES[fmt]} ({_describe(exc)})"
        ) from exc


def _save_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".slp"):
        return "slp"
    if name.endswith(".csv") or (
        name.startswith("collecteddata_") and name.endswith(HDF5_SUFFIXES)
    ):
        return "dlc"
    if name.endswith(HDF5_SUFFIXES):
        return "analysis_h5"
    raise PoseFileError(path, "cannot tell the labels format from the extension; pass format=")


def _remove_stale_temps(path: Path, min_age_s: float = 60.0) -> None:
    """Delete temporaries of ``path`` left by saves that were killed (SIGKILL, power loss).

    Only ones older than ``min_age_s`` go, so a save running in another process is safe.
    """
    now = time.time()
    for stray in path.parent.glob(f".*.{glob.escape(path.name)}"):
        if re.fullmatch(r"\.[0-9a-f]{8}\." + re.escape(path.name), stray.name):
            with contextlib.suppress(OSError):
                if now - stray.stat().st_mtime > min_age_s:
                    stray.unlink()


def _temp_beside(path: Path) -> Path:
    """A new temporary name in ``path``'s folder, of the pattern ``_remove_stale_temps`` knows."""
    return path.with_name(f".{secrets.token_hex(4)}.{path.name}")


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Run ``write`` on a hidden temporary file beside ``path``, then swap it in.

    ``os.replace`` is atomic within a folder, so readers see either the old or the new file.
    The temporary name keeps ``path``'s full name at its end so extension-sniffing writers
    behave the same. Whatever ``write`` returns (``Path.write_text``'s count) is ignored.
    """
    tmp = _temp_beside(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temps(path)
    if os.name == "posix":  # make the rename itself durable; Windows cannot open folders
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_slp(labels: sio.Labels, tmp: Path, target: Path) -> None:
    if labels.is_lazy and labels._lazy_store.format_id < _FIRST_LAZY_SAFE_SLP_FORMAT:
        labels = materialize_labels(labels)
    # embed=None copies frames embedded in a .pkg.slp into the new file. sleap-io's default
    # (False) instead points the video at its original source even when that file is missing,
    # and restore_original_videos=False writes a self-reference to frames it did not copy.
    _with_checksums(lambda raw: sio.save_slp(labels, raw.as_posix(), embed=None, verbose=False),
                    tmp, target)  # fmt: skip


def _with_checksums(write: Callable[[Path], None], tmp: Path, target: Path) -> None:
    """Run sleap-io's ``write`` on a second temporary file, then copy it to ``tmp`` with
    checksums (``hdf5.add_checksums``): sleap-io has no option to add them itself."""
    raw = _temp_beside(target)
    try:
        write(raw)
        add_checksums(raw, tmp)
    finally:
        raw.unlink(missing_ok=True)


def _write_analysis(labels: sio.Labels, tmp: Path, target: Path) -> None:
    """Write through sleap-io, warning of what its layout (one video; per frame, one instance
    per track; no visibility flag) leaves out."""
    if len(labels.videos) != 1:
        raise PoseFileError(
            target, f"a SLEAP analysis file holds one video; these labels have {len(labels.videos)}"
        )
    _with_checksums(lambda raw: sio.save_analysis_h5(
        labels, raw.as_posix(), labels_path=labels.provenance.get("filename")), tmp, target)  # fmt: skip
    for problem in _analysis_losses(labels):
        warnings.warn(f"{target}: {problem}", PoseWarning, stacklevel=4)


def _analysis_losses(labels: sio.Labels) -> list[str]:
    """What sleap-io's analysis writer leaves out of ``labels``, in words.

    Its tracks array has no visibility flag (an invisible point is NaN) and, for tracked
    labels, one slot per track and frame, filled by the user instance if there is one, else
    the prediction; instances without a track have no slot.
    """
    arrays = labels_to_arrays(labels)
    losses = []
    hidden = int((np.isfinite(arrays.xy).all(axis=-1) & ~arrays.visible).sum())
    if hidden:
        losses.append(
            "points marked invisible are written without their positions (analysis files "
            f"have no visibility flag: an invisible point is NaN): {hidden}"
        )
    if labels.tracks:
        untracked = int((arrays.track < 0).sum())
        slot = arrays.frame_keys * len(labels.tracks) + arrays.track
        user_slots = slot[~arrays.predicted & (arrays.track >= 0)]
        free = slot[arrays.predicted & (arrays.track >= 0)]
        free = free[~np.isin(free, user_slots)]  # predictions a user instance did not replace
        doubles = sum(len(s) - len(np.unique(s)) for s in (user_slots, free))
        if untracked or doubles:
            losses.append(
                "instances left out, as an analysis file of tracked labels holds one instance "
                f"per track and frame: {untracked} without a track, {doubles} on a track "
                "already taken in their frame"
            )
    return losses


def _write_dlc(labels: sio.Labels, tmp: Path, target: Path) -> None:
    # Lazy frames lack the from_predicted links that tell a corrected prediction from a new one.
    dlc.write_dlc(materialize_labels(labels), tmp, target)


_LOADERS: dict[str, Callable[[Path, bool], sio.Labels]] = {
    "slp": _load_slp,
    "analysis_h5": _load_analysis,
    "dlc": _load_dlc,
}
_WRITERS: dict[str, Callable[[sio.Labels, Path, Path], None]] = {
    "slp": _write_slp,
    "analysis_h5": _write_analysis,
    "dlc": _write_dlc,
}
