"""The package as napari and pip see it: manifest, contributions, wheel, import layering."""

from __future__ import annotations

import ast
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


#: Modules whose loaders rebuild objects from a file's bytes, running any code the bytes ask for.
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve",
                    "marshal"}  # fmt: skip
#: Calls that do the same (yaml's non-safe loaders, pandas' pickle reader), by dotted name.
UNSAFE_CALLS = {"yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.unsafe_load_all",
                "yaml.full_load", "yaml.full_load_all", "pd.read_pickle", "pandas.read_pickle"}  # fmt: skip
UNSAFE_YAML_LOADERS = {"Loader", "UnsafeLoader", "FullLoader", "CLoader", "CUnsafeLoader",
                       "CFullLoader"}  # fmt: skip


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def unsafe_loads(source: str) -> list[str]:
    """Every place in ``source`` that could load code from data: pickling modules imported,
    ``torch.load`` without ``weights_only=True``, ``np.load(allow_pickle=True)``, yaml's
    non-safe loaders, ``read_pickle``, and pandas' HDF5 readers (PyTables unpickles) in a
    function that has not called ``refuse_pickles`` before them."""
    tree = ast.parse(source)
    found = []
    checked: set[ast.Call] = set()  # HDF5 reads after a refuse_pickles call in their function
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            calls = [n for n in ast.walk(function) if isinstance(n, ast.Call)]
            guards = [c.lineno for c in calls if _dotted(c.func).endswith("refuse_pickles")]
            checked.update(c for c in calls if any(line < c.lineno for line in guards))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [
                node.module or ""]  # fmt: skip
            found += [f"line {node.lineno}: imports {m}" for m in modules
                      if m.split(".")[0] in PICKLING_MODULES]  # fmt: skip
        elif isinstance(node, ast.Attribute) and _dotted(node) in {
            f"yaml.{name}" for name in UNSAFE_YAML_LOADERS
        }:
            found.append(f"line {node.lineno}: {_dotted(node)}")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            last = name.rsplit(".", 1)[-1]
            options = {k.arg: k.value for k in node.keywords}
            weights_only = options.get("weights_only")
            allow_pickle = options.get("allow_pickle")
            if (
                name in UNSAFE_CALLS
                or last == "read_pickle"
                or (name == "torch.load" and not (isinstance(weights_only, ast.Constant)
                                                  and weights_only.value is True))
                or (name in ("np.load", "numpy.load") and not (
                    allow_pickle is None or isinstance(allow_pickle, ast.Constant)
                    and allow_pickle.value is False))
                or (last in ("HDFStore", "read_hdf") and node not in checked)
            ):  # fmt: skip
                found.append(f"line {node.lineno}: {name}(...)")
    return found


def test_the_checker_finds_every_unsafe_loader():
    unsafe = (
        "import pickle\nfrom dill import loads\nimport yaml, torch, numpy as np, pandas as pd\n"
        "def f(p):\n"
        "    torch.load(p)\n    torch.load(p, weights_only=False)\n"
        "    np.load(p, allow_pickle=True)\n    yaml.load(p, Loader=yaml.Loader)\n"
        "    yaml.unsafe_load(p)\n    pd.read_pickle(p)\n    pd.read_hdf(p)\n"
        "    with pd.HDFStore(p) as store:\n        refuse_pickles(p)\n"
    )
    assert len(unsafe_loads(unsafe)) == 11
    safe = (
        "import pickletools, yaml, torch, numpy as np, pandas as pd\n"
        "def f(p):\n"
        "    torch.load(p, weights_only=True)\n    np.load(p)\n    yaml.safe_load(p)\n"
        "    refuse_pickles(p)\n    with pd.HDFStore(p) as store:\n        store.select('k')\n"
    )
    assert unsafe_loads(safe) == []


def test_no_code_loads_code_from_data():
    """Data files (labels, tables, configs, weights) must never run code when read."""
    found = {
        str(path.relative_to(REPO)): problems
        for path in sorted((REPO / "src").rglob("*.py"))
        if (problems := unsafe_loads(path.read_text(encoding="utf-8")))
    }
    assert found == {}
