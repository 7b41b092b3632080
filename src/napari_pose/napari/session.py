"""A pose project open in a viewer: one Qt-free object that readers, writers and docks share.

A project is what a labels file holds (``sio.Labels``) once it is shown: its Points layers
(user labels and predictions, each with a ``PoseBinding`` whose ``labels`` is the project), their
skeleton edges and trajectories. :class:`ProjectSession` is the one place that knows, for one
project, its layers, its file and whether that file is its own, whether it holds edits no file
has (``dirty``), and its autosave. :class:`Projects` holds the sessions of one viewer
(``projects(viewer)``): it makes a session when a project's first layer is added, whoever added
it (a reader, a dock, a script), and closes it when its last Points layer is removed.

Every edit of a project, from any dock or from napari's own point tools (seen by
``sync.PoseSync``), goes through :meth:`ProjectSession.mark_edited`: the project becomes dirty and
its autosave runs a few seconds after the last edit (a debounce), so a crash loses at most
the edits of those seconds. Saves go through :meth:`ProjectSession.save`, which never replaces
a file that is not the project's own unless told to (the dock asks the user first), and
refuses to guess where a project that has no file yet should go.

The project's current model (the package the *Train model* dock last trained for it, or ran a
round into) is on the session too, set through :meth:`ProjectSession.set_model`: docks that
never import each other follow it through ``model_changed`` (the *Label poses* dock's proposals,
the *Predict* dock's model folder). It lives as long as the session and is not saved in the
labels file.

Nothing here imports Qt (napari-animation's model/_qt split): the debounce timer and the
question on closing napari come from ``napari/_qt/services.py``, which :func:`projects` installs
when the viewer has a Qt window. Without one (a bare ``ViewerModel``, a script), every edit is
autosaved at once.
"""

from __future__ import annotations

import time
import uuid
import warnings
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import napari
import psygnal
import sleap_io as sio

from napari_pose.core.autosave import AUTOSAVE_SUFFIX, Autosaver, recovery_for
from napari_pose.core.errors import PoseFileError, PoseWarning
from napari_pose.core.io import detect_labels_format, save_labels
from napari_pose.napari.convert import EDGES_KEY, POSE_KEY, TRACKS_KEY, layers_to_labels
from napari_pose.napari.sync import PoseSync, attach, pose_points_layers

#: Seconds of quiet after the last edit before the project is autosaved.
AUTOSAVE_DELAY_S = 2.0

#: Formats a project can be saved to and reopened from without loss: a file in one of these
#: becomes the project's own. An analysis HDF5 file is an export (its user labels read back as
#: predictions), so a project saved there stays unsaved.
_PROJECT_FORMATS = {"slp", "dlc"}


class Timer(Protocol):
    """A restartable single-shot timer (``QTimer`` in napari; see ``_qt/services.py``)."""

    def start(self, seconds: float) -> None: ...

    def stop(self) -> None: ...


TimerFactory = Callable[[Callable[[], object]], Timer]


class _Immediate:
    """The timer of a viewer without Qt: the callback runs at once, at every edit."""

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback

    def start(self, seconds: float) -> None:
        self._callback()

    def stop(self) -> None:
        pass


class NoSavePathError(PoseFileError):
    """The project has no file of its own yet: the user must say where to save it."""


class WouldReplaceError(PoseFileError):
    """Saving would replace a file that is not this project's own: ask the user first."""


