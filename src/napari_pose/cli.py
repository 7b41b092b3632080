"""The ``napari-pose`` command: the same functions as the widgets, for scripts and clusters.

Subcommands:
    demo      open napari with the synthetic sample project and the plugin's widgets docked
              (``--screenshot PATH`` renders the whole window to a PNG and exits);
    convert   convert a pose file to another format (.slp, DLC .csv/.h5, .analysis.h5);
    train     train a model package from user labels (no display needed; progress bar),
              from scratch or (``--from MODEL_DIR``) continuing a model package;
    predict   run a model package over videos (or the videos of .slp files) into a .slp,
              several videos at once on a dask.distributed cluster, or (``--merge``) into a
              copy of a project;
    track     assign identity tracks to predicted instances;
    evaluate  compare predictions with ground truth (OKS mAP, errors, identity metrics);
    check     flag likely mistakes in user labels (swapped sides, misplaced nodes, animals
              labelled twice, nodes outside the image); exit status 1 when any is found;
    suggest   frames to label next, each with its reason: those a model is least sure of
              (``-m MODEL_DIR``), or visually diverse, random or evenly spaced ones.

Every command fails the same way (``main``): one ``error:`` line naming the file and the
cause, exit status 2, no traceback; what is left out of a result is one ``warning:`` line
each (``PoseWarning``). Outputs are checked to be writable before any long work starts.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import attrs
import numpy as np


def _demo(args: argparse.Namespace) -> int:
    """Open the sample project with the docks a newcomer needs first, and say how to start.

    *Pose project* and *Label poses* share one tab group, labelling in front (one above the
    other they would not fit a laptop screen); a notification names the first clicks and keys
    and the docks that come next.
    """
    import napari
    from napari.utils.notifications import show_info

    viewer = napari.Viewer(title="napari-pose demo", show=args.screenshot is None)
    viewer.open_sample("napari-pose", "synthetic_project")
    viewer.window.add_plugin_dock_widget("napari-pose", "Pose project")
    label_dock, _ = viewer.window.add_plugin_dock_widget("napari-pose", "Label poses", tabify=True)
    label_dock.raise_()
    viewer.dims.set_current_step(0, 10)
    show_info(
        "napari-pose demo: two synthetic animals, every frame labelled. To label, click on the "
        "image to place the node shown as 'next node' in Label poses; n = new instance, "
        "o = occluded, m = move points, Ctrl+Z = undo, arrow keys = frames. Next: "
        "Plugins > napari-pose > Train model, then Predict and Proofread. "
        "See docs/labelling.md."
    )
    if args.screenshot is not None:
        viewer.window.resize(1400, 900)  # a stable size for docs screenshots
        viewer.screenshot(str(args.screenshot), canvas_only=False, flash=False)
        viewer.close()
        print(f"saved {args.screenshot}")
        return 0
    napari.run()
    return 0


def _check_writable(path: Path, *, folder: bool = False) -> None:
    """Fail now, not after hours of work, when ``path`` cannot be written.

    ``folder``: a folder to create or fill (a model package), made with its parents; else a
    file, saved atomically through a new file beside it, so its folder must exist and take new
    files. Writing a file there is the only test that holds everywhere (read-only mounts,
    ACLs, root ignoring permission bits).
    """
    from napari_pose.core.errors import PoseFileError

    if folder:
        if path.exists() and not path.is_dir():
            raise PoseFileError(path, "cannot be written: it exists and is not a folder")
        where = next(p for p in (path, *path.parents) if p.exists())
    else:
        if path.is_dir():
            raise PoseFileError(path, "cannot be written: it is a folder; give a file name")
        where = path.parent
        if not where.exists():
            raise PoseFileError(path, f"cannot be written: the folder {where} does not exist")
    if not where.is_dir():
        raise PoseFileError(path, f"cannot be written: {where} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=where):
            pass
    except OSError as error:
        raise PoseFileError(
            path, f"cannot be written: the folder {where} takes no new files ({error.strerror})"
        ) from error


def _convert(args: argparse.Namespace) -> int:
    from napari_pose.core.io import load_labels, save_labels

    _check_writable(args.output)
    labels = load_labels(args.input, lazy=False)
    save_labels(labels, args.output)
    print(f"wrote {args.output}")
    return 0


def _train_settings(args: argparse.Namespace):
    """``TrainConfig`` and optional stage configs from ``--config`` YAML, then flags on top.

    ``--config`` takes a YAML file with ``training:`` (``TrainConfig`` fields) and/or
    ``stages:`` (stage configs) sections; a model package's own ``config.yaml`` qualifies, so
    a run can be repeated or tweaked from a previous one.
    """
    from napari_pose.nn.train import TrainConfig, parse_frames

    settings, stages = ({}, None) if args.config is None else _read_config(args.config)
    flags = {
        "pipeline": args.pipeline,
        "preset": args.preset,
        "epochs": args.epochs,
        "time_limit": args.time_limit,
        "batch_size": args.batch_size,
        "device": args.device,
        "seed": args.seed,
        "frames": parse_frames(args.frames) if args.frames else None,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    return TrainConfig(**settings), stages


def _read_config(path: Path) -> tuple[dict, dict | None]:
    """``TrainConfig`` fields and stage configs of a ``--config`` file, or a ``PoseFileError``
    naming it: YAML's own errors span several lines and name no file."""
    import yaml

    from napari_pose.core.errors import PoseFileError
    from napari_pose.nn.pipelines import StageConfig
    from napari_pose.nn.train import TrainConfig, parse_frames

    try:
        recorded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise PoseFileError(path, f"not valid YAML ({' '.join(str(error).split())})") from error
    fields = {f.name for f in attrs.fields(TrainConfig)}
    try:
        settings = {k: v for k, v in (recorded.get("training") or {}).items() if k in fields}
        if isinstance(settings.get("frames"), str):
            settings["frames"] = parse_frames(settings["frames"])
        stages = None
        if recorded.get("stages"):
            stages = {k: StageConfig.from_dict(v) for k, v in recorded["stages"].items()}
            settings["pipeline"] = recorded.get("pipeline", settings.get("pipeline"))
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise PoseFileError(
            path, f"not a training config: training: and stages: must be sections ({error!r})"
        ) from error
    return settings, stages


