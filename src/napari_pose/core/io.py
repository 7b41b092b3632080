"""The one entry point for labels files: detect, load and save SLEAP and DeepLabCut labels.

The in-memory model is sleap-io's ``Labels``. sleap-io reads and writes ``.slp`` and SLEAP
analysis HDF5, and those go through it untouched apart from three repairs:

- every failure becomes one :class:`PoseFileError` that says what is wrong with which file
  (sleap-io lets h5py's ``OSError`` or a bare ``ValueError: 7 is not in list`` escape);
- stored video paths are resolved wherever the project now lives (:mod:`.paths`);
- lazily loaded labels from ``.slp`` files older than format 1.2 are materialised before saving,
  because sleap-io 0.9.5's fast lazy writer copies their 9-column instance table verbatim but
  stamps format 1.4, producing a file that neither it nor SLEAP can read back.

DeepLabCut is handled here rather than by sleap-io, whose DLC reader cannot read
``CollectedData_*.h5`` at all, sorts body parts alphabetically (losing the project's order),
and silently drops rows whose image is missing; its DLC writer fails on image-folder videos and
overwrites all but one instance per frame. DLC's HDF5 files are pandas/PyTables files; PyTables
is not a dependency, so their two layouts are read (and the "fixed" one written) with h5py.

Every writer is atomic: a crash or a full disk never leaves a half-written labels file behind.
"""

from __future__ import annotations

import csv
import io
import json
import os
import pickle
import secrets
import warnings
from collections.abc import Callable
from pathlib import Path, PurePosixPath

import h5py
import numpy as np
import pandas as pd
import sleap_io as sio
import yaml

from napari_pose.core.errors import PoseFileError
from napari_pose.core.paths import MAX_PARENT_LEVELS, missing_videos, relink_video, relink_videos

__all__ = [
    "detect_labels_format",
    "load_labels",
    "materialize_labels",
    "missing_videos",
    "save_labels",
]

FORMAT_NAMES = {
    "slp": "SLEAP labels",
    "analysis_h5": "SLEAP analysis HDF5",
    "dlc": "DeepLabCut labels",
}

_HDF5_SUFFIXES = (".h5", ".hdf5")
_YAML_SUFFIXES = (".yaml", ".yml")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_DLC_HEADERS = (("scorer", "bodyparts", "coords"), ("scorer", "individuals", "bodyparts", "coords"))
#: HDF5 key DeepLabCut itself reads and writes CollectedData under.
_DLC_H5_KEY = "df_with_missing"
#: DLC configs are a few kB; anything much bigger named ``*.yaml`` is not worth parsing to sniff.
_MAX_CONFIG_BYTES = 1 << 20
#: Enough of a CSV to hold DLC's header rows even for wide multi-animal projects.
_CSV_SNIFF_BYTES = 1 << 20
#: sleap-io's lazy writer mis-saves instance tables of files older than this (see module doc).
_FIRST_LAZY_SAFE_SLP_FORMAT = 1.2


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
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if not path.is_file():
            return None
        if suffix == ".slp":
            return "slp" if _sniff_hdf5(path) == "slp" else None
        if suffix in _HDF5_SUFFIXES:
            return _sniff_hdf5(path)
        if suffix == ".csv":
            return "dlc" if _dlc_csv_layout(path) is not None else None
        if suffix in _YAML_SUFFIXES:
            return "dlc" if _read_dlc_config(path) is not None else None
    except Exception:  # any unreadable file simply is not ours
        return None
    return None


def _sniff_hdf5(path: Path) -> str | None:
    """Tell SLEAP labels, SLEAP analysis and DLC tables apart by their top-level layout."""
    if not h5py.is_hdf5(path):
        return None
    with h5py.File(path, "r") as f:
        if "metadata" in f and "frames" in f:
            return "slp"
        if "tracks" in f and "node_names" in f:
            return "analysis_h5"
        if _dlc_h5_group(f) is not None:
            return "dlc"
    return None


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
    fmt = detect_labels_format(path) or _format_from_suffix(path)
    try:
        labels = _LOADERS[fmt](path, lazy)
    except PoseFileError:
        raise
    except Exception as exc:  # third-party failures become one clear error
        if fmt == "slp":
            raise PoseFileError(path, _diagnose_slp(path, exc)) from exc
        raise PoseFileError(
            path, f"not a valid {FORMAT_NAMES[fmt]} file ({_describe(exc)})"
        ) from exc
    relink_videos(labels, path)
    return labels


