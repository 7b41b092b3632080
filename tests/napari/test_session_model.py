"""The project session without Qt: a bare ``ViewerModel`` and layers from the reader."""

from __future__ import annotations

import pytest
import sleap_io as sio
from napari.components import ViewerModel

from napari_pose.core.autosave import recovery_for
from napari_pose.core.errors import PoseFileError, PoseWarning
from napari_pose.core.io import load_labels
from napari_pose.napari._reader import read_labels
from napari_pose.napari.convert import new_project_layers
from napari_pose.napari.session import (
    NoSavePathError,
    WouldReplaceError,
    projects,
    same_path,
)


def open_in(viewer: ViewerModel, path) -> None:
    for data, kwargs, kind in read_labels(str(path)):
        getattr(viewer, f"add_{kind}")(data, **kwargs)


@pytest.fixture
def viewer(sample_project, tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    model = ViewerModel()
    open_in(model, sample_project)
    return model


def test_a_project_is_one_session_made_and_closed_with_its_layers(viewer, sample_project):
    found = projects(viewer)
    (session,) = found.sessions
    assert session.path == sample_project and session.name == sample_project.name
    assert {layer.name for layer in session.points_layers()} <= {l.name for l in viewer.layers}
    assert list(found.listed()) == [sample_project.name]
    closed = []
    session.closed.connect(lambda: closed.append(True))
    for layer in session.points_layers():
        viewer.layers.remove(layer)
    assert closed == [True] and found.sessions == [] and not session.is_open


def test_without_qt_every_edit_is_autosaved_at_once(viewer, sample_project):
    (session,) = projects(viewer).sessions
    session.mark_edited()
    assert session.dirty and not session.autosaver.pending
    assert recovery_for(sample_project) is not None


def test_saving_never_replaces_another_file_or_guesses_a_path(viewer, sample_project, tmp_path):
    (session,) = projects(viewer).sessions
    other = tmp_path / "someone_elses.slp"
    other.write_bytes(b"not ours")
    session.mark_edited()
    with pytest.raises(WouldReplaceError, match="someone_elses.slp"):
        session.save(other)
    assert other.read_bytes() == b"not ours"
    assert session.save() and not session.dirty  # its own file: no question
    assert session.save(other, replace=True) and session.path == other
    assert len(load_labels(other).labeled_frames) == len(load_labels(sample_project).labeled_frames)

    untitled = ViewerModel()
    video = sio.Video(filename="frames.mp4", open_backend=False)
    skeleton = load_labels(sample_project).skeletons[0]
    for data, kwargs, kind in new_project_layers(video, skeleton, (10,)):
        getattr(untitled, f"add_{kind}")(data, **kwargs)
    (new,) = projects(untitled).sessions
    with pytest.raises(NoSavePathError):
        new.save()


def test_an_analysis_export_leaves_the_project_unsaved(viewer, tmp_path):
    (session,) = projects(viewer).sessions
    session.mark_edited()
    assert not session.save(tmp_path / "export.analysis.h5")
    assert session.dirty and session.path.suffix == ".slp"


def test_two_unsaved_projects_autosave_to_files_of_their_own(sample_project, tmp_path):
    viewer = ViewerModel()
    skeleton = load_labels(sample_project).skeletons[0]
    for name in ("a.mp4", "b.mp4"):
        video = sio.Video(filename=name, open_backend=False)
        for data, kwargs, kind in new_project_layers(video, skeleton, (10,)):
            getattr(viewer, f"add_{kind}")(data, **{**kwargs, "name": f"{name} {kwargs['name']}"})
    first, second = projects(viewer).sessions
    first.mark_edited()
    second.mark_edited()
    assert first.autosaver.path != second.autosaver.path
    assert first.autosaver.path.is_file() and second.autosaver.path.is_file()
    assert second.recovery() is None  # another open project's live autosave is never offered


class _Manual:
    """A debounce timer that never fires by itself (edits stay pending until a flush)."""

    def __init__(self, callback) -> None:
        self.callback = callback

    def start(self, seconds: float) -> None:
        pass

    def stop(self) -> None:
        pass


def test_a_crash_autosave_is_set_aside_before_the_next_session_autosaves(
    sample_project, tmp_path, monkeypatch
):
    first = ViewerModel()
    open_in(first, sample_project)
    (crashed,) = projects(first).sessions
    crashed.mark_edited()  # the autosave a crash leaves behind
    left = load_labels(crashed.autosaver.path)
    first.layers.clear()

    again = ViewerModel()
    open_in(again, sample_project)
    (session,) = projects(again).sessions
    found = session.recovery()
    assert found is not None and ".recovered-" in found.name
    session.mark_edited()  # autosaves at once: must not replace the crash's work
    assert found.is_file() and session.autosaver.path != found
    assert len(load_labels(found).labeled_frames) == len(left.labeled_frames)
    assert session.save() and session.recovery() is None  # the file is newer now


def test_one_file_is_never_two_projects_own(sample_project):
    viewer = ViewerModel()
    open_in(viewer, sample_project)
    open_in(viewer, sample_project)  # the same file, opened again
    first, second = projects(viewer).sessions
    assert first.path == sample_project and second.path is None
    assert first.autosaver.path != second.autosaver.path
    with pytest.raises(PoseFileError, match="open as another project"):
        second.save(sample_project, replace=True)


def test_removing_a_projects_layers_autosaves_its_last_edits(sample_project, monkeypatch):
    from napari_pose.napari import session as session_module

    monkeypatch.setattr(session_module, "_Immediate", _Manual)
    viewer = ViewerModel()
    open_in(viewer, sample_project)
    (session,) = projects(viewer).sessions
    session.autosaver.every_edits = 1000
    session.mark_edited()
    assert session.autosaver.pending  # the debounce has not run
    viewer.layers.clear()
    assert not session.is_open and not session.autosaver.pending
    assert session.autosaver.last_error is None and session.autosaver.path.is_file()


def test_lossy_exports_and_autosave_files_never_become_the_projects_file(sample_project, tmp_path):
    viewer = ViewerModel()
    open_in(viewer, sample_project)
    (session,) = projects(viewer).sessions
    session.mark_edited()
    with pytest.warns(PoseWarning):  # DeepLabCut renumbers a video's frames
        assert not session.save(tmp_path / "CollectedData_me.csv")
    assert session.dirty and session.path == sample_project
    with pytest.raises(PoseFileError, match="autosave file"):
        session.save(tmp_path / "other.autosave.slp")


def test_the_projects_model_is_set_through_one_method_that_says_what_it_replaced(
    viewer, sample_project, tmp_path
):
    (session,) = projects(viewer).sessions
    assert session.model is None  # no model until the Train dock finishes one
    seen = []
    session.model_changed.connect(lambda new, previous: seen.append((new, previous)))
    session.set_model(tmp_path / "A")
    session.set_model(str(tmp_path / "A"))  # the same folder: nothing to follow
    session.set_model(tmp_path / "B")
    assert seen == [(tmp_path / "A", None), (tmp_path / "B", tmp_path / "A")]
    assert session.model == tmp_path / "B"
    assert same_path(tmp_path / "x" / ".." / "B", session.model) and not same_path(None, "B")
    session.mark_edited()
    assert session.save()  # the model is the viewer's to know, never the labels file's
    provenance = load_labels(sample_project).provenance
    assert not any("model" in str(key) for key in provenance)
    assert str(tmp_path / "B") not in str(provenance)
