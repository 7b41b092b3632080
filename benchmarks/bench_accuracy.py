"""Accuracy benchmark (issue 12): train and score a recipe on three splits, in one run.

    .venv/bin/python benchmarks/bench_accuracy.py [--data ../shared/data] [--minutes 15]
        [--epochs N] [--splits a,b,c] [--recipes baseline,flip-tta,...] [--out DIR]
        [--json results.json] [--reuse]

Splits (labels never seen in training are scored):
  a  clip.slp, every 10th frame of 0-1199 -> frames 1300-1499 (tune on this one and c)
  b  clip.slp, every 10th frame of 300-1499 -> frames 0-199 (the check: never tune on it)
  c  DeepLabCut openfield mouse (human labels, 4 nodes): a seeded 80/20 split of its frames

Each split is trained with napari-pose's defaults (what ``napari-pose train`` does with no
options) for ``--minutes`` of wall time, then its test frames are predicted the way
``napari-pose predict --tracker`` does (decoding, model, tracking with as many tracks as
labelled animals; timed end to end) and scored against the human labels: OKS mAP and mAR
(SLEAP's definitions), median/p90/p95 error, the fraction of labelled points under 2.8 px,
animals found of those labelled, identity switches (tracked splits), training wall time and
prediction frames/s. Frames predicted empty count as misses.

``--recipes`` adds the rows of issue 12's ablation next to ``baseline`` (today's defaults),
trained and scored in the same run, so that every figure has its baseline measured beside it;
recipes that change only prediction share their baseline's model (``Recipe``). Run it
on a quiet machine: training is time-limited, so a busy CPU trains less.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"

#: Distance under which a point counts as right in SLEAP's accuracy figures (2.8 px).
CLOSE_PX = 2.8


@attrs.frozen
class Split:
    """Which labelled frames train and which are scored, in one labels file."""

    name: str
    labels: str  # path under the data folder
    describe: str
    pick: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # frame keys -> (train, test)


def _ranges(train: range, test: range) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    def pick(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.isin(frames, np.asarray(train)), np.isin(frames, np.asarray(test))

    return pick


def _seeded_80_20(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.random.default_rng(20261207).permutation(np.unique(frames))
    test = np.isin(frames, order[: round(0.2 * len(order))])
    return ~test, test


SPLITS = {
    "a": Split("a", "sleap/tracks/clip.slp", "clip 0-1199:10 -> 1300-1499",
               _ranges(range(0, 1200, 10), range(1300, 1500))),
    "b": Split("b", "sleap/tracks/clip.slp", "clip 300-1499:10 -> 0-199",
               _ranges(range(300, 1500, 10), range(0, 200))),
    "c": Split("c", "deeplabcut/openfield/config.yaml", "openfield 80/20 (seeded)",
               _seeded_80_20),
}  # fmt: skip


@attrs.frozen
class Recipe:
    """One row of the ablation: what changes from the defaults, in training and in prediction.

    Recipes whose training changes are equal share one trained model (``training_key``): the
    prediction-side levers (test-time augmentation, refinement along tracks) are scored on the
    very model their baseline uses, so their rows differ by the lever alone.
    """

    name: str
    train: dict[str, Any] = attrs.field(factory=dict)  # TrainConfig fields
    pose_stage: dict[str, Any] = attrs.field(factory=dict)  # fields of the pose model's stage
    model: dict[str, Any] = attrs.field(factory=dict)  # ModelConfig fields of that stage
    backbone: dict[str, Any] = attrs.field(factory=dict)  # UNetConfig fields of that stage
    augment: dict[str, Any] = attrs.field(factory=dict)  # AugmentConfig fields of that stage
    predict: dict[str, Any] = attrs.field(factory=dict)  # PredictConfig fields
    refine: bool = False  # refine poses along tracks (nn.refine) after tracking

    @property
    def training_key(self) -> str:
        parts = [f"{k}={v}" for group in (self.train, self.pose_stage, self.model, self.backbone,
                                      self.augment)
                 for k, v in sorted(group.items())]  # fmt: skip
        return "-".join(parts).replace("/", "_") or "defaults"


#: The recipes ``--recipes`` can name; ``baseline`` is always run first.
RECIPES = {recipe.name: recipe for recipe in (
    Recipe("baseline"),
    Recipe("flip-tta", predict={"flip_tta": True}),
    Recipe("refine", refine=True),
    Recipe("threshold-0.2", predict={"peak_threshold": 0.2}),  # the default before issue 12
    Recipe("no-flips", augment={"flip": False}),
    Recipe("encounter", augment={"encounter": 0.5}),
    Recipe("pseudo", train={"pseudo_labels": 0.3}),
    Recipe("medium", train={"preset": "medium"}),
    Recipe("lite0", model={"encoder": "efficientnet_lite0"}),
    Recipe("sigma-1.5", pose_stage={"sigma": 1.5}),
    Recipe("sigma-3.5", pose_stage={"sigma": 3.5}),
    Recipe("stride-4", backbone={"output_stride": 4}),
    Recipe("stride-4-sigma-3.5", pose_stage={"sigma": 3.5}, backbone={"output_stride": 4}),
    Recipe("bottomup", train={"pipeline": "bottomup"}),
    Recipe("lite0-pseudo", train={"pseudo_labels": 0.3}, model={"encoder": "efficientnet_lite0"}),
    Recipe("hard-keypoints", pose_stage={"hard_keypoints": 2.0}),
    Recipe("towards-neighbour", augment={"towards_neighbour": 0.3}),
    Recipe("rotation-tta", predict={"rotation_tta": 15.0}),
    Recipe("centroid-time-0.15", train={"centroid_time": 0.15}),  # a time budget only
)}  # fmt: skip


def _stages(labels, recipe: Recipe, config):
    """The default stages of ``labels`` with ``recipe``'s pose-stage changes (``None``: the
    defaults untouched, chosen inside ``train`` as users get them)."""
    if not (recipe.pose_stage or recipe.model or recipe.backbone or recipe.augment):
        return None
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.pipelines import default_pipeline, default_stages

    data = load_frames(labels)
    pipeline = config.pipeline or default_pipeline(data)
    stages = default_stages(data, pipeline, config.preset)
    pose = "centered_instance" if pipeline == "topdown" else next(iter(stages))
    stage = stages[pose]
    stages[pose] = attrs.evolve(stage, **recipe.pose_stage,
                                model=attrs.evolve(stage.model, **recipe.model, backbone=attrs.evolve(
                                    stage.model.backbone, **recipe.backbone)),
                                augment=attrs.evolve(stage.augment, **recipe.augment))  # fmt: skip
    return stages


def train_recipe(labels, recipe: Recipe, minutes: float, epochs: int | None, out: Path,
                 reuse: bool) -> tuple[float, str]:  # fmt: skip
    """Train ``recipe``'s model into ``out`` (or reuse a complete one there) for ``minutes``,
    or for ``epochs`` per stage when given (a budget that a busy machine does not shrink);
    returns the training minutes and the validation summary."""
    from napari_pose.nn import package
    from napari_pose.nn.train import TrainConfig, summarise, train

    if reuse and (out / "metrics.json").exists() and package.read_config(out)["complete"]:
        recorded = package.read_config(out)["training"]
        metrics = json.loads((out / "metrics.json").read_text())
        return float(recorded["elapsed_s"]) / 60, summarise(metrics)
    budget = {"time_limit": minutes} if epochs is None else {"time_limit": None, "epochs": epochs}
    config = TrainConfig(device="cpu", **budget, **recipe.train)
    stages = _stages(labels, recipe, config)
    start = time.monotonic()
    final: dict[str, Any] = {}
    for progress in train(labels, out, config, stages=stages):
        if progress.stage == "done" and progress.validation is not None:
            final = progress.validation
    return (time.monotonic() - start) / 60, summarise(final) if final else "no validation"


def run_split(split: Split, data: Path, minutes: float, epochs: int | None, out: Path,
              recipes: list[Recipe], reuse: bool) -> list[dict[str, Any]]:  # fmt: skip
    """Train each distinct training of ``recipes`` on the split's training frames and score
    every recipe on its test frames."""
    import sleap_io as sio

    from napari_pose.core.io import load_labels
    from napari_pose.core.pose_arrays import labels_to_arrays
    from napari_pose.nn.inference import PredictConfig
    from napari_pose.nn.metrics import compare
    from napari_pose.nn.scaleout import predict_one
    from napari_pose.nn.tracking import TrackerConfig, track

    labels = load_labels(data / split.labels, lazy=False)
    if len(labels.videos) != 1:
        raise SystemExit(f"{split.labels}: the benchmark expects one video")
    video = labels.videos[0]
    frames = np.array([lf.frame_idx for lf in labels.labeled_frames])
    in_train, in_test = split.pick(frames)
    train_labels = sio.Labels(
        labeled_frames=[lf for lf, keep in zip(labels.labeled_frames, in_train) if keep],
        videos=labels.videos, skeletons=labels.skeletons, tracks=labels.tracks,
    )  # fmt: skip
    truth = labels_to_arrays(labels)
    truth = truth.select(~truth.predicted & np.isin(truth.frame, frames[in_test]))
    test_frames = sorted(set(truth.frame.tolist()))
    n_animals = int(np.bincount(truth.frame).max())
    tracked = truth.track.max(initial=-1) >= 0

    trained: dict[str, tuple[Path, float, str]] = {}
    results = []
    for recipe in recipes:
        key = recipe.training_key
        if key not in trained:
            model = out / f"{split.name}-{key}"
            budget = f"{minutes} min" if epochs is None else f"{epochs} epochs a stage"
            print(f"  training {key} ({budget})", flush=True)
            trained[key] = (model, *train_recipe(train_labels, recipe, minutes, epochs, model,
                                                 reuse))  # fmt: skip
        model, train_minutes, validation = trained[key]
        start = time.monotonic()
        config = PredictConfig(device="cpu", **recipe.predict)
        predicted = predict_one(video, model, config, frames=test_frames)
        predicted = attrs.evolve(predicted, videos=[video])
        if tracked:
            predicted = track(predicted, TrackerConfig(max_tracks=n_animals))
        if recipe.refine:
            from napari_pose.nn.refine import refine_tracks

            predicted = refine_tracks(predicted)
        predict_s = time.monotonic() - start
        metrics, _ = compare(truth, predicted, predicted_frames_only=False)
        results.append({
            "recipe": recipe.name,
            "split": split.name,
            "describe": split.describe,
            "train_frames": int(in_train.sum()),
            "test_frames": len(test_frames),
            "oks_map": metrics["oks_map"],
            "oks_mar": metrics["oks_mar"],
            "dist_median_px": metrics["dist_median_px"],
            "dist_p90_px": metrics["dist_p90_px"],
            "dist_p95_px": metrics["dist_p95_px"],
            "under_2.8px": metrics[f"pck_{CLOSE_PX}px"],
            "animals_found": metrics["n_matched"],
            "animals_expected": metrics["n_gt"],
            "id_switches": metrics.get("id_switches") if tracked else None,
            "train_minutes": train_minutes,
            "predict_frames_s": len(test_frames) / predict_s,
            "validation": validation,
        })  # fmt: skip
        print(json.dumps(results[-1], default=float), flush=True)
    return results


def _row(result: dict[str, Any]) -> str:
    switches = "-" if result["id_switches"] is None else str(result["id_switches"])
    return (
        f"| {result['split']} {result['describe']} | {result['recipe']} "
        f"| {result['oks_map']:.3f} | {result['oks_mar']:.3f} | {result['dist_median_px']:.2f} "
        f"| {result['dist_p90_px']:.1f} | {result['dist_p95_px']:.1f} "
        f"| {100 * result['under_2.8px']:.0f}% "
        f"| {result['animals_found']}/{result['animals_expected']} | {switches} "
        f"| {result['train_minutes']:.1f} | {result['predict_frames_s']:.1f} |"
    )


def main() -> None:
    from napari_pose.runtime import preload_tcmalloc

    preload_tcmalloc()  # re-executes this script with the faster allocator when available
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--epochs", type=int, help="train this many epochs a stage instead of "
                        "--minutes: comparable figures while other work shares the cores")  # fmt: skip
    parser.add_argument("--splits", default="a,b,c", help="comma-separated, of a, b, c")
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_accuracy"))
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    parser.add_argument(
        "--recipes",
        default="baseline",
        help=f"comma-separated, of {', '.join(RECIPES)} (baseline always runs)",
    )
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="score complete models already in --out instead of training them",
    )
    args = parser.parse_args()
    names = ["baseline", *(n.strip() for n in args.recipes.split(",") if n.strip() != "baseline")]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        parser.error(f"unknown recipes {unknown}; choose from {sorted(RECIPES)}")
    recipes = [RECIPES[n] for n in names]
    timed_only = [r.name for r in recipes if "centroid_time" in r.train]
    if args.epochs is not None and timed_only:
        parser.error(f"{timed_only} split a time budget: run them with --minutes, not --epochs")

    from napari_pose.nn.metrics import json_ready

    results = []
    for name in args.splits.split(","):
        split = SPLITS[name.strip()]
        print(f"split {split.name} ({split.describe}): {', '.join(names)}", flush=True)
        results += run_split(split, args.data, args.minutes, args.epochs, args.out, recipes,
                             args.reuse)  # fmt: skip
        if args.json is not None:  # after each split: a long run keeps what it measured
            args.json.write_text(json.dumps(json_ready(results), indent=1))
    print(
        "\n| split | recipe | OKS mAP | mAR | median px | p90 px | p95 px | < 2.8 px "
        "| animals found | ID switches | train min | predict frames/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for result in results:
        print(_row(result))


if __name__ == "__main__":
    main()