class ProjectSession:
    """One pose project open in one viewer.

    Attributes:
        labels: The project (videos, skeleton, tracks, suggestions); it is also the identity
            every layer of the project carries in its ``PoseBinding``.
        path: The file the project was opened from or last saved to as a whole, or None.
        autosaver: Writes unsaved edits to a sidecar file (see ``core.autosave``).
        edited: Emitted after each edit (docks refresh what they show).
        changed: Emitted when ``dirty``, ``path`` or the autosave error changes.
        closed: Emitted once, when the project's last Points layer left the viewer.
        model: The project's current model package: the folder the *Train model* dock last
            trained, or ran a round into, for this project and that finished complete (``None``
            until then). Set only through :meth:`set_model`; not saved in the labels file.
        model_changed: Emitted with ``(new, previous)`` model folders when ``model`` changes, so
            that a dock showing the previous one can follow (see ``same_path``).
    """

    edited = psygnal.Signal()
    changed = psygnal.Signal()
    closed = psygnal.Signal()
    model_changed = psygnal.Signal(object, object)

    def __init__(
        self,
        viewer: napari.viewer.ViewerModel,
        labels: sio.Labels,
        timer: TimerFactory = _Immediate,
    ) -> None:
        self._viewer = weakref.ref(viewer)
        self.labels = labels
        filename = labels.provenance.get("filename")
        self.path: Path | None = None
        if filename and _may_own(Path(str(filename))) and _owner(Path(str(filename))) is None:
            # A file open as another project stays that project's: this one saves elsewhere.
            self.path = Path(str(filename))
        # Each unsaved project autosaves to a file of its own (two must not share one).
        untitled = f"untitled-{uuid.uuid4().hex[:8]}"
        self.autosaver = Autosaver(self.path, self.current, every_seconds=30, untitled=untitled)
        # Work a crash left in an autosave is set aside before this session autosaves over it.
        left = recovery_for(self.path, ignore=self.autosaver.path)
        self._recovered = None if left is None or _is_live(left) else _set_aside(left)
        self._timer = timer(self.flush_autosave)
        self.is_open = True
        self.model: Path | None = None

    # ------------------------------------------------------------------ what the project is
    @property
    def viewer(self) -> napari.viewer.ViewerModel:
        """The viewer showing the project (alive as long as the session is open)."""
        return self._viewer()

    @property
    def name(self) -> str:
        """The file name, or for a project without one the name of its first layer."""
        if self.path is not None:
            return self.path.name
        layers = self.points_layers()
        return layers[0].name if layers else "untitled"

    @property
    def dirty(self) -> bool:
        """Whether the project holds edits that its file does not (autosaved or not)."""
        return self.autosaver.dirty

    @property
    def is_result(self) -> bool:
        """Predictions made in the viewer and neither saved nor merged (the *Predict* dock's
        layer): a result to look at, not a project to train on or to take as ground truth."""
        layers = self.points_layers()
        return self.path is None and bool(layers) and all(_binding(l).predicted for l in layers)

    def points_layers(self) -> list[napari.layers.Points]:
        """The project's Points layers (user labels and predictions), in layer order."""
        viewer = self._viewer()
        layers = [] if viewer is None else pose_points_layers(viewer)
        return [layer for layer in layers if _binding(layer).labels is self.labels]

    def user_layers(self) -> list[napari.layers.Points]:
        """The Points layers holding user labels."""
        return [layer for layer in self.points_layers() if not _binding(layer).predicted]

    def layers(self) -> list[Any]:
        """Every layer showing the project: points, their skeleton edges, trajectories."""
        points = self.points_layers()
        bindings = [_binding(layer) for layer in points]
        viewer = self._viewer()
        others = [
            layer
            for layer in (viewer.layers if viewer is not None else [])
            if any(layer.metadata.get(EDGES_KEY) is b for b in bindings)
            or any(b in getattr(layer.metadata.get(TRACKS_KEY), "bindings", ()) for b in bindings)
        ]
        return points + others

    def current(self) -> sio.Labels:
        """The project as its layers hold it now: every layer merged, every frame."""
        layers = self.points_layers()
        return layers_to_labels(
            [(l.data, {"metadata": l.metadata, "features": l.features}) for l in layers]
        )

    def set_model(self, folder: str | Path | None) -> None:
        """Make ``folder`` (a complete model package, or ``None``) the project's current model
        and emit ``model_changed(new, previous)``; nothing happens when it is that model already.
        """
        new = None if folder is None else Path(folder)
        previous = self.model
        if same_path(new, previous):
            return
        self.model = new
        self.model_changed.emit(new, previous)

    # ------------------------------------------------------------------ edits and autosave
    def mark_edited(self) -> None:
        """Record an edit: the project is dirty and is autosaved once edits pause.

        The autosaver's own thresholds (every 20 edits, or 30 s after the first unsaved one)
        still apply, so a user who never pauses is autosaved too.
        """
        was_dirty = self.dirty
        error = self.autosaver.last_error
        self.autosaver.edited()
        self._timer.start(AUTOSAVE_DELAY_S)
        self.edited.emit()
        if not was_dirty or self.autosaver.last_error != error:
            self.changed.emit()

    def flush_autosave(self) -> str | None:
        """Autosave pending edits now; returns the error message if that failed."""
        error = self.autosaver.last_error
        result = self.autosaver.flush() if self.is_open or self.dirty else None
        if self.autosaver.last_error != error:
            self.changed.emit()
        return result

    def recovery(self) -> Path | None:
        """Work a crash left that the project's file lacks, if there is some: the autosave
        found when the project opened (for an unsaved project, the newest autosave of no open
        project), set aside as ``<name>.recovered-<time>.slp`` so that this session's own
        autosaves never replace it. It is offered while it is newer than the project's file."""
        found = self._recovered
        if found is None or not found.is_file():
            return None
        saved_since = (
            self.path is not None
            and self.path.is_file()
            and self.path.stat().st_mtime_ns >= found.stat().st_mtime_ns
        )
        return None if saved_since else found

    # ------------------------------------------------------------------ saving
    def owns(self, path: str | Path) -> bool:
        """Whether ``path`` is the project's own file (saving there needs no question)."""
        return self.path is not None and _same_file(self.path, Path(path))

    def save(
        self, path: str | Path | None = None, *, replace: bool = False, format: str | None = None
    ) -> bool:
        """Write the project as its layers hold it now, atomically.

        Args:
            path: Where to; by default the project's own file.
            replace: Replace ``path`` even when it exists and is not the project's own file
                (only after the user said so).
            format: ``"slp"``, ``"dlc"`` or ``"analysis_h5"``; by default from the name
                (see ``core.io.save_labels``).

        Returns:
            Whether ``path`` now holds the project (a ``.slp`` or DeepLabCut file, which then
            becomes its own: later saves and autosaves follow it, and the edits are no longer
            guarded), or False for an export (an analysis file) that leaves it unsaved.

        Raises:
            NoSavePathError: No ``path`` and the project has no file of its own yet.
            WouldReplaceError: ``path`` exists, is not the project's file and ``replace`` is False.
            PoseFileError: The file could not be written (named, with the cause).
        """
        if path is None:
            if self.path is None:
                raise NoSavePathError(
                    self.name, "this project has no file yet: choose where to save it"
                )
            path = self.path
        path = Path(path)
        if path.name.endswith(AUTOSAVE_SUFFIX):
            raise PoseFileError(path, "is an autosave file: save the project under another name")
        if not self.owns(path) and _owner(path) is not None:
            raise PoseFileError(path, "is open as another project: close that one first")
        if path.exists() and not self.owns(path) and not replace:
            raise WouldReplaceError(path, "exists and is not this project's file")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", PoseWarning)
            save_labels(self.current(), path, format=format)
        for warning in caught:  # let the caller see them too (the CLI, napari's notifications)
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)  # fmt: skip
        lossy = any(issubclass(w.category, PoseWarning) for w in caught)
        if lossy or not _may_own(path):
            return False  # an export that left something out: the project stays unsaved
        self.path = path
        self.labels.provenance["filename"] = str(path)
        self.autosaver.saved(path)
        self.changed.emit()
        return True

    def close(self) -> None:
        """The project left the viewer (its pending edits were autosaved while its last layer
        was being removed, see ``Projects``): stop."""
        if not self.is_open:
            return
        self._timer.stop()
        self.is_open = False
        self.closed.emit()


