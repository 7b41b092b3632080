"""Autosave: labelling never loses more than a few edits, even when napari crashes.

Edits are periodically written to a *sidecar* file rather than over the user's labels file,
because the user decides when their file changes: an autosave must never overwrite what they
last chose to save. The sidecar sits beside the labels (``clip.slp`` -> ``clip.autosave.slp``)
so it travels with the project, except where it cannot: DeepLabCut projects and other non-SLEAP
files (a ``.slp`` sidecar beside a DLC ``config.yaml`` would confuse DLC users and tools),
unsaved projects, and folders we may not write to. Those sidecars go to a cache folder
(``$NAPARI_POSE_CACHE`` or the user cache) under a name derived from the full labels path, so
two projects never share one.

Sidecars are always SLEAP ``.slp``, whatever the labels' own format, since that format holds
everything in sleap-io's ``Labels`` and the recovery copy must lose nothing. They are written
with :func:`~.io.save_labels`, which is atomic, so a crash during an autosave leaves the
previous autosave intact.

On reopening, :func:`recovery_for` says whether a sidecar holds work newer than the labels file,
for the GUI to offer restoring it.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import sleap_io as sio
from platformdirs import user_cache_dir

from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import save_labels

__all__ = ["AUTOSAVE_SUFFIX", "Autosaver", "autosave_path", "recovery_for"]

#: Environment variable overriding the cache folder (shared with the sample data).
CACHE_ENV = "NAPARI_POSE_CACHE"

AUTOSAVE_SUFFIX = ".autosave.slp"
_UNTITLED = "untitled"

PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# Where sidecars live
# --------------------------------------------------------------------------------------------


def autosave_path(labels_path: PathLike | None, untitled: str = _UNTITLED) -> Path:
    """The sidecar file that autosaves of ``labels_path`` are written to.

    Args:
        labels_path: The user's labels file, or None for a project never saved.
        untitled: The sidecar's name for a project never saved; give each open project its
            own (``untitled-<id>``), so that two unsaved projects never overwrite each other.

    Returns:
        ``<name>.autosave.slp`` beside a ``.slp`` labels file whose folder is writable;
        otherwise a file in the cache folder named after the labels file plus a hash of its
        absolute path (``<untitled>.autosave.slp`` for an unsaved project). The cache folder
        may not exist yet.
    """
    if labels_path is None:
        return _cache_folder() / f"{untitled}{AUTOSAVE_SUFFIX}"
    path = Path(labels_path)
    beside = _beside(path)
    if beside is not None and _writable(path.parent):
        return beside
    return _in_cache(path)


def recovery_for(labels_path: PathLike | None, ignore: PathLike | None = None) -> Path | None:
    """The sidecar holding work newer than ``labels_path``, or None when there is none.

    Both places a sidecar can be are checked, because the labels folder may have become
    writable or read-only since napari crashed. A sidecar counts only when its modification
    time is later than the labels file's (or the labels file is gone): an older one is left
    over from a crash between the user's save and the sidecar's deletion, and holds nothing
    the labels file lacks. For an unsaved project (``labels_path`` None) it is the newest
    autosave of any unsaved project, but ``ignore`` (that project's own).
    """
    if labels_path is None:
        found = _cache_folder().glob(f"{_UNTITLED}*{AUTOSAVE_SUFFIX}")
        sidecars = [p for p in found if ignore is None or p != Path(ignore)]
    else:
        sidecars = [p for p in _sidecars(labels_path) if p.is_file()]
    if not sidecars:
        return None
    newest = max(sidecars, key=lambda p: p.stat().st_mtime_ns)
    if labels_path is None or not Path(labels_path).is_file():
        return newest
    if newest.stat().st_mtime_ns > Path(labels_path).stat().st_mtime_ns:
        return newest
    return None


def _cache_folder() -> Path:
    """Read at every call so that tests and the CLI can redirect it through the environment."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("napari-pose")) / "autosave"


def _beside(path: Path) -> Path | None:
    """``clip.slp`` -> ``clip.autosave.slp``; None for files that are not SLEAP labels."""
    if not path.name.lower().endswith(".slp"):
        return None
    return path.with_name(path.name[: -len(".slp")] + AUTOSAVE_SUFFIX)


def _in_cache(path: Path) -> Path:
    """A cache file unique to ``path``: the name for people, the hash against collisions."""
    digest = hashlib.sha256(str(path.expanduser().resolve()).encode("utf-8")).hexdigest()
    stem = path.name[: -len(".slp")] if path.name.lower().endswith(".slp") else path.name
    return _cache_folder() / f"{stem}-{digest[:16]}{AUTOSAVE_SUFFIX}"


def _sidecars(labels_path: PathLike | None, untitled: str = _UNTITLED) -> list[Path]:
    """Every place a sidecar of ``labels_path`` may have been written."""
    if labels_path is None:
        return [autosave_path(None, untitled)]
    path = Path(labels_path)
    beside = _beside(path)
    return [_in_cache(path)] if beside is None else [beside, _in_cache(path)]


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


# --------------------------------------------------------------------------------------------
# The autosaver
# --------------------------------------------------------------------------------------------


class Autosaver:
    """Counts the user's edits and writes them to the sidecar every so many edits or seconds.

    The GUI calls :meth:`edited` after every edit, :meth:`saved` after the user's own save
    succeeded, and :meth:`flush` when idle or closing (the time threshold is only checked when
    an edit arrives, so a last edit followed by a pause waits for ``flush``).

    No method raises because an autosave failed: a crash of the labelling GUI in its safety net
    would lose exactly the work it exists to keep. Failures are returned and kept in
    :attr:`last_error` for the GUI to show.

    Args:
        labels_path: The user's labels file, or None for a project not saved yet.
        get_labels: Builds the current labels (the GUI rebuilds them from its layers); called
            only when an autosave is due, since that may be slow for big projects.
        every_edits: Autosave after this many edits since the last autosave attempt.
        every_seconds: Autosave when the oldest edit not yet attempted is this old.
        clock: Monotonic seconds; injectable so tests need not sleep.
        untitled: Sidecar name while the project has no file (see :func:`autosave_path`).
    """

    def __init__(
        self,
        labels_path: PathLike | None,
        get_labels: Callable[[], sio.Labels],
        *,
        every_edits: int = 20,
        every_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        untitled: str = _UNTITLED,
    ) -> None:
        if every_edits < 1 or every_seconds <= 0:
            raise ValueError("every_edits must be at least 1 and every_seconds positive")
        self.every_edits = every_edits
        self.every_seconds = every_seconds
        self._labels_path = None if labels_path is None else Path(labels_path)
        self._get_labels = get_labels
        self._clock = clock
        self._untitled = untitled
        self._dirty = False  # edits not in the user's labels file
        self._unprotected = False  # edits in no successful autosave either
        # Thresholds count from the last attempt, not the last success, so a failing disk is
        # retried every `every_edits` edits instead of stalling the GUI on every edit.
        self._edits_since_attempt = 0
        self._first_edit_time: float | None = None
        self._last_error: str | None = None

    @property
    def labels_path(self) -> Path | None:
        """The user's labels file (None until an unsaved project is first saved)."""
        return self._labels_path

    @property
    def path(self) -> Path:
        """Where the next autosave goes (see :func:`autosave_path`)."""
        return autosave_path(self._labels_path, self._untitled)

    @property
    def dirty(self) -> bool:
        """Whether there are edits the user's labels file does not hold, autosaved or not."""
        return self._dirty

    @property
    def pending(self) -> bool:
        """Whether some edit is in no successful autosave yet (a crash now would lose it)."""
        return self._unprotected

    @property
    def last_error(self) -> str | None:
        """Why the latest autosave failed, or None since it (or the user's save) succeeded."""
        return self._last_error

    def edited(self) -> str | None:
        """Count one edit and autosave when a threshold is reached.

        Returns:
            The error message when an autosave was due and failed, else None.
        """
        self._dirty = self._unprotected = True
        self._edits_since_attempt += 1
        now = self._clock()
        if self._first_edit_time is None:
            self._first_edit_time = now
        if (
            self._edits_since_attempt >= self.every_edits
            or now - self._first_edit_time >= self.every_seconds
        ):
            return self._autosave()
        return None

    def flush(self) -> str | None:
        """Autosave now if some edit is in no successful autosave yet.

        Returns:
            The error message when the autosave failed, else None.
        """
        return self._autosave() if self._unprotected else None

    def saved(self, labels_path: PathLike | None = None) -> None:
        """Forget the edits after the user's own save succeeded, and delete the sidecar.

        Args:
            labels_path: Where the user saved, when that changed ("Save As", or the first save
                of an unsaved project); later autosaves follow it.
        """
        stale = _sidecars(self._labels_path, self._untitled)
        if labels_path is not None:
            self._labels_path = Path(labels_path)
            stale += _sidecars(self._labels_path)
        self._dirty = self._unprotected = False
        self._edits_since_attempt = 0
        self._first_edit_time = None
        self._last_error = None
        for sidecar in stale:
            try:
                sidecar.unlink(missing_ok=True)
            except OSError as exc:  # harmless: recovery_for ignores sidecars older than labels
                self._last_error = f"Could not delete the autosave {sidecar}: {exc}"

    def _autosave(self) -> str | None:
        target = self.path
        self._edits_since_attempt = 0
        self._first_edit_time = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            save_labels(self._get_labels(), target, format="slp")
        except PoseFileError as exc:  # already names the file
            self._last_error = f"Autosave failed: {exc}"
        except Exception as exc:  # the GUI's labels builder or mkdir: nothing may reach the GUI
            self._last_error = f"Autosave to {target} failed: {type(exc).__name__}: {exc}"
        else:
            self._unprotected = False
            self._last_error = None
        return self._last_error
