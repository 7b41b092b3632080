"""The *Pose project* dock widget: what is open, which videos are missing, and saving.

Thin by design: it shows the viewer's project sessions (``napari/session.py``) and saves through
``services.save_session``, which asks where a new project goes and before replacing a file that
is not the project's own. The *save as* field shows the chosen project's own file (empty for a
project that has none yet) and follows that project, never an earlier one.
"""

from __future__ import annotations

from pathlib import Path

import napari
import napari.viewer
import sleap_io as sio
from magicgui.types import FileDialogMode
from magicgui.widgets import ComboBox, FileEdit, Label, PushButton

from napari_pose.core.io import missing_videos
from napari_pose.core.video import open_video, video_to_dask
from napari_pose.napari._qt.layout import ScrollingDock, fixed_lines
from napari_pose.napari._qt.services import save_session
from napari_pose.napari.convert import video_name
from napari_pose.napari.session import ProjectSession, projects


def summary(labels: sio.Labels) -> str:
    """One line per fact a user checks first: frames, instances, skeleton, tracks, videos."""
    missing = set(missing_videos(labels))
    n_user = (
        sum(len(lf.user_instances) for lf in labels.labeled_frames) if not labels.is_lazy else None
    )
    lines = [
        f"{len(labels.labeled_frames)} labelled frames"
        + (f", {n_user} user instances" if n_user is not None else ""),
        f"skeleton: {len(labels.skeletons[0].nodes) if labels.skeletons else 0} nodes, "
        f"{len(labels.skeletons[0].edges) if labels.skeletons else 0} edges",
        f"tracks: {', '.join(t.name for t in labels.tracks) or 'none'}",
    ]
    for video in labels.videos:
        status = "MISSING" if missing.intersection(_files(video)) else "ok"
        lines.append(f"video {video_name(video)}: {status}")
    return "\n".join(lines)


def _files(video: sio.Video) -> list[str]:
    """A video's files: one, or its images (DeepLabCut and lightning-pose image folders)."""
    return video.filename if isinstance(video.filename, list) else [video.filename]


class ProjectWidget(ScrollingDock):
    """Pick an open project, see its contents, locate missing videos, save it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._projects = projects(viewer)
        self.project = ComboBox(label="project", choices=self._project_choices)
        self.info = Label(label="contents", value="")
        self.missing = ComboBox(label="missing video", choices=self._missing_choices)
        self.video_file = FileEdit(label="video file", mode=FileDialogMode.EXISTING_FILE)
        self.locate = PushButton(label="", text="Use this video")
        self.state = Label(label="state", value="")
        self.save_path = FileEdit(
            label="save as",
            mode=FileDialogMode.OPTIONAL_FILE,
            filter="*.slp *.csv *.h5",
            nullable=True,
        )
        self.save = PushButton(label="", text="Save project")
        self.body.extend(
            [self.project, self.info, self.missing, self.video_file, self.locate, self.state,
             self.save_path, self.save]
        )  # fmt: skip
        self.project.changed.connect(self._update)
        self.locate.clicked.connect(self.use_video)
        self.save.clicked.connect(self.save_project)
        self.info.native.setWordWrap(True)  # a long summary wraps rather than widens the dock
        fixed_lines(self.state, 2)
        self._watched: ProjectSession | None = None
        viewer.layers.events.inserted.connect(self._reset)
        viewer.layers.events.removed.connect(self._reset)
        self._reset()

    # ------------------------------------------------------------------ state shown

    def _project_choices(self, _widget=None) -> list[str]:
        return list(self._projects.listed())

    def _missing_choices(self, _widget=None) -> list[str]:
        labels = self.current_labels()
        return missing_videos(labels) if labels is not None else []

    @property
    def session(self) -> ProjectSession | None:
        """The chosen project."""
        return self._projects.listed().get(self.project.value)

    def current_labels(self) -> sio.Labels | None:
        return None if self.session is None else self.session.labels

    def _reset(self, event=None) -> None:
        self.project.reset_choices()
        self._update()

    def _update(self, event=None) -> None:
        session = self.session
        if session is not self._watched:
            if self._watched is not None:
                self._watched.changed.disconnect(self._show_state)
            if session is not None:
                session.changed.connect(self._show_state)
            self._watched = session
            # The field follows the project: its own file, or empty until it has one.
            self.save_path.value = None if session is None else session.path
        self.missing.reset_choices()
        labels = self.current_labels()
        self.info.value = summary(labels) if labels is not None else "no pose project open"
        for widget in (self.missing, self.video_file, self.locate):
            widget.visible = bool(self.missing.choices)  # only when a video is missing
        self._show_state()

    def _show_state(self) -> None:
        session = self.session
        if session is None:
            self.state.value = ""
        elif session.autosaver.last_error:
            self.state.value = session.autosaver.last_error
        else:
            where = str(session.path) if session.path else "no file yet"
            self.state.value = f"{'unsaved edits' if session.dirty else 'saved'} ({where})"

    # ------------------------------------------------------------------ actions
    def use_video(self) -> None:
        """Point the selected missing video at the chosen file and show it."""
        labels, stored, new = self.current_labels(), self.missing.value, self.video_file.value
        if labels is None or not isinstance(new, Path):  # no project; mode "r" gives one file
            return
        video_index = next(i for i, v in enumerate(labels.videos) if stored in _files(v))
        data = video_to_dask(open_video(new))  # fails here, with the file named, if unreadable
        labels.videos[video_index].replace_filename(str(new), open=False)
        self._viewer.add_image(
            data, name=video_name(labels.videos[video_index]), rgb=data.ndim == 4,
            contrast_limits=(0, 255),
        )  # fmt: skip
        self._viewer.layers.move(len(self._viewer.layers) - 1, 0)
        if self.session is not None:
            self.session.mark_edited()  # the project's file does not know the new path yet
        self._update()

    def save_project(self) -> Path | None:
        """Save every layer of the project (all frames) to the chosen path, atomically.

        With no path chosen it asks where; a path that exists and is not the project's own
        file is replaced only after the user said so. The path becomes the project's file,
        which may rename it here: it stays selected.

        Returns:
            Where it was saved, or None when cancelled or failed (the failure is shown).
        """
        session = self.session
        if session is None:
            return None
        chosen = self.save_path.value
        assert not isinstance(chosen, tuple)  # mode "w": one file, or None while empty
        saved = save_session(session, chosen)
        self.project.reset_choices()
        for name, other in self._projects.listed().items():
            if other is session:
                self.project.value = name
        self._update()
        return saved
