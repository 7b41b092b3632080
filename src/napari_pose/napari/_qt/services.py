"""What project sessions need from Qt: a timer, questions to the user, and a guard on closing.

``session.projects(viewer)`` installs these for a viewer with a window, so they hold whichever
docks are open: the debounced autosave (:func:`qt_timer`) and the question before napari closes
with unsaved projects (:func:`guard_close`). :func:`save_session` is the one way docks save a
project: it asks where when the project has no file yet, asks before replacing a file that is
not the project's own, and shows a failure with the file and its cause.

The questions are module functions so that tests can answer them (``tests/conftest.py``).
"""

from __future__ import annotations

from pathlib import Path

import napari
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QApplication, QFileDialog, QMainWindow, QMessageBox

from napari_pose.core.errors import PoseFileError
from napari_pose.napari.session import Projects, ProjectSession

#: File types a project can be saved as, for the save dialog.
SAVE_FILTER = "SLEAP labels (*.slp);;DeepLabCut labels (*.csv *.h5);;SLEAP analysis (*.analysis.h5)"


class _QtTimer:
    """A single-shot QTimer restarted by each ``start`` (the autosave debounce)."""

    def __init__(self, callback) -> None:
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(callback)

    def start(self, seconds: float) -> None:
        self._timer.start(int(seconds * 1000))

    def stop(self) -> None:
        self._timer.stop()


def qt_timer(callback) -> _QtTimer:
    return _QtTimer(callback)


# ---------------------------------------------------------------------------------- questions
def ask_save_path(session: ProjectSession) -> Path | None:
    """Ask where to save a project that has no file yet; None when the user cancelled."""
    start = str(session.path or Path.cwd() / f"{Path(session.name).stem}.slp")
    chosen, _ = QFileDialog.getSaveFileName(
        None,
        f"Save {session.name}",
        start,
        SAVE_FILTER,
        options=QFileDialog.Option.DontConfirmOverwrite,  # save_session asks, naming whose file
    )
    return Path(chosen) if chosen else None


def confirm_replace(path: Path) -> bool:
    """Ask before replacing a file that is not the project's own."""
    answer = QMessageBox.question(
        None,
        "napari-pose",
        f"{path} exists and is not this project's file.\nReplace it?",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.Cancel,
        QMessageBox.StandardButton.Cancel,
    )
    return answer == QMessageBox.StandardButton.Yes


def ask_unsaved(names: list[str]) -> str:
    """Ask whether to save unsaved projects before closing: "save", "discard" or "cancel"."""
    buttons = (
        QMessageBox.StandardButton.Save
        | QMessageBox.StandardButton.Discard
        | QMessageBox.StandardButton.Cancel
    )
    listed = "\n".join(f"  {name}" for name in names)
    answer = QMessageBox.question(
        None, "napari-pose", f"Save your labels before closing?\n{listed}", buttons
    )
    return {
        QMessageBox.StandardButton.Save: "save",
        QMessageBox.StandardButton.Discard: "discard",
    }.get(answer, "cancel")


# ---------------------------------------------------------------------------------- saving
def save_session(session: ProjectSession, path: str | Path | None = None) -> Path | None:
    """Save ``session`` to ``path`` (default: its own file, or where the user says).

    Returns:
        Where it was written, or None when the user cancelled or the save failed (shown).
    """
    target = Path(path) if path is not None else session.path
    if target is None:
        target = ask_save_path(session)
        if target is None:
            return None
    replace = False
    if target.exists() and not session.owns(target):
        if not confirm_replace(target):
            return None
        replace = True
    try:
        whole = session.save(target, replace=replace)
    except (PoseFileError, OSError) as error:
        show_error(f"Could not save {session.name}: {error}")
        return None
    if whole:
        show_info(f"saved {target}")
    else:
        show_warning(
            f"exported {target}, but an analysis file reads user labels back as predictions: "
            "save the project as .slp to keep them"
        )
    return target


# ---------------------------------------------------------------------------------- closing
def close_allowed(found: Projects) -> bool:
    """Whether napari may close: asks first when some project holds unsaved edits."""
    dirty = found.dirty()
    if not dirty:
        return True
    for session in dirty:
        session.flush_autosave()  # whatever the answer, the edits are in the autosave first
    answer = ask_unsaved([session.name for session in dirty])
    if answer == "cancel":
        return False
    if answer == "save":  # an export (analysis file) or a failed save keeps napari open
        return all(save_session(s) is not None and not s.dirty for s in dirty)
    return True


class _CloseGuard(QObject):
    def __init__(self, found: Projects, parent: QObject) -> None:
        super().__init__(parent)
        self._projects = found

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.Close and not close_allowed(self._projects):
            event.ignore()
            return True
        return False


def install(viewer: napari.Viewer, found: Projects) -> None:
    """Watch over the viewer's projects, whichever docks are open.

    Asks before the window closes with unsaved projects, and shows each new autosave failure
    once: a failing
    disk fails again at every retry, and a pop-up each time would bury labelling, but saying
    nothing would let the user label on believing the work is protected (docks keep showing
    the error while it lasts).
    """
    window = _main_window(viewer)
    if window is not None:
        window.installEventFilter(_CloseGuard(found, window))
    found.added.connect(_report_autosave_failures)
    for session in found.sessions:
        _report_autosave_failures(session)


def _main_window(viewer: napari.Viewer) -> QMainWindow | None:
    """The viewer's main window, found among the application's windows.

    napari has no public hook for its window closing and hides ``viewer.window._qt_window``
    from plugins, so the close guard finds the window whose viewer is this one (the one place
    this package reads napari's private names).
    """
    for widget in QApplication.topLevelWidgets():
        qt_viewer = getattr(widget, "_qt_viewer", None)
        if isinstance(widget, QMainWindow) and getattr(qt_viewer, "viewer", None) is viewer:
            return widget
    return None


def _report_autosave_failures(session: ProjectSession) -> None:
    shown: list[str | None] = [None]

    def report() -> None:
        error = session.autosaver.last_error
        if error is not None and error != shown[0]:
            show_warning(error)
        shown[0] = error

    session.changed.connect(report)