def _may_own(path: Path) -> bool:
    """Whether a project can call ``path`` its own: a format that holds a whole project, and
    not an autosave file (which the project's own autosaves would overwrite)."""
    return not path.name.endswith(AUTOSAVE_SUFFIX) and (
        detect_labels_format(path) in _PROJECT_FORMATS
    )


def _owner(path: Path) -> ProjectSession | None:
    """The open project, in any viewer, whose own file ``path`` is."""
    for found in list(_PROJECTS.values()):
        for session in found.sessions:
            if session.owns(path):
                return session
    return None


def _is_live(sidecar: Path) -> bool:
    """Whether ``sidecar`` is the autosave of an open project (another viewer's, say)."""
    return any(
        session.autosaver.path == sidecar
        for found in list(_PROJECTS.values())
        for session in found.sessions
    )


def _set_aside(sidecar: Path) -> Path:
    """Rename an autosave a crash left to ``<name>.recovered-<time>.slp``; keep it where it
    is when that fails (a read-only folder, where nothing autosaves over it either)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(sidecar.stat().st_mtime))
    kept = sidecar.with_name(sidecar.name.replace(AUTOSAVE_SUFFIX, f".recovered-{stamp}.slp"))
    try:
        sidecar.replace(kept)
    except OSError:
        return sidecar
    return kept


class Projects:
    """The projects open in one viewer, made and closed as their layers come and go.

    Attributes:
        added: Emitted with a session when a project opens.
        removed: Emitted with a session when it closed.
    """

    added = psygnal.Signal(object)
    removed = psygnal.Signal(object)

    def __init__(self, viewer: napari.viewer.ViewerModel, timer: TimerFactory = _Immediate) -> None:
        self._viewer = weakref.ref(viewer)
        self._timer = timer
        self.sessions: list[ProjectSession] = []
        self.sync: PoseSync = attach(viewer)
        self.sync.user_edited.connect(self._on_user_edit)
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removing.connect(self._on_removing)
        viewer.layers.events.removed.connect(self._on_removed)

    def adopt_open_layers(self) -> None:
        """Make sessions for the projects whose layers were added before this registry."""
        viewer = self._viewer()
        for layer in [] if viewer is None else viewer.layers:
            self._adopt(layer)

    def of(self, labels: sio.Labels) -> ProjectSession | None:
        """The open session of the project ``labels``."""
        return next((s for s in self.sessions if s.labels is labels), None)

    def of_layer(self, layer: Any) -> ProjectSession | None:
        """The session a pose Points layer belongs to."""
        binding = layer.metadata.get(POSE_KEY) if isinstance(layer, napari.layers.Points) else None
        return None if binding is None else self.of(binding.labels)

    def listed(self) -> dict[str, ProjectSession]:
        """Projects by a name unique in the viewer, in layer order; results are left out."""
        found: dict[str, ProjectSession] = {}
        for session in self.sessions:
            if session.is_result:
                continue
            name, n = session.name, 2
            while name in found:
                name, n = f"{session.name} ({n})", n + 1
            found[name] = session
        return found

    def dirty(self) -> list[ProjectSession]:
        """Projects with edits that no file of theirs holds."""
        return [session for session in self.sessions if session.dirty]

    def _adopt(self, layer: Any) -> None:
        binding = layer.metadata.get(POSE_KEY) if isinstance(layer, napari.layers.Points) else None
        if binding is None or self.of(binding.labels) is not None:
            return
        viewer = self._viewer()
        if viewer is None:
            return
        session = ProjectSession(viewer, binding.labels, self._timer)
        self.sessions.append(session)
        self.added.emit(session)

    def _on_inserted(self, event) -> None:
        self._adopt(event.value)

    def _on_removing(self, event) -> None:
        """Autosave a project's pending edits while its layers still hold them."""
        viewer = self._viewer()
        session = None if viewer is None else self.of_layer(viewer.layers[event.index])
        if session is not None and session.autosaver.pending:
            session.flush_autosave()

    def _on_removed(self, event=None) -> None:
        for session in [s for s in self.sessions if not s.points_layers()]:
            self.sessions.remove(session)
            session.close()
            self.removed.emit(session)

    def _on_user_edit(self, labels: sio.Labels) -> None:
        session = self.of(labels)
        if session is not None:
            session.mark_edited()


