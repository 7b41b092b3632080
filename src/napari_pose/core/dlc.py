"""DeepLabCut labels: project configs and CollectedData tables to and from sleap-io ``Labels``.

This lives here rather than in sleap-io, whose DLC reader cannot read ``CollectedData_*.h5``
at all, sorts body parts alphabetically (losing the project's order) and silently drops rows
whose image is missing; its DLC writer fails on image-folder videos and overwrites all but one
instance per frame.

A CollectedData table has one row per labelled image and the column levels scorer,
(individuals,) bodyparts, coords. DLC keeps it twice in each ``labeled-data`` folder: as a
pandas HDFStore ``.h5`` (the source of truth) and as a human-readable ``.csv`` twin. Both are
read and written through pandas, the HDF5 one with PyTables, exactly as DLC itself does, but
an HDF5 table is only opened once h5py has found nothing in it that PyTables would unpickle
(:func:`.hdf5.refuse_pickles`): a pickle runs code, and a table is read just to probe it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import sleap_io as sio
import yaml

from napari_pose.core.errors import PoseFileError, PoseWarning
from napari_pose.core.hdf5 import is_pandas_store, refuse_pickles
from napari_pose.core.paths import MAX_PARENT_LEVELS, relink_video

__all__ = [
    "CONFIG_SUFFIXES",
    "HDF5_SUFFIXES",
    "config_edges",
    "is_dlc_file",
    "load_dlc",
    "read_dlc_config",
    "write_dlc",
]

HDF5_SUFFIXES = (".h5", ".hdf5")
CONFIG_SUFFIXES = (".yaml", ".yml")
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: Column level names of single- and multi-animal tables.
_HEADERS: tuple[tuple[str, ...], ...] = (
    ("scorer", "bodyparts", "coords"),
    ("scorer", "individuals", "bodyparts", "coords"),
)
#: HDF5 key DeepLabCut itself reads and writes CollectedData under.
_H5_KEY = "df_with_missing"
#: DLC configs are a few kB; anything much bigger named ``*.yaml`` is not worth parsing to sniff.
_MAX_CONFIG_BYTES = 1 << 20
#: Enough of a CSV to hold DLC's header rows even for wide multi-animal projects.
_CSV_SNIFF_BYTES = 1 << 20


# --------------------------------------------------------------------------------------------
# Detection and configs
# --------------------------------------------------------------------------------------------


def is_dlc_file(path: Path) -> bool:
    """Whether ``path`` is a DLC config or a table with DLC's header, reading headers only.

    Cheap because napari asks this of every file dropped on the viewer. Unreadable files may
    raise; the caller treats any error as "not DLC".
    """
    suffix = path.suffix.lower()
    if suffix in CONFIG_SUFFIXES:
        return read_dlc_config(path) is not None
    if suffix == ".csv":
        return _csv_layout(path) is not None
    if suffix in HDF5_SUFFIXES:
        if not is_pandas_store(path):
            return False
        with _open_store(path) as store:
            return _table_key(store) is not None
    return False


@contextlib.contextmanager
def _open_store(path: Path) -> Iterator[pd.HDFStore]:
    """pandas' HDFStore of ``path``, read-only, once h5py has seen that nothing in it would be
    unpickled (``refuse_pickles``): PyTables unpickles attributes as soon as it opens a node,
    so this is the only way this package opens one."""
    refuse_pickles(path)
    with pd.HDFStore(path, mode="r") as store:
        yield store


def read_dlc_config(path: Path) -> dict | None:
    """Return a DLC project config, or None when ``path`` is not one."""
    if path.stat().st_size > _MAX_CONFIG_BYTES:
        return None
    with open(path, encoding="utf-8") as fh:
        config = yaml.safe_load(fh)
    if isinstance(config, dict) and ("bodyparts" in config or "multianimalbodyparts" in config):
        return config
    return None


def config_edges(config: dict, bodyparts: list[str]) -> list[tuple[str, str]]:
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


def _find_config(table: Path) -> dict | None:
    """Find the project config above a CollectedData table, for its skeleton edges."""
    folder = table.absolute().parent
    for candidate in [folder, *folder.parents[:MAX_PARENT_LEVELS]]:
        config_path = candidate / "config.yaml"
        if config_path.is_file():
            try:
                config = read_dlc_config(config_path)
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


# --------------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------------


def load_dlc(path: Path) -> sio.Labels:
    """Load a DLC project config (every labelled folder) or one CollectedData table.

    The scorer of the (first) table is kept in ``provenance["dlc_scorer"]`` so that saving to
    a name other than ``CollectedData_<scorer>`` writes it back unchanged.
    """
    if path.suffix.lower() in CONFIG_SUFFIXES:
        config = read_dlc_config(path)
        if config is None:
            raise PoseFileError(path, "not a DeepLabCut project config (no bodyparts listed)")
        tables = _project_tables(path.parent, config.get("scorer"))
        if not tables:
            raise PoseFileError(
                path, "DeepLabCut project has no labeled-data/*/CollectedData_* files"
            )
    else:
        config = _find_config(path)
        tables = [path]
    read = [_read_table(table) for table in tables]
    frame = pd.concat([table for table, _ in read], sort=False)
    labels = _to_labels(frame, config or {})
    labels.provenance["dlc_scorer"] = read[0][1]
    return labels


def _read_table(path: Path) -> tuple[pd.DataFrame, str]:
    """Read a DLC table as (frame with (individuals, bodyparts, coords) columns, scorer).

    Single-animal tables get the individual ``""`` so that tables of one project concatenate.
    Rows are keyed by the image path as one ``/``-joined string, whichever index layout the
    DLC version wrote.
    """
    frame = _read_h5(path) if path.suffix.lower() in HDF5_SUFFIXES else _read_csv(path)
    if len(frame) == 0:
        raise PoseFileError(path, "has DeepLabCut header rows but no labelled frames")
    scorer = str(frame.columns[0][0])
    levels = [frame.columns.get_level_values(i).astype(str) for i in range(frame.columns.nlevels)]
    if len(levels) == 3:
        levels.insert(1, pd.Index([""] * len(frame.columns)))
    columns = pd.MultiIndex.from_arrays(levels[1:], names=["individuals", "bodyparts", "coords"])
    present = set(columns)
    wanted = ((i, p, c) for i, p, _ in columns for c in "xy")  # in column order, to name the first
    lacking = next((key for key in wanted if key not in present), None)
    if lacking is not None:
        ind, part, coord = lacking
        owner = f" of individual '{ind}'" if ind else ""
        raise PoseFileError(path, f"body part '{part}'{owner} has no '{coord}' coordinate column")
    if columns.has_duplicates:
        raise PoseFileError(path, f"repeats the column {columns[columns.duplicated()][0]}")
    try:
        values = frame.to_numpy(dtype=float)
    except (TypeError, ValueError) as exc:
        raise PoseFileError(path, f"has non-numeric coordinates ({exc})") from exc
    images = frame.index.to_flat_index().map(
        lambda key: "/".join(map(str, key)) if isinstance(key, tuple) else str(key)
    )
    if not images.str.lower().str.endswith(_IMAGE_SUFFIXES).all():
        raise PoseFileError(
            path,
            "rows are not labelled image paths (a DeepLabCut predictions file?); open the "
            "project's config.yaml or a CollectedData file",
        )
    return pd.DataFrame(values, index=images, columns=columns), scorer


def _csv_layout(path: Path) -> tuple[int, int] | None:
    """Return (header rows, index columns) of a DLC CSV, or None if it has no DLC header.

    Old DLC writes one index column (``labeled-data/video/img.png``); DLC >= 2.2 writes three
    (``labeled-data``, ``video``, ``img.png``), leaving the header rows' extra cells empty.
    """
    with open(path, encoding="utf-8", newline="") as fh:
        head = fh.read(_CSV_SNIFF_BYTES)
    rows = list(csv.reader(io.StringIO(head)))[:4]
    first = tuple(row[0].strip().lower() if row else "" for row in rows)
    n_header = next((len(h) for h in reversed(_HEADERS) if first[: len(h)] == h), None)
    if n_header is None:
        return None
    cells = [c.strip() for c in rows[0]]
    n_index = next((i for i, cell in enumerate(cells[1:], 1) if cell), None)
    return None if n_index is None else (n_header, n_index)


def _read_csv(path: Path) -> pd.DataFrame:
    layout = _csv_layout(path)
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
        frame = pd.read_csv(path, header=list(range(n_header)), index_col=list(range(n_index)))
        # pandas renames a repeated column ("x" becomes "x.1"), which would read a repeated
        # body part as a new one: the names as written let ``_read_table`` refuse it.
        with open(path, encoding="utf-8", newline="") as fh:
            header = list(itertools.islice(csv.reader(fh), n_header))
        frame.columns = pd.MultiIndex.from_arrays(
            [row[n_index : n_index + len(frame.columns)] for row in header],
            names=frame.columns.names,
        )
    except (ValueError, pd.errors.ParserError) as exc:
        raise PoseFileError(path, f"DeepLabCut CSV could not be parsed ({exc})") from exc
    return frame


def _table_key(store: pd.HDFStore) -> str | None:
    """Key of the DLC table in ``store``: DLC's own key first, else any frame with its columns.

    napari-deeplabcut, for one, writes under ``keypoints``. Only headers are read (no rows).
    """
    keys = sorted(store.keys(), key=lambda key: key != f"/{_H5_KEY}")
    for key in keys:
        header = store.select(key, start=0, stop=0)
        if isinstance(header, pd.DataFrame) and tuple(header.columns.names) in _HEADERS:
            return key
    return None


def _read_h5(path: Path) -> pd.DataFrame:
    """Read a DLC HDF5 table in either of pandas' layouts ("fixed" or "table")."""
    with _open_store(path) as store:
        key = _table_key(store)
        if key is None:
            raise PoseFileError(
                path, "HDF5 file holds no DeepLabCut table (scorer/bodyparts/coords columns)"
            )
        return store.select(key)


