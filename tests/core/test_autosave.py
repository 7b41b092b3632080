"""Autosave and crash safety: labelling never loses work.

The sidecar logic is tested with tiny hand-made labels and a fake clock. The crash test kills a
process that saves the real 1500-frame SLEAP project in a loop, at random moments, and checks
every time that the file left behind opens with every label.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core import autosave
from napari_pose.core.autosave import Autosaver, autosave_path, recovery_for
from napari_pose.core.io import load_labels, save_labels

HELPER = Path(__file__).with_name("_save_forever.py")


def _tiny_labels(x: float = 1.0) -> sio.Labels:
    """One frame, one two-node instance whose first x coordinate tells versions apart."""
    skeleton = sio.Skeleton(["a", "b"])
    video = sio.Video(filename="missing.mp4", open_backend=False)
    instance = sio.Instance.from_numpy(np.array([[x, 2.0], [3.0, 4.0]]), skeleton=skeleton)
    return sio.Labels([sio.LabeledFrame(video=video, frame_idx=0, instances=[instance])])


class FakeClock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingLabels:
    """The GUI's labels builder: counts calls, since it is called once per autosave attempt."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> sio.Labels:
        self.calls += 1
        return _tiny_labels(float(self.calls))


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test's cache sidecars out of the real user cache."""
    monkeypatch.setenv(autosave.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "autosave"


def _first_x(path: Path) -> float:
    return float(sio.load_slp(path.as_posix(), open_videos=False)[0].instances[0].numpy()[0, 0])


def _set_mtime(path: Path, seconds: float) -> None:
    os.utime(path, ns=(int(seconds * 1e9), int(seconds * 1e9)))


# --------------------------------------------------------------------------------------------
# Where sidecars go
# --------------------------------------------------------------------------------------------


def test_sidecar_sits_beside_sleap_labels(tmp_path: Path) -> None:
    assert autosave_path(tmp_path / "clip.slp") == tmp_path / "clip.autosave.slp"
    assert autosave_path(tmp_path / "clip.pkg.slp") == tmp_path / "clip.pkg.autosave.slp"
    assert autosave_path(str(tmp_path / "Clip.SLP")) == tmp_path / "Clip.autosave.slp"


def test_dlc_and_unsaved_projects_autosave_to_distinct_cache_files(
    tmp_path: Path, cache: Path
) -> None:
    first = autosave_path(tmp_path / "mouse" / "config.yaml")
    second = autosave_path(tmp_path / "rat" / "config.yaml")
    table = autosave_path(tmp_path / "mouse" / "CollectedData_me.csv")
    analysis = autosave_path(tmp_path / "clip.analysis.h5")
    for path in (first, second, table, analysis):
        assert path.parent == cache and path.name.endswith(".autosave.slp")
    assert len({first, second, table, analysis}) == 4
    assert first.name.startswith("config.yaml-")
    assert autosave_path(tmp_path / "mouse" / "config.yaml") == first  # stable across runs
    assert autosave_path(None) == cache / "untitled.autosave.slp"


def test_unwritable_or_missing_folder_falls_back_to_cache(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may run as root, who can write into any chmod-ed folder, so deny access instead.
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != locked and real_access(p, mode, **kw)
    )
    sidecar = autosave_path(locked / "clip.slp")
    assert sidecar.parent == cache and sidecar.name.startswith("clip-")
    assert sidecar != autosave_path(tmp_path / "other" / "clip.slp")  # no collision
    assert autosave_path(tmp_path / "gone" / "clip.slp").parent == cache

    saver = Autosaver(locked / "clip.slp", _tiny_labels, every_edits=1)
    assert saver.edited() is None
    assert sidecar.is_file() and not any(locked.iterdir())


# --------------------------------------------------------------------------------------------
# Recovery after a crash
# --------------------------------------------------------------------------------------------


def test_recovery_offers_only_a_sidecar_newer_than_the_labels(tmp_path: Path) -> None:
    labels = tmp_path / "clip.slp"
    save_labels(_tiny_labels(), labels)
    assert recovery_for(labels) is None  # no sidecar

    sidecar = autosave_path(labels)
    save_labels(_tiny_labels(5.0), sidecar)
    _set_mtime(labels, 1_000)
    _set_mtime(sidecar, 2_000)
    assert recovery_for(labels) == sidecar

    # Left over from a crash between the user's save and the sidecar's deletion.
    _set_mtime(labels, 3_000)
    assert recovery_for(labels) is None

    labels.unlink()  # the labels file is gone: the sidecar is all there is
    assert recovery_for(labels) == sidecar


def test_recovery_finds_the_newest_sidecar_wherever_it_was_written(
    tmp_path: Path, cache: Path
) -> None:
    labels = tmp_path / "clip.slp"
    save_labels(_tiny_labels(), labels)
    _set_mtime(labels, 1_000)
    beside = autosave_path(labels)
    cached = autosave._in_cache(labels)  # written while the folder was read-only
    cache.mkdir(parents=True)
    save_labels(_tiny_labels(2.0), cached)
    _set_mtime(cached, 2_000)
    assert recovery_for(labels) == cached
    save_labels(_tiny_labels(3.0), beside)
    _set_mtime(beside, 3_000)
    assert recovery_for(labels) == beside

    save_labels(_tiny_labels(), cache / "untitled.autosave.slp")
    assert recovery_for(None) == cache / "untitled.autosave.slp"


# --------------------------------------------------------------------------------------------
# Autosaver
# --------------------------------------------------------------------------------------------


def test_autosaves_every_n_edits(tmp_path: Path) -> None:
    labels = CountingLabels()
    saver = Autosaver(tmp_path / "clip.slp", labels, every_edits=3, clock=FakeClock())
    assert not saver.dirty and saver.path == tmp_path / "clip.autosave.slp"
    for _ in range(2):
        assert saver.edited() is None
    assert labels.calls == 0 and not saver.path.exists() and saver.dirty
    saver.edited()
    assert labels.calls == 1 and _first_x(saver.path) == 1.0
    assert saver.dirty  # autosaved, but still not in the user's file
    for _ in range(5):
        saver.edited()
    assert labels.calls == 2 and _first_x(saver.path) == 2.0
    assert not (tmp_path / "clip.slp").exists()  # the user's file is never touched


def test_autosaves_when_the_oldest_unsaved_edit_is_old_enough(tmp_path: Path) -> None:
    clock, labels = FakeClock(), CountingLabels()
    saver = Autosaver(tmp_path / "clip.slp", labels, every_edits=100, every_seconds=60, clock=clock)
    clock.now = 500.0  # idle time before the first edit does not count
    saver.edited()
    clock.now = 559.0
    saver.edited()
    assert labels.calls == 0
    clock.now = 560.0
    saver.edited()
    assert labels.calls == 1
    clock.now = 1_000.0  # the next edit starts a new period
    saver.edited()
    clock.now = 1_059.0
    saver.edited()
    assert labels.calls == 1
    clock.now = 1_060.0
    saver.edited()
    assert labels.calls == 2


def test_flush_saves_only_edits_not_yet_autosaved(tmp_path: Path) -> None:
    labels = CountingLabels()
    saver = Autosaver(tmp_path / "clip.slp", labels, every_edits=2, clock=FakeClock())
    assert saver.flush() is None and labels.calls == 0  # nothing edited
    saver.edited()
    assert saver.flush() is None and labels.calls == 1 and saver.path.is_file()
    saver.flush()
    saver.edited()
    assert labels.calls == 1  # the flush restarted the edit count
    saver.edited()
    assert labels.calls == 2


def test_user_save_resets_and_deletes_the_sidecar(tmp_path: Path) -> None:
    labels = CountingLabels()
    saver = Autosaver(tmp_path / "clip.slp", labels, every_edits=2, clock=FakeClock())
    saver.edited()
    saver.edited()
    assert saver.path.is_file() and saver.dirty
    saver.saved()
    assert not saver.path.exists() and not saver.dirty and saver.flush() is None
    saver.edited()
    assert labels.calls == 1  # counting restarted at the save
    saver.saved()  # no sidecar to delete is fine
    assert saver.last_error is None


def test_first_save_of_an_unsaved_project_moves_the_autosave(tmp_path: Path, cache: Path) -> None:
    saver = Autosaver(None, CountingLabels(), every_edits=1, clock=FakeClock())
    saver.edited()
    untitled = cache / "untitled.autosave.slp"
    assert saver.path == untitled and untitled.is_file()
    assert recovery_for(None) == untitled

    saver.saved(tmp_path / "new.slp")
    assert not untitled.exists() and saver.labels_path == tmp_path / "new.slp"
    saver.edited()
    assert (tmp_path / "new.autosave.slp").is_file()


def test_failures_are_reported_not_raised(tmp_path: Path) -> None:
    broken = True

    def get_labels() -> sio.Labels:
        if broken:
            raise RuntimeError("layers are mid-update")
        return _tiny_labels()

    saver = Autosaver(tmp_path / "clip.slp", get_labels, every_edits=2, clock=FakeClock())
    saver.edited()
    error = saver.edited()
    assert error is not None and "RuntimeError: layers are mid-update" in error
    assert str(saver.path) in error and saver.last_error == error
    assert saver.edited() is None  # retried at the next threshold, not on every edit
    assert saver.last_error == error

    broken = False
    assert saver.flush() is None  # a failed autosave leaves its edits for flush
    assert saver.last_error is None and saver.path.is_file()


def test_write_failures_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A folder where the sidecar should be makes the real save fail, even for root.
    labels_path = tmp_path / "clip.slp"
    autosave_path(labels_path).mkdir()
    saver = Autosaver(labels_path, _tiny_labels, every_edits=1)
    error = saver.edited()
    assert error is not None and error.startswith("Autosave failed:")
    assert "clip.autosave.slp" in error and saver.last_error == error
    assert list(tmp_path.iterdir()) == [autosave_path(labels_path)]  # no temp file left

    # The cache folder cannot be created under a file.
    (tmp_path / "not_a_folder").write_text("")
    monkeypatch.setenv(autosave.CACHE_ENV, str(tmp_path / "not_a_folder"))
    saver = Autosaver(None, _tiny_labels, every_edits=1)
    error = saver.edited()
    assert error is not None and "untitled.autosave.slp failed" in error


def test_autosave_of_a_real_project_restores_every_label(data_dir: Path, tmp_path: Path) -> None:
    labels_path = tmp_path / "clip.slp"
    labels_path.write_bytes((data_dir / "sleap" / "tracks" / "clip.slp").read_bytes())
    _set_mtime(labels_path, 1_000)
    labels = load_labels(labels_path, lazy=False)
    labels.labeled_frames[7].instances[1].points["xy"][2] = (12.5, 34.5)  # the user's edit
    saver = Autosaver(labels_path, lambda: labels, every_edits=1)
    assert saver.edited() is None

    sidecar = recovery_for(labels_path)
    assert sidecar == tmp_path / "clip.autosave.slp"
    restored = load_labels(sidecar, lazy=False)
    np.testing.assert_array_equal(_points(restored), _points(labels))
    assert _frame_layout(restored) == _frame_layout(labels)


# --------------------------------------------------------------------------------------------
# Killing a process in the middle of saving
# --------------------------------------------------------------------------------------------


def _points(labels: sio.Labels) -> np.ndarray:
    """Every instance's coordinates, (instances, nodes, 2), in file order."""
    return np.stack([inst.numpy() for lf in labels.labeled_frames for inst in lf.instances])


def _frame_layout(labels: sio.Labels) -> list[tuple[int, int]]:
    return [(lf.frame_idx, len(lf.instances)) for lf in labels.labeled_frames]


def _start_saving(source: Path, target: Path, stderr: Path) -> subprocess.Popen[str]:
    with open(stderr, "w") as err:
        return subprocess.Popen(
            [sys.executable, str(HELPER), str(source), str(target)],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )


def _kill_after(proc: subprocess.Popen[str], delay: float, stderr: Path) -> int:
    """Wait for the first completed save, SIGKILL ``delay`` s later; the last save reported."""
    first = proc.stdout.readline()
    if not first:
        proc.wait()
        pytest.fail(f"save loop died before its first save:\n{stderr.read_text()}")
    time.sleep(delay)
    proc.kill()  # SIGKILL: no handler, no cleanup, like a crash or a power cut
    printed = [first, *proc.stdout.read().split()]
    proc.wait()
    proc.stdout.close()
    return int(printed[-1])


def test_killed_saves_always_leave_a_complete_file(data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL a process that saves the real project in a loop, 10 times, at random moments.

    After every kill the target must open with all 1500 frames and 3000 instances, equal to the
    source except the point the process moves by +1 per completed save. A kill during a save
    may leave at most two new stray temporary files (sleap-io's file and its copy with
    checksums); strays must not disturb loading. The next
    process starts while the last one's file is checked (on a copy), to keep the test short.
    """
    source = data_dir / "sleap" / "tracks" / "clip.slp"
    original = sio.load_slp(source.as_posix(), open_videos=False)
    expected, layout = _points(original), _frame_layout(original)
    assert np.isfinite(expected[0, 0, 0])  # the moved point must show its moves
    project = tmp_path / "project"
    project.mkdir()
    target, snapshot, stderr = project / "clip.slp", tmp_path / "left.slp", tmp_path / "err.txt"
    rng = random.Random(20240611)
    strays: set[str] = set()
    kills = 10

    proc = _start_saving(source, target, stderr)
    try:
        for kill in range(kills):
            completed = _kill_after(proc, rng.uniform(0.0, 0.6), stderr)
            new = {p.name for p in project.iterdir()} - {target.name} - strays
            shutil.copyfile(target, snapshot)
            if kill < kills - 1:
                proc = _start_saving(source, target, stderr)

            assert len(new) <= 2, f"more than two temporary files left by one killed save: {new}"
            strays |= new
            saved = sio.load_slp(snapshot.as_posix(), open_videos=False)
            assert len(saved.labeled_frames) == 1500 and _frame_layout(saved) == layout
            points = _points(saved)
            assert points.shape == (3000, *expected.shape[1:])
            moved = points[0, 0, 0] - expected[0, 0, 0]
            # The kill may fall after the file was replaced but before the number was printed.
            assert moved in (completed, completed + 1)
            points[0, 0, 0] = expected[0, 0, 0]
            np.testing.assert_array_equal(points, expected)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    # With a save taking most of each loop, some kill must have hit one mid-write; otherwise
    # this test proved nothing about interrupted saves.
    assert strays, "no kill interrupted a save"
    # Strays are hidden temporaries with random names: the labels file and its loader ignore
    # them, and the next save neither trips over them nor adds one; it deletes those older than
    # a minute (a save still running elsewhere would be younger).
    save_labels(original, target)
    assert {p.name for p in project.iterdir()} - {target.name} <= strays
    for name in strays:
        os.utime(project / name, (time.time() - 120,) * 2)
    save_labels(original, target)
    assert {p.name for p in project.iterdir()} == {target.name}
    assert all(name.startswith(".") for name in strays)
    np.testing.assert_array_equal(_points(load_labels(target, lazy=False)), expected)