def _train(args: argparse.Namespace) -> int:
    import signal
    import threading

    from tqdm import tqdm

    from napari_pose.core.io import load_labels
    from napari_pose.nn.train import train

    if args.start_from is not None and args.resume:
        raise ValueError("--from and --resume cannot be combined: --resume goes on with the "
                         f"interrupted run in {args.output}, --from starts a new run from "
                         f"the model in {args.start_from}")  # fmt: skip
    _check_writable(args.output, folder=True)
    config, stages = _train_settings(args)
    labels = load_labels(args.labels)
    bar = tqdm(total=1000, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}",
               disable=args.quiet)  # fmt: skip
    # Ctrl-C (and a cluster scheduler's SIGTERM) cancel like the dock's button: training
    # ends within about a step with a resumable checkpoint, instead of dying mid-write.
    stop = threading.Event()
    handlers = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        for progress in train(labels, args.output, config, stages=stages, resume=args.resume,
                              start_from=args.start_from, stop=stop,
                              labels_path=args.labels):  # fmt: skip
            bar.set_description(progress.stage)
            bar.update(max(0, round(progress.fraction * 1000) - bar.n))
            if progress.loss is not None:
                bar.set_postfix_str(f"epoch {progress.epoch} loss {progress.loss:.2e}",
                                    refresh=False)  # fmt: skip
            elif progress.stage not in ("done", "cancelled", "incomplete"):
                bar.write(progress.message)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    bar.close()
    print(progress.message)
    print(f"model package: {args.output}")
    if progress.stage == "cancelled":
        print(f"resume with: napari-pose train {args.labels} -o {args.output} --resume")
    return {"done": 0, "cancelled": 130}.get(progress.stage, 1)


def _input_videos(inputs: list[Path]):
    """Videos to predict: media files and image folders as given, ``.slp`` files' videos."""
    import sleap_io as sio

    from napari_pose.core.io import load_labels

    videos = []
    for path in inputs:
        if path.suffix.lower() == ".slp":
            videos += _found_videos(load_labels(path), path)
        elif not path.exists():
            from napari_pose.core.errors import PoseFileError

            raise PoseFileError(path, "input not found")
        else:
            videos.append(sio.Video(filename=str(path)))
    return videos