def _to_labels(frame: pd.DataFrame, config: dict) -> sio.Labels:
    """Build labels from a DLC frame: one image-list video per labelled-data folder.

    Columns keep the table's body-part order; each individual becomes a track (none for
    single-animal tables). A row's frame index is its position in its folder's image list.
    """
    individuals = frame.columns.unique("individuals")
    bodyparts = frame.columns.unique("bodyparts").tolist()
    grid = pd.MultiIndex.from_product([individuals, bodyparts, ["x", "y"]])
    points = frame.reindex(columns=grid).to_numpy(dtype=float, copy=True)  # a view is read-only
    points = points.reshape(len(frame), len(individuals), len(bodyparts), 2)
    visible = ~np.isnan(points).any(axis=3)  # infinities stay, for io to refuse by frame
    points[~visible] = np.nan  # a point with one coordinate missing is not placed
    present = visible.any(axis=2)

    skeleton = sio.Skeleton(nodes=bodyparts, edges=config_edges(config, bodyparts))
    if config.get("Task"):
        skeleton.name = str(config["Task"])
    tracks = [sio.Track(name=name) if name else None for name in individuals]

    images = frame.index.to_series(index=range(len(frame)))
    folders = images.str.replace("\\", "/", regex=False).str.rpartition("/")[0]
    frame_idx = folders.groupby(folders, sort=False).cumcount().to_numpy()
    videos = {}
    for folder, files in images.groupby(folders, sort=False):
        videos[folder] = sio.Video(filename=files.tolist(), open_backend=False)
        relink_video(videos[folder], files.tolist())

    labeled_frames = [
        sio.LabeledFrame(
            video=videos[folders.iat[row]],
            frame_idx=int(frame_idx[row]),
            instances=[
                sio.Instance.from_numpy(points[row, i], skeleton=skeleton, track=tracks[i])
                for i in np.flatnonzero(present[row])
            ],
        )
        for row in np.flatnonzero(present.any(axis=1))
    ]
    return sio.Labels(
        labeled_frames=labeled_frames,
        videos=list(videos.values()),
        skeletons=[skeleton],
        tracks=[t for t in tracks if t is not None],
    )


