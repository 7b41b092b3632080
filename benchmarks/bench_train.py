"""Training benchmark: top-down on clip.slp for a fixed CPU budget, scored on unseen frames.

    .venv/bin/python benchmarks/bench_train.py [--data ../shared/data] [--minutes 15]
        [--out /tmp/bench_train_model] [--device auto]

Trains the default pipeline for clip.slp (top-down: centroid + centred instance, preset small)
on every 10th frame of 0-1199 (120 frames, 240 flies; 10% held out for validation) within
``--minutes`` of wall time, then predicts frames 1300-1499 (never seen) with the saved model
package and reports the pixel-error distribution, PCK and OKS mAP against clip.slp's labels,
plus training throughput (images/s per stage). Run it through the CLI's entry so the
tcmalloc preload applies (``napari-pose`` re-executes itself with it; this script does too).

Targets (issue 4): median error under 2 px and OKS mAP above 0.7 on frames 1300-1499.
Reference, sleap-nn 0.3.5 top-down trained the same way for 14.4 CPU minutes here: OKS mAP 0.114,
median 4.6 px, p90 121 px; 13.6 img/s (centroid), 19.5 crops/s (centred instance).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
SLEAP_NN = {"oks_map": 0.114, "dist_median_px": 4.6, "dist_p90_px": 121.0,
            "centroid_img_s": 13.6, "centered_instance_img_s": 19.5}  # fmt: skip


def main() -> None:
    from napari_pose.runtime import preload_tcmalloc

    preload_tcmalloc()  # re-executes this script with the faster allocator when available
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_train_model"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--preset", default="small")
    args = parser.parse_args()

    import torch

    from napari_pose.core.io import load_labels
    from napari_pose.nn.data import load_frames
    from napari_pose.nn.package import load_package
    from napari_pose.nn.train import TrainConfig, evaluate_package, summarise, train

    labels = load_labels(args.data / "sleap" / "tracks" / "clip.slp")
    config = TrainConfig(preset=args.preset, time_limit=args.minutes, device=args.device,
                         frames=range(0, 1200, 10))  # fmt: skip
    steps: dict[str, int] = {}
    stage_time: dict[str, float] = {}
    last = time.monotonic()
    for progress in train(labels, args.out, config):
        now = time.monotonic()
        if progress.loss is not None:
            steps[progress.stage] = steps.get(progress.stage, 0) + 1
            stage_time[progress.stage] = stage_time.get(progress.stage, 0.0) + now - last
        if progress.validation is not None and progress.stage not in ("done",):
            v = progress.validation
            print(f"{progress.elapsed / 60:5.1f} min  {progress.stage} epoch {progress.epoch}: "
                  f"val loss {v['val_loss']:.2e}, {summarise(v)}", flush=True)  # fmt: skip
        last = time.monotonic()
    throughput = {f"{k}_img_s": steps[k] * config.batch_size / stage_time[k] for k in steps}

    test = load_frames(labels, range(1300, 1500))
    model = load_package(args.out, config.device if config.device != "auto" else "cpu")
    start = time.monotonic()
    metrics = evaluate_package(model, test)
    predict_s = time.monotonic() - start
    result = {
        "device": str(torch.device(args.device) if args.device != "auto" else "auto"),
        "minutes": args.minutes,
        **{k: metrics[k] for k in ("oks_map", "oks_mar", "dist_median_px", "dist_p90_px",
                                    "dist_p95_px", "pck_2px", "pck_5px", "n_gt", "n_pred")},
        **throughput,
        "predict_frames_s": len(test) / predict_s,
    }  # fmt: skip
    print(json.dumps(result, indent=2))
    print("ratios vs sleap-nn 0.3.5 (same data, same CPU):")
    print(
        f"  OKS mAP      {result['oks_map']:.3f} vs {SLEAP_NN['oks_map']} "
        f"({result['oks_map'] / SLEAP_NN['oks_map']:.1f}x)"
    )
    print(f"  median error {result['dist_median_px']:.2f} px vs {SLEAP_NN['dist_median_px']} px")
    print(f"  p90 error    {result['dist_p90_px']:.2f} px vs {SLEAP_NN['dist_p90_px']} px")
    for stage in ("centroid", "centered_instance"):
        key = f"{stage}_img_s"
        if key in result:
            print(
                f"  {stage} {result[key]:.1f} img/s vs {SLEAP_NN[key]} "
                f"({result[key] / SLEAP_NN[key]:.2f}x)"
            )


if __name__ == "__main__":
    main()
