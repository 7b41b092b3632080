"""Prediction benchmark: decode, model and end-to-end throughput on clip.mp4 frames 0-499.

    .venv/bin/python benchmarks/bench_predict.py [--data ../shared/data]
        [--model /tmp/bench_train_model] [--frames 0-499] [--batch-size 4] [--device auto]

The model is the package ``bench_train.py`` writes (top-down trained on clip.slp). Figures:

* plain decode: PyAV decoding clip.mp4 to gray arrays, nothing else (the I/O limit);
* model only: ``Predictor.predict`` on frames decoded beforehand (the compute limit), with its
  default of one single-threaded worker per core, and as one pass per batch over all threads
  (``workers=1``, the baseline);
* end to end: ``predict_video`` (decoder thread + inference + peak finding) into ``PoseArrays``
  and a saved ``.slp``, the way ``napari-pose predict`` runs;
* one frame: the latency of predicting the single frame on screen (the Predict dock's
  "current frame"; the frame is already decoded for display), median and worst of 20.

Targets (issue 5): end to end at least 60% of the slower of decode and model only, and at least
twice sleap-nn 0.3.5 on the same 2 cores (11.4 frames/s end to end, 18.9 in its loop); one
frame under 0.5 s.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
SLEAP_NN_END_TO_END = 11.4


def main() -> None:
    from napari_pose.runtime import preload_tcmalloc

    preload_tcmalloc()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--model", type=Path, default=Path("/tmp/bench_train_model"))
    parser.add_argument("--frames", default="0-499")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    import av
    import numpy as np

    from napari_pose.core.io import save_labels
    from napari_pose.core.video import open_video
    from napari_pose.nn.inference import (
        PredictConfig,
        Predictor,
        predict_video,
        predictions_to_arrays,
        to_labels,
    )
    from napari_pose.nn.train import parse_frames

    video = args.data / "sleap" / "tracks" / "clip.mp4"
    frames = parse_frames(args.frames)

    start = time.perf_counter()
    with av.open(str(video)) as container:
        decoded = []
        for frame in container.decode(video=0):
            decoded.append(frame.to_ndarray(format="gray"))
            if len(decoded) == frames.stop:
                break
    decode_fps = len(decoded) / (time.perf_counter() - start)
    images = np.stack(decoded[frames.start : frames.stop : frames.step])

    def model_only(workers: int | None) -> tuple[Predictor, float]:
        config = PredictConfig(batch_size=args.batch_size, device=args.device, workers=workers)
        predictor = Predictor.load(args.model, config)
        predictor.predict(images[: 2 * args.batch_size])  # warm-up (allocator, kernels)
        start = time.perf_counter()
        predictor.predict(images)
        return predictor, len(images) / (time.perf_counter() - start)

    _, one_pass_fps = model_only(workers=1)  # the baseline: each batch split over all threads
    predictor, model_fps = model_only(workers=None)

    latencies = []
    for image in images[:: max(1, len(images) // 20)][:20]:
        start = time.perf_counter()
        predictor.predict(image[None])
        latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    results = []
    with open_video(video, grayscale=True) as reader:
        for indices, predictions in predict_video(predictor, reader, frames):
            results += [(0, int(i), p) for i, p in zip(indices, predictions, strict=True)]
    arrays = predictions_to_arrays(predictor.skeleton, [], results)
    import sleap_io as sio

    arrays.videos.append(sio.Video(filename=str(video)))
    with tempfile.TemporaryDirectory() as tmp:
        save_labels(to_labels(arrays), Path(tmp) / "predictions.slp")
    end_to_end_fps = len(frames) / (time.perf_counter() - start)

    limit = min(decode_fps, model_fps)
    result = {
        "device": str(predictor.device),
        "batch_size": args.batch_size,
        "frames": len(frames),
        "decode_fps": round(decode_fps, 1),
        "model_only_fps": round(model_fps, 1),
        "workers": predictor.workers,
        "model_only_one_pass_fps": round(one_pass_fps, 1),
        "workers_vs_one_pass": round(model_fps / one_pass_fps, 2),
        "end_to_end_fps": round(end_to_end_fps, 1),
        "end_to_end_vs_limit": round(end_to_end_fps / limit, 2),
        "end_to_end_vs_sleap_nn": round(end_to_end_fps / SLEAP_NN_END_TO_END, 2),
        "one_frame_latency_ms": {
            "median": round(1000 * float(np.median(latencies))),
            "max": round(1000 * max(latencies)),
        },
        "instances": len(arrays),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