def _found_videos(labels, path: Path) -> list:
    """The videos of ``labels`` (loaded from ``path``), every one found where it is looked for,
    or a ``MissingVideoError`` naming the first that is not."""
    from napari_pose.core.io import missing_videos

    missing = missing_videos(labels)
    if missing:
        from napari_pose.core.errors import MissingVideoError

        raise MissingVideoError(path, f"its video {missing[0]} was not found")
    return list(labels.videos)


def _merge_target(args: argparse.Namespace):
    """The project ``--merge`` writes the predictions into, loaded and checked before any frame
    is predicted: a model whose nodes are not its skeleton's is refused, naming them."""
    from napari_pose.core.io import load_labels
    from napari_pose.core.skeleton import load_skeleton
    from napari_pose.nn.inference import skeleton_mismatch
    from napari_pose.nn.package import SKELETON_FILE

    path = args.inputs[0]
    if len(args.inputs) != 1 or path.suffix.lower() != ".slp":
        raise ValueError("--merge takes exactly one .slp input: the project to merge into")
    labels = load_labels(path)
    model_nodes = load_skeleton(args.model / SKELETON_FILE).node_names
    project_nodes = labels.skeletons[0].node_names if labels.skeletons else []
    problem = skeleton_mismatch(args.model, model_nodes, path, project_nodes)
    if problem is not None:
        raise ValueError(problem)
    return labels


def _merged(labels, predictions):
    """``labels`` with ``predictions`` in: user instances, suggestions, tracks and videos kept,
    older predictions on the frames predicted replaced, those on other frames kept."""
    from napari_pose.core.pose_arrays import (
        arrays_to_labels,
        concat,
        labels_to_arrays,
        replace_frames,
    )
    from napari_pose.nn.inference import in_project

    project = labels_to_arrays(labels)
    first_id = int(project.instance_id.max(initial=-1)) + 1
    new = in_project(predictions, project.skeleton, labels.videos, labels.tracks, first_id)
    labels.tracks.extend(new.tracks[len(labels.tracks) :])
    old = project.predicted
    merged = concat([project.select(~old), replace_frames(project.select(old), new)])
    return arrays_to_labels(merged, template=labels)


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_pose.core.io import save_labels
    from napari_pose.nn.inference import PredictConfig, to_labels
    from napari_pose.nn.scaleout import predict_one, predict_videos
    from napari_pose.nn.train import parse_frames

    _check_writable(args.output)
    animals = _animals_per_frame(args)
    config = PredictConfig(batch_size=args.batch_size, peak_threshold=args.peak_threshold,
                           max_instances=animals, flip_tta=args.flip_tta,
                           rotation_tta=args.rotation_tta, device=args.device)  # fmt: skip
    if args.refine and not args.tracker:
        raise ValueError("--refine works along tracks: add --tracker")
    frames = parse_frames(args.frames) if args.frames else None
    project = _merge_target(args) if args.merge else None
    # Merged predictions are saved with the project's own videos, which record stacks' axes.
    videos = (_input_videos(args.inputs) if project is None
              else _found_videos(project, args.inputs[0]))  # fmt: skip
    planes = _stack_planes(videos, args.axes)  # checks --axes before any prediction starts
    if len(videos) == 1 and args.scheduler is None:  # in this process, a bar over frames
        with tqdm(unit="frame", disable=args.quiet) as bar:

            def progress(done: int, total: int) -> None:
                bar.total = total
                bar.update(done - bar.n)

            arrays = predict_one(videos[0], args.model, config, frames, progress=progress,
                                 axes=args.axes)  # fmt: skip
        arrays = attrs.evolve(arrays, videos=videos)
    else:
        with tqdm(total=len(videos), unit="video", disable=args.quiet) as bar:
            arrays = predict_videos(videos, args.model, config, frames, scheduler=args.scheduler,
                                    workers=args.workers, axes=args.axes,
                                    progress=lambda done, total: bar.update(done - bar.n))  # fmt: skip
    if args.tracker:
        from napari_pose.nn.tracking import track_planes

        arrays = _refined(track_planes(arrays, planes, _tracker_config(args, animals)), args,
                          planes)  # fmt: skip
    if not len(arrays):
        from napari_pose.core.errors import PoseWarning

        warnings.warn(f"the model {args.model} found no animal in any frame predicted (peaks "
                      f"below --peak-threshold {args.peak_threshold}?)", PoseWarning,
                      stacklevel=2)  # fmt: skip
    save_labels(to_labels(arrays) if project is None else _merged(project, arrays), args.output)
    merged = "" if project is None else f" (merged into {args.inputs[0]})"
    print(f"wrote {len(arrays)} predicted instances in {len(set(arrays.frame.tolist()))} "
          f"frames to {args.output}{merged}")  # fmt: skip
    return 0


