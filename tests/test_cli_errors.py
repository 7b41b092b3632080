"""How every ``napari-pose`` command fails and warns: one ``error:`` line naming the file and
the cause, status 2, no traceback; outputs checked before any work; ``evaluate`` never scores
nothing as 0. Commands that need a model are tested in ``tests/nn/test_inference.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from napari_pose.cli import main
from napari_pose.core.io import save_labels
from napari_pose.core.synthetic import make_synthetic, to_labels, write_video


def _error_line(capsys) -> str:
    """The one line a failed command printed on stderr."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.rstrip("\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """User labels on every frame of a 12-frame video, ``v.mp4``."""
    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=0)
    write_video(data.frames, tmp_path / "v.mp4")
    save_labels(to_labels(data, str(tmp_path / "v.mp4")), tmp_path / "p.slp")
    return tmp_path / "p.slp"


@pytest.mark.parametrize(
    ("config", "problem"),
    [
        (None, "No such file or directory"),
        ("training: [1, 2\n", "not valid YAML (while parsing a flow sequence"),
        ("training: 5\n", "not a training config: training: and stages: must be sections"),
    ],
    ids=["missing", "not-yaml", "not-sections"],
)
def test_bad_train_config_is_one_line(project: Path, capsys, config: str | None,
                                      problem: str) -> None:  # fmt: skip
    path = project.parent / "cfg.yaml"
    if config is not None:
        path.write_text(config)
    code = main(["train", str(project), "-o", str(project.parent / "m"), "--config", str(path)])
    assert code == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: {path}: {problem}")


@pytest.mark.parametrize("command", ["convert", "track", "predict", "evaluate", "train"])
def test_unwritable_outputs_fail_before_any_work(project: Path, capsys, monkeypatch,
                                                 command: str) -> None:  # fmt: skip
    """The output's folder is missing (a file, for train): each command says so at once,
    before reading its inputs, which here would fail for other reasons or take long."""
    import napari_pose.core.io

    def no_loading(*args, **kwargs):
        raise AssertionError("inputs were read before the output was checked")

    monkeypatch.setattr(napari_pose.core.io, "load_labels", no_loading)
    folder = project.parent / "missing"
    out = folder / "out.slp"
    argv = {
        "convert": ["convert", str(project), str(out)],
        "track": ["track", str(project), "-o", str(out)],
        "predict": ["predict", str(project), "-m", str(folder), "-o", str(out)],
        "evaluate": ["evaluate", str(project), str(project), "--json", str(folder / "m.json")],
        "train": ["train", str(project), "-o", str(project / "model")],
    }[command]
    assert main(argv) == 2
    line = _error_line(capsys)
    if command == "train":  # a folder is made with its parents, but not inside a file
        assert line == f"error: {project / 'model'}: cannot be written: {project} is not a folder"
    else:
        target = folder / "m.json" if command == "evaluate" else out
        assert line == f"error: {target}: cannot be written: the folder {folder} does not exist"


def test_output_that_is_a_folder_is_refused(project: Path, capsys) -> None:
    assert main(["convert", str(project), str(project.parent)]) == 2
    assert _error_line(capsys) == (f"error: {project.parent}: cannot be written: it is a folder; "
                                   "give a file name")  # fmt: skip


# --------------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------------


def _predictions(project: Path, video: Path, n_frames: int = 12) -> Path:
    """Predictions equal to ``project``'s labels, of ``video`` (a copy of its video, or not)."""
    data = make_synthetic(n_frames=12, size=64, n_animals=1, seed=0)
    if not video.exists():
        video.parent.mkdir(exist_ok=True)
        write_video(np.resize(data.frames, (n_frames, 64, 64)), video)
    path = video.parent / "pred.slp"
    save_labels(to_labels(data, str(video), predicted=True), path)
    return path


def test_evaluate_matches_a_copied_video_by_name_and_length(project: Path, capsys) -> None:
    """Predicted on a copy of the video elsewhere: the same frames, a perfect score (this was
    mAP 0 and status 0: videos were matched by full path)."""
    copy = project.parent / "elsewhere" / "v.mp4"
    copy.parent.mkdir()
    shutil.copy(project.parent / "v.mp4", copy)
    predictions = _predictions(project, copy)
    assert main(["evaluate", str(project), str(predictions)]) == 0
    out = capsys.readouterr().out
    assert "frames: 12 labelled, 12 predicted, 12 labelled and predicted (scored)" in out
    assert "oks_map: 1" in out


@pytest.mark.parametrize(
    ("video", "n_frames"), [("other.mp4", 12), ("v.mp4", 20)], ids=["name", "length"]
)
def test_evaluate_of_other_videos_is_an_error(project: Path, capsys, video: str,
                                              n_frames: int) -> None:  # fmt: skip
    predictions = _predictions(project, project.parent / "other" / video, n_frames)
    assert main(["evaluate", str(project), str(predictions)]) == 2
    assert _error_line(capsys) == (
        f"error: {predictions}: none of its 12 predicted frames is one of the 12 labelled "
        f"frames of {project} (videos are matched by file name and frame count; predicted: "
        f"{video}; labelled: v.mp4)"
    )


def test_evaluate_without_predictions_is_an_error(project: Path, capsys) -> None:
    assert main(["evaluate", str(project), str(project)]) == 2
    assert _error_line(capsys) == (
        f"error: {project}: has no predicted instances to score against {project}"
    )