def _format_from_suffix(path: Path) -> str:
    """Pick the loader whose diagnosis best explains why detection rejected ``path``."""
    suffix = path.suffix.lower()
    if suffix == ".slp":
        return "slp"
    if suffix == ".csv" or suffix in _YAML_SUFFIXES:
        return "dlc"
    if suffix in _HDF5_SUFFIXES:
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


def _diagnose_slp(path: Path, exc: BaseException) -> str:
    """Explain why sleap-io could not read ``path``, checking the likely causes in order."""
    problem = _hdf5_problem(path)
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
# DeepLabCut: reading
# --------------------------------------------------------------------------------------------


def _load_dlc(path: Path, lazy: bool) -> sio.Labels:
    """Load a DLC project config (every labelled video) or one CollectedData table."""
    if path.suffix.lower() in _YAML_SUFFIXES:
        config = _read_dlc_config(path)
        if config is None:
            raise PoseFileError(path, "not a DeepLabCut project config (no bodyparts listed)")
        tables = _project_tables(path.parent, config.get("scorer"))
        if not tables:
            raise PoseFileError(
                path, "DeepLabCut project has no labeled-data/*/CollectedData_* files"
            )
    else:
        config = _find_dlc_config(path)
        tables = [path]
    read = [_read_dlc_table(table) for table in tables]
    frame = pd.concat([table for table, _ in read], sort=False)
    labels = _dlc_labels(frame, config or {})
    labels.provenance["dlc_scorer"] = read[0][1]
    return labels


def _read_dlc_config(path: Path) -> dict | None:
    """Return a DLC project config, or None when ``path`` is not one."""
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        return None
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    if isinstance(config, dict) and ("bodyparts" in config or "multianimalbodyparts" in config):
        return config
    return None


def _find_dlc_config(table: Path) -> dict | None:
    """Find the project config above a CollectedData table, for its skeleton edges."""
    folder = table.absolute().parent
    for candidate in [folder, *folder.parents[:MAX_PARENT_LEVELS]]:
        config_path = candidate / "config.yaml"
        if config_path.is_file():
            try:
                config = _read_dlc_config(config_path)
            except (OSError, ValueError, yaml.YAMLError):
                config = None
            if config is not None:
                return config
    return None


def _project_tables(project: Path, scorer: str | None) -> list[Path]:
    """One annotation table per ``labeled-data`` folder: the project scorer's HDF5 first.

    DLC treats the HDF5 table as the source of truth and the CSV as its human-readable twin.
    """
    tables = []
    for folder in sorted(p for p in (project / "labeled-data").glob("*") if p.is_dir()):
        candidates = [folder / f"CollectedData_{scorer}{ext}" for ext in (".h5", ".csv")]
        candidates += sorted(folder.glob("CollectedData_*.h5")) + sorted(
            folder.glob("CollectedData_*.csv")
        )
        found = next((c for c in candidates if c.is_file()), None)
        if found is not None:
            tables.append(found)
    return tables