# --------------------------------------------------------------------------------------------
# Writing tables
# --------------------------------------------------------------------------------------------


def write_dlc(labels: sio.Labels, tmp: Path, target: Path) -> None:
    """Write ``labels`` to ``tmp`` as the CollectedData table DLC expects at ``target``.

    ``labels`` must be eager: lazy frames lack the ``from_predicted`` links that tell which
    predictions a user replaced. ``target`` (the final name) decides CSV or HDF5 and the
    scorer; ``tmp`` is where the caller's atomic write wants the bytes. HDF5 goes under DLC's
    key in pandas' default "fixed" layout, as DLC's labelling GUI writes it.
    """
    frame, hidden = _to_table(labels, target)
    if target.suffix.lower() in HDF5_SUFFIXES:
        frame.to_hdf(tmp, key=_H5_KEY, mode="w")
    else:
        frame.to_csv(tmp)
    if hidden:
        warnings.warn(
            f"{target}: points marked invisible are written without their positions "
            "(DeepLabCut tables have no visibility flag: an invisible point is an empty cell): "
            f"{hidden}",
            PoseWarning,
            stacklevel=3,
        )
    for video in labels.videos:
        frames = np.sort([lf.frame_idx for lf in labels.find(video)])
        if not isinstance(video.filename, list) and np.any(frames != np.arange(len(frames))):
            warnings.warn(
                f"{target}: DeepLabCut tables know frames by image file only: the {len(frames)} "
                f"labelled frames of {video.filename} are written as labeled-data/"
                f"{_stem(video)}/img*.png rows, and read back they are numbered "
                f"0-{len(frames) - 1} in that image folder, not by their frame numbers in the "
                "video",
                PoseWarning,
                stacklevel=3,
            )