def _stack_planes(videos, axes: str | None) -> dict[int, tuple[tuple[int, ...], str]]:
    """Plane shape and axes of the TIFF stacks among ``videos``, by index, so tracking follows
    their time axis. Each stack's video records the axes it is read with (``axes``, else those
    it recorded before, else the file's; ``record_axes``), so the labels saved with it open on
    the same planes. Opening a stack reads its tags only; with ``axes`` every video goes to
    ``open_video``, so axes that do not fit, or a non-TIFF input, fail before predicting."""
    from napari_pose.core.stacks import StackPlaneReader, record_axes
    from napari_pose.core.video import is_stack_file, open_video

    planes = {}
    for i, video in enumerate(videos):
        if is_stack_file(video.filename) or axes is not None:
            with open_video(video, axes=axes) as reader:
                if isinstance(reader, StackPlaneReader):  # not a folder that is named *.tif
                    planes[i] = (reader.plane_shape, reader.plane_axes)
                    record_axes(video, reader)
    return planes


def _animals_per_frame(args: argparse.Namespace) -> int:
    """The animals per frame of a ``predict`` run, for detection and tracking alike: as asked,
    else the most one frame of the model's training labels held (a folder that is no model
    fails here, before any video is read). Printed, since it caps what is found and a video
    may hold more animals than the labels did."""
    from napari_pose.nn.inference import trained_animals

    asked, trained = _asked_animals(args), trained_animals(args.model)
    if asked is None:
        print(f"animals per frame: {trained} (the most in the training labels; change with "
              "--animals)")  # fmt: skip
        return trained
    flags = list(args.animals_given)
    named = "--animals" if "--animals" in flags else f"{flags[0]}, now called --animals"
    print(f"animals per frame: {asked} ({named})")
    return asked


class _AnimalsFlag(argparse.Action):
    """``--animals`` and its old names, ``--max-instances`` (detection) and ``--max-tracks``
    (tracking), which now set the one number both obey. Every flag given is recorded, so that
    two different numbers are refused (``_asked_animals``) rather than the last one winning."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        namespace.animals_given = {**getattr(namespace, "animals_given", {}),
                                   option_string: values}  # fmt: skip
        namespace.animals = values


def _asked_animals(args: argparse.Namespace) -> int | None:
    """The animals per frame the command line asks for (``None``: not given), or a
    ``ValueError`` when its flags name different numbers."""
    given: dict[str, int] = getattr(args, "animals_given", {})
    if len(set(given.values())) > 1:
        flags = " and ".join(f"{flag} {n}" for flag, n in given.items())
        raise ValueError(f"{flags} disagree: give the number of animals once, with --animals")
    return args.animals


def _tracker_config(args: argparse.Namespace, animals: int | None):
    from napari_pose.nn.tracking import TrackerConfig

    return TrackerConfig(similarity=args.similarity, max_tracks=animals, window=args.window,
                         kalman=args.kalman)  # fmt: skip


def _positive(text: str) -> int:
    """A count of 1 or more from the command line (argparse reports the error)."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"needs a whole number of 1 or more, not {text!r}")
    return int(text)


def _add_animals_flag(parser: argparse.ArgumentParser, help: str) -> None:
    """``--animals N``, with its old names hidden: scripts that use them still run."""
    parser.add_argument("--animals", type=_positive, action=_AnimalsFlag, metavar="N", help=help)
    for old in ("--max-instances", "--max-tracks"):
        parser.add_argument(old, type=_positive, action=_AnimalsFlag, dest="animals",
                            help=argparse.SUPPRESS)  # fmt: skip