def _read_dlc_table(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a DLC table as (frame with (individual, bodypart, coord) columns, scorer).

    Single-animal tables get the individual ``""`` so that tables of one project concatenate.
    """
    is_h5 = path.suffix.lower() in _HDF5_SUFFIXES
    frame = _read_dlc_h5(path) if is_h5 else _read_dlc_csv(path)
    if len(frame) == 0:
        raise PoseFileError(path, "has DeepLabCut header rows but no labelled frames")
    scorer = str(frame.columns[0][0])
    keys = [tuple(str(k) for k in column[1:]) for column in frame.columns]
    keys = [key if len(key) == 3 else ("", *key) for key in keys]
    present = set(keys)
    lacking = next(((i, p, c) for i, p, _ in keys for c in "xy" if (i, p, c) not in present), None)
    if lacking is not None:
        ind, part, coord = lacking
        owner = f" of individual '{ind}'" if ind else ""
        raise PoseFileError(path, f"body part '{part}'{owner} has no '{coord}' coordinate column")
    try:
        values = frame.to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(path, f"has non-numeric coordinates ({exc})") from exc
    images = [
        "/".join(map(str, key)) if isinstance(key, tuple) else str(key) for key in frame.index
    ]
    if not all(image.lower().endswith(_IMAGE_SUFFIXES) for image in images):
        raise PoseFileError(
            path,
            "rows are not labelled image paths (a DeepLabCut predictions file?); open the "
            "project's config.yaml or a CollectedData file",
        )
    columns = pd.MultiIndex.from_tuples(keys, names=["individuals", "bodyparts", "coords"])
    return pd.DataFrame(values, index=images, columns=columns), scorer


def _dlc_csv_layout(path: Path) -> tuple[int, int] | None:
    """Return (header rows, index columns) of a DLC CSV, or None if it has no DLC header.

    Old DLC writes one index column (``labeled-data/video/img.png``); DLC >= 2.2 writes three
    (``labeled-data``, ``video``, ``img.png``), leaving the header rows' extra cells empty.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        head = fh.read(_CSV_SNIFF_BYTES)
    rows = list(csv.reader(io.StringIO(head)))[:4]
    first = tuple(row[0].strip().lower() if row else "" for row in rows)
    n_header = next((len(h) for h in reversed(_DLC_HEADERS) if first[: len(h)] == h), None)
    if n_header is None:
        return None
    cells = [c.strip() for c in rows[0]]
    n_index = next((i for i, cell in enumerate(cells[1:], 1) if cell), None)
    return None if n_index is None else (n_header, n_index)


def _read_dlc_csv(path: Path) -> pd.DataFrame:
    layout = _dlc_csv_layout(path)
    if layout is None:
        problem = (
            "file is empty"
            if path.stat().st_size == 0
            else "not a DeepLabCut CSV: its first rows must be scorer, (individuals,) "
            "bodyparts and coords"
        )
        raise PoseFileError(path, problem)
    n_header, n_index = layout
    try:
        return pd.read_csv(path, header=list(range(n_header)), index_col=list(range(n_index)))
    except (ValueError, pd.errors.ParserError) as exc:
        raise PoseFileError(path, f"DeepLabCut CSV could not be parsed ({exc})") from exc


def _dlc_labels(frame: pd.DataFrame, config: dict) -> sio.Labels:
    """Build labels from a DLC frame: one image-list video per labelled-data folder.

    Columns keep the table's body-part order; each individual becomes a track (none for
    single-animal tables). A row's frame index is its position in its folder's image list.
    """
    individuals = list(dict.fromkeys(frame.columns.get_level_values(0)))
    bodyparts = list(dict.fromkeys(frame.columns.get_level_values(1)))
    points = np.full((len(frame), len(individuals), len(bodyparts), 2), np.nan)
    values = frame.to_numpy()
    coords = frame.columns.get_level_values(2)
    for axis, coord in enumerate("xy"):
        picked = coords == coord
        ind = [individuals.index(i) for i in frame.columns.get_level_values(0)[picked]]
        part = [bodyparts.index(b) for b in frame.columns.get_level_values(1)[picked]]
        points[:, ind, part, axis] = values[:, picked]
    skeleton = sio.Skeleton(nodes=bodyparts, edges=_config_edges(config, bodyparts))
    if config.get("Task"):
        skeleton.name = str(config["Task"])
    tracks = [sio.Track(name=name) if name else None for name in individuals]

    images: dict[str, list[str]] = {}
    placed = []
    for image in frame.index:
        folder = PurePosixPath(image.replace("\\", "/")).parent.as_posix()
        placed.append((folder, len(images.setdefault(folder, []))))
        images[folder].append(image)
    videos = {
        folder: sio.Video(filename=files, open_backend=False) for folder, files in images.items()
    }
    for folder, files in images.items():
        relink_video(videos[folder], files)

    visible = np.isfinite(points).all(axis=3)
    points[~visible] = np.nan  # a point with one coordinate missing is not placed
    present = visible.any(axis=2)
    labeled_frames = [
        sio.LabeledFrame(
            video=videos[folder],
            frame_idx=frame_idx,
            instances=[
                sio.Instance.from_numpy(points[row, i], skeleton=skeleton, track=tracks[i])
                for i in np.flatnonzero(present[row])
            ],
        )
        for row, (folder, frame_idx) in enumerate(placed)
        if present[row].any()
    ]
    return sio.Labels(
        labeled_frames=labeled_frames,
        videos=list(videos.values()),
        skeletons=[skeleton],
        tracks=[t for t in tracks if t is not None],
    )


def _config_edges(config: dict, bodyparts: list[str]) -> list[tuple[str, str]]:
    """Edges of the config's ``skeleton`` between labelled body parts; others are warned of."""
    pairs = [e for e in config.get("skeleton") or [] if isinstance(e, list | tuple) and len(e) == 2]
    edges = [(str(a), str(b)) for a, b in pairs]
    unknown = [e for e in edges if not set(e) <= set(bodyparts)]
    if unknown:
        warnings.warn(
            f"DeepLabCut skeleton edges between unlabelled body parts ignored: {unknown}",
            stacklevel=3,
        )
    return [e for e in edges if e not in unknown]


# --------------------------------------------------------------------------------------------
# pandas HDF5 tables without PyTables
# --------------------------------------------------------------------------------------------


class _PlainUnpickler(pickle.Unpickler):
    """Unpickle built-in containers and scalars only: a crafted file must not run code.

    PyTables stores Python-object attributes (pandas' column lists) as protocol-0 pickles.
    """

    def find_class(self, module: str, name: str) -> None:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an HDF5 attribute")


def _unpickle(raw: bytes) -> object:
    return _PlainUnpickler(io.BytesIO(bytes(raw)), encoding="latin1").load()


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.char.decode(values, "utf-8") if values.dtype.kind == "S" else values


def _dlc_h5_group(f: h5py.File) -> h5py.Group | None:
    """The pandas DataFrame group in ``f`` whose column levels are DLC's, if any."""
    for group in f.values():
        if isinstance(group, h5py.Group) and "pandas_type" in group.attrs:
            try:
                names = tuple(_column_names(group))
            except (KeyError, ValueError, TypeError, pickle.UnpicklingError):
                continue
            if names in _DLC_HEADERS:
                return group
    return None


def _column_names(group: h5py.Group) -> list[str | None]:
    """Column level names of a pandas frame group, read from attributes only."""
    if _text(group.attrs["pandas_type"]) == "frame_table":
        return list(_unpickle(group.attrs["info"])[1]["names"])
    nlevels = int(group.attrs["block0_items_nlevels"])
    return [_text(group[f"block0_items_level{i}"].attrs["name"]) for i in range(nlevels)]


def _read_dlc_h5(path: Path) -> pd.DataFrame:
    """Read a DLC HDF5 table in either of pandas' layouts ("fixed" or "table")."""
    with h5py.File(path, "r") as f:
        group = _dlc_h5_group(f)
        if group is None:
            raise PoseFileError(
                path, "HDF5 file holds no DeepLabCut table (scorer/bodyparts/coords columns)"
            )
        names = _column_names(group)
        if _text(group.attrs["pandas_type"]) == "frame_table":
            if _unpickle(group.attrs["values_cols"]) != ["values_block_0"]:
                raise PoseFileError(
                    path, "DeepLabCut table mixes column types, which is not supported"
                )
            table = group["table"][()]
            columns = _unpickle(group["table"].attrs["values_block_0_kind"])
            index = _decode(table["index"]).tolist()
            values = table["values_block_0"]
        else:
            if int(group.attrs["nblocks"]) != 1:
                raise PoseFileError(
                    path, "DeepLabCut table mixes column types, which is not supported"
                )
            columns = _fixed_axis(group, "block0_items")
            index = _fixed_axis(group, "axis1")
            values = group["block0_values"][()]
    return pd.DataFrame(
        values,
        index=pd.MultiIndex.from_tuples(index) if index and isinstance(index[0], tuple) else index,
        columns=pd.MultiIndex.from_tuples(columns, names=names),
    )


def _fixed_axis(group: h5py.Group, key: str) -> list:
    """An axis of a pandas "fixed" frame: plain values, or tuples for a MultiIndex."""
    if _text(group.attrs[f"{key}_variety"]) != "multi":
        return _decode(group[key][()]).tolist()
    nlevels = int(group.attrs[f"{key}_nlevels"])
    levels = [_decode(group[f"{key}_level{i}"][()]) for i in range(nlevels)]
    codes = [group[f"{key}_label{i}"][()] for i in range(nlevels)]
    labels = [level[code].tolist() for level, code in zip(levels, codes, strict=True)]
    return list(zip(*labels, strict=True))


_PYTABLES_ARRAY = {"CLASS": "ARRAY", "VERSION": "2.4", "FLAVOR": "numpy", "transposed": np.uint8(1)}
_PYTABLES_GROUP = {"CLASS": "GROUP", "VERSION": "1.0"}


def _set_pytables_attrs(node: h5py.HLObject, attrs: dict[str, object]) -> None:
    """Store attributes the way PyTables does, so pandas reads them back as ``str``.

    PyTables decodes only fixed-length UTF-8 string attributes to ``str``; pandas fails on the
    ``bytes`` it returns for h5py's default (ASCII) strings.
    """
    node.attrs["TITLE"] = h5py.Empty("S1")
    for name, value in attrs.items():
        if isinstance(value, str):
            raw = value.encode("utf-8")
            node.attrs.create(name, raw, dtype=h5py.string_dtype("utf-8", len(raw)))
        else:
            node.attrs[name] = value


def _write_pandas_fixed(frame: pd.DataFrame, path: Path, key: str) -> None:
    """Write ``frame`` (MultiIndex columns, string index) as pandas' "fixed" HDF5 layout.

    This is what ``frame.to_hdf(path, key=key)`` writes, so DeepLabCut and pandas read it with
    ``pd.read_hdf``; it needs no pickled attributes, unlike the "table" layout.
    """

    def array(node: str, data: np.ndarray, **attrs: object) -> None:
        _set_pytables_attrs(group.create_dataset(node, data=data), {**_PYTABLES_ARRAY, **attrs})

    def strings(values: object) -> np.ndarray:
        return np.array([str(v).encode("utf-8") for v in values])

    columns = frame.columns
    with h5py.File(path, "w") as f:
        _set_pytables_attrs(f, {**_PYTABLES_GROUP, "PYTABLES_FORMAT_VERSION": "2.1"})
        group = f.create_group(key)
        frame_attrs = {
            "pandas_type": "frame",
            "encoding": "UTF-8",
            "errors": "strict",
            "ndim": np.int64(2),
            "nblocks": np.int64(1),
            "axis1_variety": "regular",
        }
        for axis in ("axis0", "block0_items"):
            frame_attrs[f"{axis}_variety"] = "multi"
            frame_attrs[f"{axis}_nlevels"] = np.int64(columns.nlevels)
            for i, (level, codes, name) in enumerate(
                zip(columns.levels, columns.codes, columns.names, strict=True)
            ):
                array(f"{axis}_level{i}", strings(level), kind="string", name=str(name))
                array(f"{axis}_label{i}", np.asarray(codes, dtype=np.int32))
        _set_pytables_attrs(group, {**_PYTABLES_GROUP, **frame_attrs})
        # PyTables keeps non-string attributes as ASCII pickles: b"N." is a pickled None.
        array("axis1", strings(frame.index), kind="string", name=np.bytes_(b"N."))
        array("block0_values", frame.to_numpy(dtype=float))


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
            analysis file of several videos), or writing failed.
    """
    path = Path(path)
    fmt = format or _save_format(path)
    if fmt not in _WRITERS:
        raise PoseFileError(path, f"unknown labels format {fmt!r}; use one of {sorted(_WRITERS)}")
    try:
        _atomic_write(path, lambda tmp: _WRITERS[fmt](labels, tmp, path))
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
        name.startswith("collecteddata_") and name.endswith(_HDF5_SUFFIXES)
    ):
        return "dlc"
    if name.endswith(_HDF5_SUFFIXES):
        return "analysis_h5"
    raise PoseFileError(path, "cannot tell the labels format from the extension; pass format=")


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Run ``write`` on a hidden temporary file beside ``path``, then swap it in.

    ``os.replace`` is atomic within a folder, so readers see either the old or the new file.
    The temporary name keeps ``path``'s full name at its end so extension-sniffing writers
    behave the same.
    """
    tmp = path.with_name(f".{secrets.token_hex(4)}.{path.name}")
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
    sio.save_slp(labels, tmp.as_posix(), embed=None, verbose=False)