def _to_table(labels: sio.Labels, target: Path) -> tuple[pd.DataFrame, int]:
    """Lay labels out as DLC's CollectedData table, one row per labelled frame, and count the
    points marked invisible whose positions the table loses.

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
    node_names = labels.skeletons[0].node_names
    slot_of_track = {id(track): i for i, track in enumerate(labels.tracks)}
    frames = sorted(
        labels.labeled_frames, key=lambda lf: (labels.videos.index(lf.video), lf.frame_idx)
    )
    last_frame = {id(lf.video): lf.frame_idx for lf in frames}  # sorted: the last one wins
    images, rows, slots, xys = [], [], [], []
    hidden = 0
    for row, lf in enumerate(frames):
        images.append(_image_path(lf.video, lf.frame_idx, last_frame[id(lf.video)]))
        taken: set[int] = set()
        extra = len(labels.tracks)
        for inst in lf.user_instances + lf.unused_predictions:
            slot = slot_of_track.get(id(inst.track))
            if slot is None or slot in taken:
                slot, extra = extra, extra + 1
            taken.add(slot)
            rows.append(row)
            slots.append(slot)
            xys.append(inst.numpy())
            placed = np.isfinite(inst.points["xy"]).all(axis=1)
            hidden += int((placed & ~inst.points["visible"]).sum())
    n_slots = 1 + max(slots, default=0)
    points = np.full((len(images), n_slots, len(node_names), 2), np.nan)
    if xys:
        points[rows, slots] = np.stack(xys)

    scorer = _scorer(labels, target)
    if labels.tracks or n_slots > 1:
        individuals = [t.name for t in labels.tracks]
        individuals += [f"individual{i}" for i in range(len(individuals), n_slots)]
        levels, names = [[scorer], individuals, node_names, ["x", "y"]], _HEADERS[1]
    else:
        levels, names = [[scorer], node_names, ["x", "y"]], _HEADERS[0]
    columns = pd.MultiIndex.from_product(levels, names=list(names))
    return pd.DataFrame(points.reshape(len(images), -1), index=images, columns=columns), hidden


def _image_path(video: sio.Video, frame_idx: int, last_frame: int) -> str:
    """DLC's row key: the labelled image, or where DLC would extract this frame to.

    DLC numbers extracted frames with as many digits as the video's last frame index needs;
    when the (unopened) video's length is unknown, the last labelled frame stands in for it.
    """
    if isinstance(video.filename, list):
        image = PurePosixPath(video.filename[frame_idx].replace("\\", "/"))
        return f"labeled-data/{image.parent.name}/{image.name}"
    n_frames = (video.shape or (last_frame + 1,))[0]
    digits = len(str(max(n_frames - 1, last_frame)))
    return f"labeled-data/{_stem(video)}/img{frame_idx:0{digits}d}.png"


def _stem(video: sio.Video) -> str:
    """Name of the ``labeled-data`` folder DLC extracts a video's frames to."""
    source = video.source_video.filename if video.source_video is not None else video.filename
    return PurePosixPath(source.replace("\\", "/")).stem


def _scorer(labels: sio.Labels, target: Path) -> str:
    """DLC requires a ``CollectedData_<scorer>`` file's scorer to match its name.

    Other names keep the scorer the labels were loaded with.
    """
    if target.name.startswith("CollectedData_"):
        return target.name[len("CollectedData_") :].split(".")[0]
    return str(labels.provenance.get("dlc_scorer", "napari-pose"))
