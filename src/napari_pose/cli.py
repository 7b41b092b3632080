"""The ``napari-pose`` command: the same functions as the widgets, for scripts and clusters.

Subcommands:
    demo      open napari with the synthetic sample project and the plugin's widgets docked
              (``--screenshot PATH`` renders the whole window to a PNG and exits);
    convert   convert a pose file to another format (.slp, DLC .csv/.h5, .analysis.h5).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    import napari

    viewer = napari.Viewer(title="napari-pose demo", show=args.screenshot is None)
    viewer.open_sample("napari-pose", "synthetic_project")
    viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    viewer.dims.set_current_step(0, 10)
    if args.screenshot is not None:
        viewer.window.resize(1400, 900)  # a stable size for docs screenshots
        viewer.screenshot(str(args.screenshot), canvas_only=False, flash=False)
        viewer.close()
        print(f"saved {args.screenshot}")
        return 0
    napari.run()
    return 0


def _convert(args: argparse.Namespace) -> int:
    from napari_pose.core.io import load_labels, save_labels

    labels = load_labels(args.input, lazy=False)
    save_labels(labels, args.output)
    print(f"wrote {args.output}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="napari-pose", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="open napari with the sample project and widgets")
    demo.add_argument("--screenshot", type=Path, help="save a PNG of the window and exit")
    demo.set_defaults(run=_demo)

    convert = sub.add_parser("convert", help="convert a pose file to another format")
    convert.add_argument("input", type=Path, help=".slp, DLC config.yaml/.csv/.h5, analysis .h5")
    convert.add_argument("output", type=Path, help=".slp, .csv, .h5 (DLC) or .analysis.h5")
    convert.set_defaults(run=_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from napari_pose.core.errors import PoseFileError

    try:
        return args.run(args)
    except PoseFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