def _write_analysis(labels: sio.Labels, tmp: Path, target: Path) -> None:
    if len(labels.videos) != 1:
        raise PoseFileError(
            target, f"a SLEAP analysis file holds one video; these labels have {len(labels.videos)}"
        )
    sio.save_analysis_h5(labels, tmp.as_posix(), labels_path=labels.provenance.get("filename"))


def _write_dlc(labels: sio.Labels, tmp: Path, target: Path) -> None:
    frame = _dlc_frame(labels, target)
    if target.suffix.lower() in _HDF5_SUFFIXES:
        _write_pandas_fixed(frame, tmp, _DLC_H5_KEY)
    else:
        frame.to_csv(tmp)


def _dlc_frame(labels: sio.Labels, target: Path) -> pd.DataFrame:
    """Lay labels out as DLC's CollectedData table, one row per labelled frame.

    Individuals are the track names (plus ``individualN`` columns for untracked instances when
    a frame has several); a single-animal table is written when no frame needs more than one
    untracked instance. Each frame keeps its user instances and the predictions no user
    instance replaced. Invisible points are NaN.
    """
    if len(labels.skeletons) != 1:
        raise PoseFileError(
            target,
            f"DeepLabCut tables hold one skeleton; these labels have {len(labels.skeletons)}",
        )
    if not len(labels):
        raise PoseFileError(target, "there are no labelled frames to write")
    labels = materialize_labels(labels)  # lazy frames lack the links unused_predictions needs
    node_names = labels.skeletons[0].node_names
    slot_of_track = {id(track): i for i, track in enumerate(labels.tracks)}
    frames = sorted(
        labels.labeled_frames, key=lambda lf: (labels.videos.index(lf.video), lf.frame_idx)
    )
    last_frame = {id(lf.video): lf.frame_idx for lf in frames}  # sorted: the last one wins
    rows, placed = [], []
    for row, lf in enumerate(frames):
        rows.append(_dlc_image_path(lf.video, lf.frame_idx, last_frame[id(lf.video)]))
        taken: set[int] = set()
        extra = len(labels.tracks)
        for inst in lf.user_instances + lf.unused_predictions:
            slot = slot_of_track.get(id(inst.track))
            if slot is None or slot in taken:
                slot, extra = extra, extra + 1
            taken.add(slot)
            placed.append((row, slot, inst.numpy()))
    n_slots = 1 + max(slot for _, slot, _ in placed) if placed else 1
    points = np.full((len(rows), n_slots, len(node_names), 2), np.nan)
    for row, slot, xy in placed:
        points[row, slot] = xy

    scorer = _dlc_scorer(labels, target)
    if labels.tracks or n_slots > 1:
        individuals = [t.name for t in labels.tracks]
        individuals += [f"individual{i}" for i in range(len(individuals), n_slots)]
        columns = pd.MultiIndex.from_product(
            [[scorer], individuals, node_names, ["x", "y"]], names=list(_DLC_HEADERS[1])
        )
    else:
        columns = pd.MultiIndex.from_product(
            [[scorer], node_names, ["x", "y"]], names=list(_DLC_HEADERS[0])
        )
    return pd.DataFrame(points.reshape(len(rows), -1), index=rows, columns=columns)


def _dlc_image_path(video: sio.Video, frame_idx: int, last_frame: int) -> str:
    """DLC's row key: the labelled image, or where DLC would extract this frame to.

    DLC numbers extracted frames with as many digits as the video's last frame index needs;
    when the (unopened) video's length is unknown, the last labelled frame stands in for it.
    """
    if isinstance(video.filename, list):
        image = PurePosixPath(video.filename[frame_idx].replace("\\", "/"))
        return f"labeled-data/{image.parent.name}/{image.name}"
    source = video.source_video.filename if video.source_video is not None else video.filename
    stem = PurePosixPath(source.replace("\\", "/")).stem
    n_frames = (video.shape or (last_frame + 1,))[0]
    digits = len(str(max(n_frames - 1, last_frame)))
    return f"labeled-data/{stem}/img{frame_idx:0{digits}d}.png"


def _dlc_scorer(labels: sio.Labels, target: Path) -> str:
    """DLC requires a ``CollectedData_<scorer>`` file's scorer to match its name.

    Other names keep the scorer the labels were loaded with.
    """
    if target.name.startswith("CollectedData_"):
        return target.name[len("CollectedData_") :].split(".")[0]
    return str(labels.provenance.get("dlc_scorer", "napari-pose"))


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