def _add_tracker_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--similarity", choices=["oks", "centroid", "iou"], default="oks")
    parser.add_argument("--window", type=int, default=5, help="frames a track stays matchable")
    parser.add_argument("--kalman", action="store_true", help="constant-velocity prediction")
    parser.add_argument("--refine", action="store_true", help="after tracking, drop nodes that "
                        "jump away for 1-2 frames and fill gaps of up to 3 frames along each "
                        "track")  # fmt: skip


def _refined(arrays, args: argparse.Namespace, planes: dict):
    """``arrays`` refined along their tracks (``nn.refine``) when ``--refine`` asks for it. A
    stack's frames are planes of several depths, not consecutive times: refused there."""
    if not args.refine:
        return arrays
    if planes:
        raise ValueError("--refine works along the frames of videos, not on TIFF stacks")
    from napari_pose.nn.refine import refine_tracks

    return refine_tracks(arrays)


def _track(args: argparse.Namespace) -> int:
    """Track ``args.input``'s predictions; a TIFF stack's along its time axis, each z alone
    (``track_planes``), which needs the stack file: frame numbers are flat plane indices, and
    only the file's shape tells which (t, z) each is."""
    from napari_pose.core.io import load_labels, missing_videos, save_labels
    from napari_pose.core.pose_arrays import arrays_to_labels
    from napari_pose.core.video import is_stack_file
    from napari_pose.nn.tracking import track_planes

    animals = _asked_animals(args)
    _check_writable(args.output)
    labels = load_labels(args.input)
    stacks = [name for name in missing_videos(labels) if is_stack_file(name)]
    if stacks:
        from napari_pose.core.errors import MissingVideoError

        raise MissingVideoError(args.input, f"its stack {stacks[0]} was not found; tracking "
                                "follows a stack's time axis, known from the stack")  # fmt: skip
    planes = _stack_planes(labels.videos, None)
    arrays = _arrays(labels, args.input)
    if not arrays.predicted.any():
        from napari_pose.core.errors import PoseWarning

        warnings.warn(f"{args.input}: no predicted instances to track", PoseWarning, stacklevel=2)
    tracked = _refined(track_planes(arrays, planes, _tracker_config(args, animals)), args, planes)
    out = arrays_to_labels(tracked)
    out.suggestions = list(labels.suggestions)
    save_labels(out, args.output)
    n_tracks = len({int(t) for t in tracked.track[tracked.predicted] if t >= 0})
    print(f"wrote {args.output}: {n_tracks} tracks")
    return 0


def _arrays(labels, path: Path):
    """``labels_to_arrays`` of ``labels`` read from ``path``, failing with the file's name."""
    from napari_pose.core.errors import PoseFileError
    from napari_pose.core.pose_arrays import labels_to_arrays

    try:
        return labels_to_arrays(labels)
    except ValueError as error:  # labels without a skeleton
        raise PoseFileError(path, str(error)) from error


