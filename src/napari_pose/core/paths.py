"""Find the videos a labels file refers to, wherever the project has been moved.

Labels files store video paths as they were on the machine that wrote them: absolute paths
from another computer (``D:\\data\\clip.mp4``), paths relative to the repository SLEAP ran in
(``tests/data/tracks\\clip.mp4``), or paths relative to the labels file. A project folder that
was copied elsewhere still has its videos beside or above the labels file, usually under the
trailing components of the stored path, so that is where we look. Nothing here opens a video:
existence checks only, so loading stays fast and works without codecs.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sleap_io as sio

#: How many folders above the labels file's folder are searched for a stored path's tail.
#: Three covers ``<project>/labeled-data/<video>/CollectedData.csv`` and repository layouts
#: like ``tests/data/<format>/file.slp`` without wandering over the whole disk.
MAX_PARENT_LEVELS = 3

_DRIVE = re.compile(r"^[A-Za-z]:$")


def _components(stored: str) -> list[str]:
    """Split a stored path of any OS into its meaningful trailing components.

    Backslashes count as separators wherever the file was written; a drive letter, empty and
    ``.`` parts carry no location; anything up to a ``..`` only makes sense on the original
    machine, so only what follows the last ``..`` can be matched elsewhere.
    """
    parts = [p for p in stored.replace("\\", "/").split("/") if p not in ("", ".")]
    if parts and _DRIVE.match(parts[0]):
        parts = parts[1:]
    if ".." in parts:
        parts = parts[len(parts) - parts[::-1].index("..") :]
    return parts


def resolve_video_path(stored: str, labels_path: str | Path) -> Path | None:
    """Return the existing file that ``stored`` refers to, or None when none is found.

    Tried in order, first hit wins:

    1. ``stored`` itself when it is absolute (a relative path is *not* tried against the
       current working directory: that would make loading depend on where the program was
       started, and SLEAP means such paths relative to the labels file or its repository).
    2. ``stored`` relative to the labels file's folder.
    3. The longest trailing run of ``stored``'s components that exists in the labels folder
       or one of its :data:`MAX_PARENT_LEVELS` parents (nearest folder first for each length),
       so ``tests/data/json_format_v1/x.mp4`` stored in ``data/sleap/slp_hdf5/a.slp`` finds
       ``data/sleap/json_format_v1/x.mp4``.

    Args:
        stored: The path as written in the labels file (any OS's separators).
        labels_path: The labels file the path was read from.

    Returns:
        An absolute path to an existing file or folder, or None.
    """
    parts = _components(stored)
    if not parts:  # "" or "." would otherwise "resolve" to the labels folder itself
        return None
    normalised = stored.replace("\\", "/")
    as_stored = Path(normalised)
    if as_stored.is_absolute() and as_stored.exists():
        return as_stored
    labels_dir = Path(labels_path).absolute().parent
    if not _DRIVE.match(normalised[:2]):
        beside = labels_dir / normalised
        if beside.exists():
            return Path(os.path.normpath(beside))
    bases = [labels_dir, *labels_dir.parents[:MAX_PARENT_LEVELS]]
    for n in range(len(parts), 0, -1):
        tail = Path(*parts[-n:])
        for base in bases:
            candidate = base / tail
            if candidate.exists():
                return candidate
    return None


def relink_video(video: sio.Video, filename: str | list[str]) -> None:
    """Point ``video`` at ``filename`` (a path, or one path per image) without opening it.

    ``Video.replace_filename`` would drop the recorded shape, grayscale flag and fps, which
    stay true here (it is the same file, found elsewhere) and are what a closed video is saved
    with. The backend metadata must follow the filename because sleap-io writes a closed
    video's metadata verbatim and rebuilds image lists from its ``filenames`` entry.
    """
    if video.backend is not None:
        video.close()
    video.filename = filename
    if isinstance(filename, list):
        video.backend_metadata["filename"] = filename[0]
        video.backend_metadata["filenames"] = filename
    else:
        video.backend_metadata["filename"] = filename


def relink_videos(labels: sio.Labels, labels_path: str | Path) -> None:
    """Replace every video filename in ``labels`` that can be resolved by its resolved path.

    Unresolvable paths keep their stored value, so saving the labels again loses nothing and
    :func:`missing_videos` can name them.
    """
    for video in labels.videos:
        stored = video.filename
        files = stored if isinstance(stored, list) else [stored]
        resolved = [resolve_video_path(f, labels_path) for f in files]
        new = [f if r is None else r.as_posix() for f, r in zip(files, resolved, strict=True)]
        if new != files:
            relink_video(video, new if isinstance(stored, list) else new[0])


def missing_videos(labels: sio.Labels) -> list[str]:
    """List, per video that cannot be read, the first of its files that does not exist.

    One entry per video (not per image) keeps the list short enough to show the user when a
    whole image folder is missing.
    """
    missing = []
    for video in labels.videos:
        files = video.filename if isinstance(video.filename, list) else [video.filename]
        absent = next((f for f in files if not Path(f).exists()), None)
        if absent is not None:
            missing.append(absent)
    return missing
