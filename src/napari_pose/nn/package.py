"""The model package: one folder that holds everything needed to use or resume a trained model.

```
MODEL_DIR/
  config.yaml          pipeline, stages (model + input configs), training settings, status
  skeleton.json        SLEAP skeleton JSON (node order of the model's outputs)
  <stage>.pt           best weights of each stage (a plain state dict)
  <stage>.ckpt.pt      last epoch's weights + optimizer state, for --resume
  training_log.csv     one row per stage and epoch
  metrics.json         validation metrics of the whole pipeline on held-out frames
```

A two-stage top-down model is one folder with both stages. Weights are loaded with
``torch.load(weights_only=True)``: a model file can hold tensors and plain containers only,
never code, so opening a model downloaded from someone else cannot run anything. Every file is
written atomically, so an interrupted run leaves the previous good version in place.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import attrs
import sleap_io as sio
import torch
import yaml

from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import atomic_write
from napari_pose.core.skeleton import load_skeleton, save_skeleton
from napari_pose.nn.models import PoseModel, build_model, fuse_batchnorm
from napari_pose.nn.pipelines import PIPELINES, StageConfig

#: Version of the folder layout, bumped when a reader of an older one would misread it.
PACKAGE_FORMAT = 1
CONFIG_FILE = "config.yaml"
SKELETON_FILE = "skeleton.json"
LOG_FILE = "training_log.csv"
METRICS_FILE = "metrics.json"


def weights_path(folder: Path, stage: str) -> Path:
    """Best weights of ``stage``."""
    return folder / f"{stage}.pt"


def checkpoint_path(folder: Path, stage: str) -> Path:
    """Resumable state of ``stage`` after its last finished epoch."""
    return folder / f"{stage}.ckpt.pt"


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_torch(obj: Any, path: Path) -> None:
    """``torch.save`` atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_torch(path: Path, device: torch.device | str = "cpu") -> Any:
    """``torch.load`` of tensors and plain containers only (``weights_only=True``)."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise PoseFileError(path, "model file not found") from None
    except Exception as error:  # unpickling refused, truncated file, not a torch file
        raise PoseFileError(path, f"not a loadable weights file ({error})") from error


def write_config(folder: Path, config: dict[str, Any]) -> None:
    """Write ``config.yaml`` (atomically)."""
    _write_text(folder / CONFIG_FILE, yaml.safe_dump(config, sort_keys=False))


def write_skeleton(folder: Path, skeleton: sio.Skeleton) -> None:
    save_skeleton(skeleton, folder / SKELETON_FILE)


def write_log(folder: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``training_log.csv`` with ``rows`` (small: one row per epoch)."""
    out = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    _write_text(folder / LOG_FILE, out.getvalue())


def read_log(folder: Path) -> list[dict[str, str]]:
    """Rows of ``training_log.csv`` (empty when there is none yet)."""
    path = folder / LOG_FILE
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def write_metrics(folder: Path, metrics: dict[str, Any]) -> None:
    _write_text(folder / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=True))


def read_config(folder: str | Path) -> dict[str, Any]:
    """The package's ``config.yaml``, checked to be one of ours."""
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise PoseFileError(path, "no model config here; is this a napari-pose model folder?")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise PoseFileError(path, f"invalid YAML ({error})") from error
    if not isinstance(config, dict) or config.get("format") != PACKAGE_FORMAT:
        raise PoseFileError(path, f"not a napari-pose model config (format {PACKAGE_FORMAT})")
    if config.get("pipeline") not in PIPELINES:
        raise PoseFileError(path, f"unknown pipeline {config.get('pipeline')!r}")
    return config


@attrs.define(eq=False)
class ModelPackage:
    """A loaded model folder, ready to predict.

    Attributes:
        folder: Where it was loaded from.
        pipeline: ``single_instance``, ``topdown`` or ``bottomup``.
        stages: Stage configs by stage kind, in pipeline order.
        models: Models in eval mode on ``device``, by stage kind.
        skeleton: Node order of the outputs.
        max_instances: Most animals per frame seen in training (the predictor's default cap).
        config: The whole ``config.yaml``.
    """

    folder: Path
    pipeline: str
    stages: dict[str, StageConfig]
    models: dict[str, PoseModel]
    skeleton: sio.Skeleton
    max_instances: int
    config: dict[str, Any]


def load_package(folder: str | Path, device: torch.device | str = "cpu") -> ModelPackage:
    """Load a model folder written by training.

    Raises ``PoseFileError`` (naming the file) when the folder, its config, skeleton or a
    stage's weights are missing or unreadable, or when weights do not fit the config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise PoseFileError(folder, "model folder not found")
    config = read_config(folder)
    skeleton = load_skeleton(folder / SKELETON_FILE)
    stages, models = {}, {}
    for kind in PIPELINES[config["pipeline"]]:
        stage = StageConfig.from_dict(config["stages"][kind])
        path = weights_path(folder, kind)
        model = build_model(stage.model, pretrained=False)  # its own weights follow
        try:
            model.load_state_dict(load_torch(path, device))
        except RuntimeError as error:  # shapes or names do not match the config
            raise PoseFileError(path, f"weights do not match {CONFIG_FILE} ({error})") from error
        stages[kind] = stage
        fused = fuse_batchnorm(model).to(device)
        # torch's stubs leave out ``Module.to``'s documented ``memory_format`` keyword.
        models[kind] = fused.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return ModelPackage(
        folder=folder,
        pipeline=config["pipeline"],
        stages=stages,
        models=models,
        skeleton=skeleton,
        max_instances=int(config.get("max_instances", 1)),
        config=config,
    )
