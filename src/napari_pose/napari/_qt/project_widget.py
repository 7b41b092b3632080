"""The *Pose project* dock widget: what is open, which videos are missing, and saving.

Thin by design: it gathers choices and calls ``core.io`` and ``convert``; everything it does is
also a plain function tested without a viewer.
"""

from __future__ import annotations

from pathlib import Path

import napari.viewer
import sleap_io as sio
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton
from napari.utils.notifications import show_info, show_warning

import napari
from napari_pose.core.io import missing_videos
from napari_pose.core.video import open_video, video_to_dask
from napari_pose.napari.convert import video_name
from napari_pose.napari.labelling import open_projects, save_project
from napari_pose.napari.sync import attach


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
        status = "MISSING" if video.filename in missing else "ok"
        lines.append(f"video {video_name(video)}: {status}")
    return "\n".join(lines)


class ProjectWidget(Container):
    """Pick an open project, see its contents, locate missing videos, save it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        attach(viewer)
        self.project = ComboBox(label="project", choices=self._project_choices)
        self.info = Label(label="contents", value="")
        self.missing = ComboBox(label="missing video", choices=self._missing_choices)
        self.video_file = FileEdit(label="video file", mode="r")
        self.locate = PushButton(label="", text="Use this video")
        self.save_path = FileEdit(label="save as", mode="w", filter="*.slp *.csv *.h5")
        self.save = PushButton(label="", text="Save project")
        self.extend(
            [self.project, self.info, self.missing, self.video_file, self.locate,
             self.save_path, self.save]
        )  # fmt: skip
        self.project.changed.connect(self._update)
        self.locate.clicked.connect(self.use_video)
        self.save.clicked.connect(self.save_project)
        viewer.layers.events.inserted.connect(self._reset)
        viewer.layers.events.removed.connect(self._reset)
        self._reset()

    # ------------------------------------------------------------------ state shown
    def _project_choices(self, _widget=None) -> list[str]:
        return list(open_projects(self._viewer))

    def _missing_choices(self, _widget=None) -> list[str]:
        labels = self.current_labels()
        return missing_videos(labels) if labels is not None else []

    def current_labels(self) -> sio.Labels | None:
        return open_projects(self._viewer).get(self.project.value)

    def _reset(self, event=None) -> None:
        self.project.reset_choices()
        self._update()

    def _update(self, event=None) -> None:
        labels = self.current_labels()
        self.missing.reset_choices()
        self.info.value = summary(labels) if labels is not None else "no pose project open"
        for widget in (self.missing, self.video_file, self.locate):
            widget.visible = bool(self.missing.choices)  # only when a video is missing
        if labels is not None and labels.provenance.get("filename"):
            self.save_path.value = Path(str(labels.provenance["filename"]))

    # ------------------------------------------------------------------ actions
    def use_video(self) -> None:
        """Point the selected missing video at the chosen file and show it."""
        labels, stored = self.current_labels(), self.missing.value
        new = Path(self.video_file.value)
        video_index = next(i for i, v in enumerate(labels.videos) if v.filename == stored)
        data = video_to_dask(open_video(new))  # fails here, with the file named, if unreadable
        labels.videos[video_index].replace_filename(str(new), open=False)
        self._viewer.add_image(
            data, name=video_name(labels.videos[video_index]), rgb=data.ndim == 4,
            contrast_limits=(0, 255),
        )  # fmt: skip
        self._viewer.layers.move(len(self._viewer.layers) - 1, 0)
        self._update()

    def save_project(self) -> Path:
        """Save every layer of the project (all frames) to the chosen path, atomically.

        The path becomes the project's file, which may rename it here: it stays selected.
        """
        labels, path = self.current_labels(), Path(self.save_path.value)
        if save_project(self._viewer, labels, path):
            show_info(f"saved {path}")
        else:
            show_warning(f"exported {path}, but an analysis file reads user labels back as "
                         "predictions: save the project as .slp to keep them")  # fmt: skip
        self.project.reset_choices()
        for name, other in open_projects(self._viewer).items():
            if other is labels:
                self.project.value = name
        return path
