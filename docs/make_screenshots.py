"""Take the screenshots in docs/ from the real viewer (run under a display or Xvfb).

    xvfb-run -a .venv/bin/python docs/make_screenshots.py

Opens the synthetic sample project, docks the plugin's widgets, labels an instance by clicking
through the Labeller as a user's clicks do, and saves window screenshots to docs/images/.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import napari

IMAGES = Path(__file__).resolve().parent / "images"


def _shoot(viewer: napari.Viewer, path: Path) -> None:
    from qtpy.QtWidgets import QApplication

    viewer.window.resize(1500, 1000)  # after docking, so the docks are laid out
    QApplication.processEvents()
    viewer.screenshot(str(path), canvas_only=False, flash=False)


def main() -> None:
    os.environ.setdefault("NAPARI_POSE_CACHE", tempfile.mkdtemp())
    from napari_pose.core.synthetic import write_sample_project

    project = write_sample_project(Path(tempfile.mkdtemp()) / "project")
    viewer = napari.Viewer(title="napari-pose")
    viewer.open(str(project), plugin="napari-pose")
    _, labelling = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses")
    viewer.dims.set_current_step(0, 40)
    labeller = labelling.labeller
    labeller.new_instance()
    for yx in ((60.0, 60.0), (70.0, 66.0), (84.0, 72.0)):
        labeller.place(yx)
    labelling.names.value = True
    labelling.confirm_close = lambda: "discard"  # a script: never ask on close
    IMAGES.mkdir(exist_ok=True)
    _shoot(viewer, IMAGES / "labelling.png")
    viewer.window.add_plugin_dock_widget("napari-pose", "Skeleton", tabify=True)
    _shoot(viewer, IMAGES / "skeleton.png")
    viewer.close()
    print(f"wrote {IMAGES / 'labelling.png'} and {IMAGES / 'skeleton.png'}")


if __name__ == "__main__":
    main()