def _evaluate(args: argparse.Namespace) -> int:
    """Score predictions on the labelled frames of the same videos (``metrics.match_videos``:
    by file name and frame count, so predictions of a copied video count). Nothing to score
    is an error naming both files, never a silent mAP of 0."""
    import json

    from napari_pose.core.errors import PoseFileError
    from napari_pose.core.io import atomic_write, load_labels
    from napari_pose.nn.metrics import compare, json_ready, video_key
    from napari_pose.nn.train import parse_frames

    if args.json is not None:
        _check_writable(args.json)
    gt = _arrays(load_labels(args.ground_truth), args.ground_truth)
    gt = gt.select(~gt.predicted)
    if args.frames:
        gt = gt.select(np.isin(gt.frame, list(parse_frames(args.frames))))
    if not len(gt):
        within = f" in frames {args.frames}" if args.frames else ""
        raise PoseFileError(args.ground_truth, f"has no user-labelled instances{within} to "
                            f"score {args.predictions} against")  # fmt: skip
    pred = _arrays(load_labels(args.predictions), args.predictions)
    pred = pred.select(pred.predicted)
    if not len(pred):
        raise PoseFileError(args.predictions, "has no predicted instances to score against "
                            f"{args.ground_truth}")  # fmt: skip
    try:
        metrics, _ = compare(gt, pred, predicted_frames_only=False)
    except ValueError as error:  # no node names in common
        raise PoseFileError(args.predictions, f"{error} ({args.ground_truth})") from error
    counts = {k: metrics[k] for k in ("n_gt_frames", "n_pred_frames", "n_matched_frames")}
    if not counts["n_matched_frames"]:

        def names(arrays) -> str:
            return ", ".join(sorted({Path(video_key(v)).name for v in arrays.videos}))

        raise PoseFileError(
            args.predictions,
            f"none of its {counts['n_pred_frames']} predicted frames is one of the "
            f"{counts['n_gt_frames']} labelled frames of {args.ground_truth} (videos are "
            f"matched by file name and frame count; predicted: {names(pred)}; labelled: "
            f"{names(gt)})",
        )
    print(f"frames: {counts['n_gt_frames']} labelled, {counts['n_pred_frames']} predicted, "
          f"{counts['n_matched_frames']} labelled and predicted (scored)")  # fmt: skip
    for key in ("oks_map", "oks_mar", "dist_median_px", "dist_p95_px", "pck_5px",
                "id_switches", "mota", "idf1"):  # fmt: skip
        if key in metrics:
            value = metrics[key]
            print(f"{key:>16}: {value:.4g}" if isinstance(value, float) else f"{key:>16}: {value}")
    if args.json is not None:
        text = json.dumps(json_ready(metrics), indent=2)  # NaN as null: valid JSON
        atomic_write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 0


def _check(args: argparse.Namespace) -> int:
    """Print one line per likely mistake in the user labels, then the counts; 1 when any.

    The exit status lets a script refuse to train on labels that need a look first.
    """
    import json

    from napari_pose.core.io import atomic_write, load_labels
    from napari_pose.core.quality import check_labels, counts

    if args.json is not None:
        _check_writable(args.json)
    labels = load_labels(args.labels)
    if not labels.skeletons:
        from napari_pose.core.errors import PoseFileError

        raise PoseFileError(args.labels, "the labels have no skeleton")
    flags = check_labels(labels)
    names = [Path(str(video.filename)).name for video in labels.videos]
    for flag in flags:
        print(f"{names[flag.video]} frame {flag.frame} instance {flag.instance}: "
              f"[{flag.kind}] {flag.reason}")  # fmt: skip
    by_kind = counts(flags)
    detail = ", ".join(f"{n} {kind}" for kind, n in by_kind.items() if n)
    print(f"{len(flags)} flagged" + (f" ({detail})" if detail else ": the labels look clean"))
    if args.json is not None:
        report = {"labels": str(args.labels), "videos": [str(v.filename) for v in labels.videos],
                  "counts": by_kind, "flags": [flag.to_dict() for flag in flags]}  # fmt: skip
        text = json.dumps(report, indent=2)
        atomic_write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return 1 if flags else 0


