"""The package as napari and pip see it: manifest, contributions, wheel, import layering."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from npe2 import PluginManager
from npe2.manifest.utils import import_python_name

REPO = Path(__file__).resolve().parents[1]


def test_npe2_validate_passes():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-pose"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in result.stdout


def test_napari_discovers_every_contribution():
    pm = PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("napari-pose")
    contributions = manifest.contributions
    assert {r.command for r in contributions.readers} == {
        "napari-pose.read_labels",
        "napari-pose.read_video",
        "napari-pose.read_folder",
    }
    assert {w.command for w in contributions.writers} == {
        "napari-pose.write_slp",
        "napari-pose.write_dlc",
        "napari-pose.write_analysis",
    }
    assert {s.key for s in contributions.sample_data} == {"synthetic_video", "synthetic_project"}
    assert [w.display_name for w in contributions.widgets] == [
        "Pose project",
        "Label poses",
        "Skeleton",
        "Train model",
        "Predict",
        "Proofread",
    ]
    # Every command resolves to a real Python object.
    for command in contributions.commands:
        assert import_python_name(command.python_name) is not None, command.id
    # Readers are picked by extension and content.
    readers = lambda path: {r.command for r in pm.iter_compatible_readers([str(path)])}  # noqa: E731
    assert "napari-pose.read_labels" in readers("x.slp")
    assert "napari-pose.read_video" in readers("x.mp4")


def test_wheel_contains_the_manifest(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(REPO)],
        check=True,
    )  # fmt: skip
    wheel = next(tmp_path.glob("napari_pose-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_pose/napari.yaml" in names
        manifest = zf.read("napari_pose/napari.yaml").decode()
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert manifest == (REPO / "napari.yaml").read_text()
    assert "napari-pose = napari_pose:napari.yaml" in entry_points


@pytest.mark.parametrize("module", ["napari_pose.core", "napari_pose.nn"])
def test_core_and_nn_never_import_qt_or_napari(module):
    package = REPO / "src" / Path(*module.split("."))
    submodules = [f"{module}.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__"]
    code = (
        "import importlib, sys\n"
        f"for name in {[module, *submodules]!r}: importlib.import_module(name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'magicgui', 'vispy'))\n"
        "print(','.join(bad))\n"
    )
    if module == "napari_pose.core":  # core stays free of torch too
        code += "print('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0] == "", f"{module} imports {lines[0]}"
    if module == "napari_pose.core":
        assert lines[1] == "False", "core imports torch"
