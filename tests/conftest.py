"""Shared fixtures: where the real public data lives, and small generated projects.

The real data (``../shared/data`` beside the repository, or ``$NAPARI_POSE_DATA``) is never
copied into the repository. Tests that need it skip when it is absent on a developer machine and
fail when it is absent under ``CI=true``, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _find_data_dir() -> Path | None:
    env = os.environ.get("NAPARI_POSE_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "sleap").is_dir():
            return candidate
    return None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The folder of real public pose data (see ``../shared/data/README.md``)."""
    found = _find_data_dir()
    if found is None:
        message = "real test data not found: set NAPARI_POSE_DATA or put it at ../shared/data"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(autouse=True)
def _shared_data_untouched():
    """Fail a test that leaves a file in the shared data: an edit of a project opened from
    there is autosaved beside it, and the next test to open it finds a 'recovered' copy
    (tests that edit must open a copy). Only where the data is, and only new files."""
    found = _find_data_dir()
    before = set(found.rglob("*")) if found is not None else set()
    yield
    if found is not None:
        added = sorted(str(path.relative_to(found)) for path in set(found.rglob("*")) - before)
        assert not added, f"the test left files in the shared data: {added}"


@pytest.fixture(scope="session")
def sleap_dir(data_dir: Path) -> Path:
    return data_dir / "sleap"


@pytest.fixture(scope="session")
def openfield(data_dir: Path) -> Path:
    """DeepLabCut's openfield example project (single animal, 116 labelled frames)."""
    return data_dir / "deeplabcut" / "openfield"


@pytest.fixture(autouse=True)
def _no_modal_dialogs(monkeypatch):
    """Dialogs would block a headless run: answer them the way a test expects by default."""
    try:
        from napari_pose.napari._qt import services
        from napari_pose.napari._qt import skeleton_widget as _skeleton_widget
    except ImportError:  # no Qt in this environment: nothing would show a dialog
        return
    monkeypatch.setattr(services, "ask_unsaved", lambda names: "discard")
    monkeypatch.setattr(services, "ask_save_path", lambda session: None)  # "cancel"
    monkeypatch.setattr(services, "confirm_replace", lambda path: False)
    monkeypatch.setattr(_skeleton_widget, "ask", lambda question: False)


@pytest.fixture(scope="session")
def _cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch, _cache_dir):
    """Autosaves and generated samples go to a temporary cache, never the user's: a test that
    edits a project (and whose autosave timer fires) must not leave files behind. One folder
    for the session, so samples are generated once. Tests that look at the cache set
    ``NAPARI_POSE_CACHE`` themselves."""
    monkeypatch.setenv("NAPARI_POSE_CACHE", str(_cache_dir))


@pytest.fixture
def sample_project(tmp_path, monkeypatch) -> Path:
    """The generated sample project (synthetic video, every frame labelled) in ``tmp_path``,
    with the cache (autosaves) beside it, where a test can look."""
    from napari_pose.core.synthetic import write_sample_project

    monkeypatch.setenv("NAPARI_POSE_CACHE", str(tmp_path / "cache"))
    return write_sample_project(tmp_path / "project")
