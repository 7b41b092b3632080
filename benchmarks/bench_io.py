"""I/O benchmark: opening a 100,000-frame predictions file, and random access into clip.mp4.

Run under a display or Xvfb (the layers go into a real napari viewer):

    xvfb-run -a .venv/bin/python benchmarks/bench_io.py [--data ../shared/data] [--frames 100000]

(a) Opening: a predictions file of ``--frames`` frames x 2 instances x 13 nodes (tiled from
    clip.slp, see ``big_file.py``) is opened into napari layers the way the reader does it
    (lazy load -> arrays -> layer data -> viewer), in a fresh process each, once with our frame
    window and once as a baseline with every point in one layer. Figures: wall time and the
    peak memory the process gained over an empty viewer. Targets: under 5 s and 2 GB.
(b) Video: sequential decode frames/s with plain PyAV (the limit), the same through our
    ``VideoReader``, and random-access latency (median, p95) of ``VideoReader`` on uncached
    random frames and on scrubbing (jumps of up to 10 frames). Target: random access within 3x
    of the sequential per-frame cost once indexed.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"


def _open_in_viewer(path: str, windowed: bool) -> dict:
    """Child process: open ``path`` into a viewer, report seconds and peak memory gained."""
    import napari

    from napari_pose.napari import convert
    from napari_pose.napari._reader import read_labels

    if not windowed:
        convert.WINDOW_THRESHOLD = 10**12
    viewer = napari.Viewer(show=False)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    for data, kwargs, kind in read_labels(path):
        getattr(viewer, f"add_{kind}")(data, **kwargs)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    points = sum(len(l.data) for l in viewer.layers if isinstance(l, napari.layers.Points))
    viewer.close()
    return {
        "seconds": seconds,
        "peak_gain_mb": (peak - baseline) / 1024,
        "points_in_layers": points,
    }


def bench_open(data: Path, n_frames: int) -> None:
    sys.path.insert(0, str(HERE))
    from big_file import tile_as_predictions

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "big.slp"
        (Path(tmp) / "clip.mp4").symlink_to(data / "sleap/tracks/clip.mp4")
        tile_as_predictions(data / "sleap/tracks/clip.slp", big, n_frames)
        print(f"(a) open {n_frames:,} frames x 2 instances x 13 nodes "
              f"({big.stat().st_size / 1e6:.0f} MB .slp) into napari layers")  # fmt: skip
        results = {}
        for windowed in (True, False):
            code = (f"import json, sys; sys.path.insert(0, {str(HERE)!r}); "
                    f"from bench_io import _open_in_viewer; "
                    f"print(json.dumps(_open_in_viewer({str(big)!r}, {windowed})))")  # fmt: skip
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if out.returncode != 0:
                print(out.stderr[-2000:])
                raise SystemExit(1)
            results[windowed] = json.loads(out.stdout.strip().splitlines()[-1])
        for windowed, label in ((True, "windowed (ours)"), (False, "all points (baseline)")):
            r = results[windowed]
            print(f"    {label:22s} {r['seconds']:6.2f} s  peak +{r['peak_gain_mb']:6.0f} MB  "
                  f"{r['points_in_layers']:>9,} points in layers")  # fmt: skip
        w, b = results[True], results[False]
        print(f"    ratio baseline/ours: time {b['seconds'] / w['seconds']:.1f}x, "
              f"memory {b['peak_gain_mb'] / max(w['peak_gain_mb'], 1):.1f}x; "
              f"target < 5 s and < 2048 MB: "
              f"{'met' if w['seconds'] < 5 and w['peak_gain_mb'] < 2048 else 'NOT met'}")  # fmt: skip


def bench_video(data: Path) -> None:
    import av

    from napari_pose.core.video import VideoReader

    path = data / "sleap/tracks/clip.mp4"
    n = 1500
    print(f"(b) {path.name}: 1024x1024 gray H.264, {n} frames, keyframe every 250")

    for convert in (False, True):
        start = time.perf_counter()
        with av.open(str(path)) as container:
            container.streams.video[0].thread_type = "AUTO"
            for frame in container.decode(video=0):
                if convert:
                    frame.to_ndarray(format="gray")
        fps = n / (time.perf_counter() - start)
        label = "+ to_ndarray(gray)" if convert else "decode only      "
        print(f"    plain PyAV sequential {label} {fps:7.1f} frames/s")
    plain = fps

    with VideoReader(path, prefetch=0) as reader:
        start = time.perf_counter()
        for i in range(n):
            reader[i]
        ours = n / (time.perf_counter() - start)
    print(
        f"    VideoReader sequential (arrays)      {ours:7.1f} frames/s  ({ours / plain:.2f}x plain)"
    )

    per_frame_ms = 1000 / plain
    rng = np.random.default_rng(0)
    cases = (
        ("random frames (no cache)", rng.integers(0, n, 200), {"prefetch": 0, "cache_frames": 1}),
        ("scrubbing (jumps <= 10)",
         np.clip(700 + np.cumsum(rng.integers(-10, 11, 200)), 0, n - 1), {}),
    )  # fmt: skip
    for label, indices, options in cases:
        with VideoReader(path, **options) as reader:
            reader[0]  # open and index
            times = []
            for i in indices:
                t = time.perf_counter()
                reader[int(i)]
                times.append((time.perf_counter() - t) * 1000)
                time.sleep(0.01)  # a user looks at the frame (prefetch runs meanwhile)
        median, p95 = np.median(times), np.percentile(times, 95)
        print(f"    {label:32s}  median {median:6.1f} ms  p95 {p95:6.1f} ms  "
              f"({median / per_frame_ms:.1f}x sequential per-frame cost)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--frames", type=int, default=100_000)
    args = parser.parse_args()
    bench_open(args.data, args.frames)
    bench_video(args.data)


if __name__ == "__main__":
    main()