def _suggest(args: argparse.Namespace) -> int:
    """Print frames to label next, one line each with its reason, most useful first.

    ``model`` (the default with ``-m``) ranks a sample of each video's unlabelled frames by how
    unsure the model is (``nn.uncertainty``); ``diverse``, ``random`` and ``strided`` are the
    Label dock's other methods. Frames with user labels are never suggested.
    """
    import json

    from tqdm import tqdm

    from napari_pose.core import suggestions as sg
    from napari_pose.core.io import atomic_write, load_labels
    from napari_pose.core.pose_arrays import labels_to_arrays
    from napari_pose.core.video import open_video

    method = args.method or ("model" if args.model is not None else "diverse")
    if method == "model" and args.model is None:
        raise ValueError("--method model needs a model package folder: -m MODEL_DIR")
    if method != "model" and args.model is not None:
        raise ValueError(f"-m is only used by --method model, not {method}")
    if args.n < 1:
        raise ValueError(f"-n must be at least 1, not {args.n}")
    if args.json is not None:
        _check_writable(args.json)
    predictor = None
    if args.model is not None:  # a bad folder fails before any video is read
        from napari_pose.nn.uncertainty import load_predictor

        predictor = load_predictor(args.model)
    labels = load_labels(args.labels, lazy=False)
    arrays = labels_to_arrays(labels)
    report = []
    for index, video in enumerate(labels.videos):
        done = arrays.frame[(arrays.video == index) & ~arrays.predicted]
        name = Path(str(video.filename)).name
        with open_video(video) as reader:
            if predictor is not None:
                from napari_pose.nn.uncertainty import rank_frames

                steps = rank_frames(predictor, reader, n=args.n, exclude=done)
                with tqdm(unit="frame", disable=args.quiet, desc=name) as bar:
                    while True:
                        try:
                            posed, bar.total = next(steps)
                            bar.update(posed - bar.n)
                        except StopIteration as stop:
                            chosen = stop.value
                            break
                found = [(s.frame, s.score, s.reason) for s in chosen]
            else:
                if method == "diverse":
                    frames = sg.diverse_frames(reader, args.n, exclude=done)
                elif method == "random":
                    frames = sg.random_frames(reader.n_frames, args.n, exclude=done)
                else:
                    frames = sg.strided_frames(reader.n_frames, args.n, exclude=done)
                found = [(int(f), None, method) for f in frames]
        for frame, score, reason in found:
            shown = "" if score is None else f" (score {score:.2f})"
            print(f"{name} frame {frame}: {reason}{shown}")
            report.append({"video": str(video.filename), "frame": frame, "score": score,
                           "reason": reason})  # fmt: skip
    print(f"{len(report)} frames suggested ({method})")
    if args.json is not None:
        text = json.dumps({"labels": str(args.labels), "method": method,
                           "suggestions": report}, indent=2)  # fmt: skip
        atomic_write(args.json, lambda tmp: tmp.write_text(text, encoding="utf-8"))
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

    train = sub.add_parser("train", help="train a model package from user labels")
    train.add_argument("labels", type=Path, help="labels file (.slp, DLC config.yaml/.csv/.h5)")
    train.add_argument("-o", "--output", type=Path, required=True, help="model folder to write")
    train.add_argument(
        "--pipeline",
        choices=["single_instance", "topdown", "bottomup"],
        help="default: single_instance for one animal per frame, else topdown",
    )
    train.add_argument("--preset", choices=["small", "medium", "large"], help="model size")
    train.add_argument(
        "--config",
        type=Path,
        help="YAML with training:/stages: sections (a model package's config.yaml works)",
    )
    train.add_argument("--epochs", type=int, help="most epochs per stage (default 200)")
    train.add_argument("--time-limit", type=float, help="minutes for the whole pipeline")
    train.add_argument("--frames", help="frame indices to train on, e.g. 0-1199 or 0-1199:10")
    train.add_argument("--batch-size", type=int)
    train.add_argument("--seed", type=int)
    train.add_argument("--device", help="auto (default), cpu, cuda, cuda:N or mps")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run")
    train.add_argument(
        "--from",
        dest="start_from",
        type=Path,
        metavar="MODEL_DIR",
        help="continue training this model package on the labels: its stages start from its "
        "best weights, with its pipeline and (unless --config gives stages) its model and "
        "input settings; its nodes must be the labels'",
    )
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    predict = sub.add_parser("predict", help="predict videos with a model package")
    predict.add_argument(
        "inputs",
        type=Path,
        nargs="+",
        help="videos, image folders or .slp files (their videos are predicted)",
    )
    predict.add_argument("-m", "--model", type=Path, required=True, help="model package folder")
    predict.add_argument("-o", "--output", type=Path, required=True, help="predictions .slp")
    predict.add_argument("--frames", help="frame indices, e.g. 1300-1499 or 0-99999:10")
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument(
        "--peak-threshold",
        type=float,
        default=0.1,
        help="node peaks below this are not found (default 0.1)",
    )
    _add_animals_flag(predict, "animals a frame may hold: detection keeps at most N per frame "
                      "and --tracker makes at most N tracks (default: the most in the model's "
                      "training labels)")  # fmt: skip
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    predict.add_argument("--scheduler", help="dask scheduler address (default: local cluster)")
    predict.add_argument("--workers", type=int, help="local cluster processes (default: cores)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.add_argument("--axes", help="axes of TIFF inputs, e.g. TZYX (default: from the "
                         "file's metadata)")  # fmt: skip
    predict.add_argument("--tracker", action="store_true", help="track the predictions")
    predict.add_argument("--flip-tta", action="store_true", help="also predict each frame "
                         "mirrored and average (test-time augmentation; twice the model time)")  # fmt: skip
    predict.add_argument("--rotation-tta", type=float, default=0.0, metavar="DEGREES",
                         help="also predict each frame turned by -/+ DEGREES and average "
                         "(test-time augmentation; three times the model time; e.g. 15)")  # fmt: skip
    predict.add_argument("--merge", action="store_true", help="write the one .slp input with "
                         "the predictions in (older ones on those frames replaced)")  # fmt: skip
    _add_tracker_flags(predict)
    predict.set_defaults(run=_predict)

    track = sub.add_parser("track", help="assign identity tracks to predictions")
    track.add_argument("input", type=Path, help="predictions .slp")
    track.add_argument("-o", "--output", type=Path, required=True, help="tracked .slp")
    _add_animals_flag(track, "animals a frame may hold: at most N tracks (default: no limit)")
    _add_tracker_flags(track)
    track.set_defaults(run=_track)

    evaluate = sub.add_parser("evaluate", help="score predictions against ground truth")
    evaluate.add_argument("ground_truth", type=Path, help="labels with user instances")
    evaluate.add_argument("predictions", type=Path, help="predictions .slp")
    evaluate.add_argument("--frames", help="frame indices to score, e.g. 1300-1499")
    evaluate.add_argument("--json", type=Path, help="also write every figure to this file")
    evaluate.set_defaults(run=_evaluate)

    check = sub.add_parser("check", help="flag likely mistakes in user labels")
    check.add_argument("labels", type=Path, help="labels file (.slp, DLC config.yaml/.csv/.h5)")
    check.add_argument("--json", type=Path, help="also write the flags and counts to this file")
    check.set_defaults(run=_check)

    suggest = sub.add_parser("suggest", help="frames to label next, each with its reason")
    suggest.add_argument("labels", type=Path, help="labels file (.slp, DLC config.yaml/.csv/.h5)")
    suggest.add_argument("-m", "--model", type=Path, help="model package folder (for "
                         "--method model: frames the model is least sure of)")  # fmt: skip
    suggest.add_argument("-n", type=int, default=20, help="frames per video (default 20)")
    suggest.add_argument("--method", choices=["model", "diverse", "random", "strided"],
                         help="default: model with -m, else diverse")  # fmt: skip
    suggest.add_argument("--json", type=Path, help="also write the suggestions to this file")
    suggest.add_argument("--quiet", action="store_true", help="no progress bar")
    suggest.set_defaults(run=_suggest)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command: problems with files, arguments or the system (``ValueError``, which
    ``PoseFileError`` is, ``OSError``, YAML errors) end as one ``error:`` line and status 2;
    ``PoseWarning``s are ``warning:`` lines, every time. Anything else is a bug and keeps its
    traceback."""
    import yaml

    from napari_pose.core.errors import PoseWarning

    args = build_parser().parse_args(argv)
    if argv is None and args.command in ("train", "predict"):
        from napari_pose.runtime import preload_tcmalloc

        preload_tcmalloc()  # ~2x faster CPU training; re-executes this command once
    with warnings.catch_warnings():
        warnings.simplefilter("always", PoseWarning)
        warnings.showwarning = _warning_printer(warnings.showwarning)
        try:
            return args.run(args)
        except (ValueError, OSError, yaml.YAMLError) as error:
            _print_line(f"error: {_one_line(error)}")
            return 2


def _one_line(error: BaseException) -> str:
    """``error`` in one line that names its file: an ``OSError`` keeps the file apart from its
    message (``[Errno 2] No such file or directory: 'x'``)."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        text = f"{error.filename}: {error.strerror}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _print_line(text: str) -> None:
    """One line on stderr, above any progress bar rather than through it."""
    from tqdm import tqdm

    tqdm.write(text, file=sys.stderr)


def _warning_printer(default):
    """``warnings.showwarning`` printing ``PoseWarning``s as one ``warning:`` line, others as
    ``default`` does (with their source line, which is what a library's warning needs)."""
    from napari_pose.core.errors import PoseWarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, PoseWarning):
            _print_line(f"warning: {_one_line(message)}")
        else:
            default(message, category, filename, lineno, file, line)

    return show


if __name__ == "__main__":
    sys.exit(main())