_PROJECTS: weakref.WeakKeyDictionary[Any, Projects] = weakref.WeakKeyDictionary()


def projects(viewer: napari.viewer.ViewerModel) -> Projects:
    """The viewer's projects, created on first use with the Qt services the viewer can have.

    Docks are handed a proxy of the viewer (napari's ``PublicOnlyProxy``), a new one per dock:
    the registry is keyed by the viewer itself, so that every dock finds the same projects.
    """
    viewer = getattr(viewer, "__wrapped__", viewer)
    found = _PROJECTS.get(viewer)
    if found is None:
        timer: TimerFactory = _Immediate
        window = getattr(viewer, "window", None)
        if window is not None:
            from napari_pose.napari._qt.services import install, qt_timer

            timer = qt_timer
        found = _PROJECTS[viewer] = Projects(viewer, timer)
        found.adopt_open_layers()  # registered first: a session checks the others' files
        if window is not None:
            install(viewer, found)
    return found


def projects_of_current_viewer() -> None:
    """Start tracking projects in the viewer napari is opening files into (readers call this)."""
    viewer = napari.current_viewer()
    if viewer is not None:
        projects(viewer)


def session_of(labels: sio.Labels) -> ProjectSession | None:
    """The open session of ``labels`` in any viewer (writers get layer data, not a viewer)."""
    for found in list(_PROJECTS.values()):
        session = found.of(labels)
        if session is not None:
            return session
    return None


def same_path(a: str | Path | None, b: str | Path | None) -> bool:
    """Whether two paths name the same file or folder (``None`` is only the same as ``None``)."""
    if a is None or b is None:
        return a is None and b is None
    return _same_file(Path(a), Path(b))


def _binding(layer: napari.layers.Points):
    return layer.metadata[POSE_KEY]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a.absolute() == b.absolute()
