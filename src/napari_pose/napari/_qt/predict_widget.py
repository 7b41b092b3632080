"""The *Predict* dock widget: run a trained model over frames of any image layer.

Thin like the *Train model* dock: ``nn.inference.predict_video`` does the work and yields per
batch, so the widget runs it in a ``thread_worker`` (napari stays responsive) and redraws one
predictions Points layer with everything predicted so far, so points appear while the run goes
on. Frames are read from the image layer's data, not from a file, so a lazily decoded video, a
TIFF stack (whose planes are numbered in C order over the leading axes) and an in-memory array
all work the same way. Confidence maps are a lazy dask array: napari asks for the frame on
screen and only that frame goes through the model.

*Merge into project* moves the predictions into the open project labelling the same video
(its predictions layer, which saving the project writes, and its trajectories), after checking
that the model's nodes are the project's.

The model folder follows the projects' models (``ProjectSession.model_changed``): when the
*Train model* dock trains a new model of a project, an empty field, or one holding that
project's previous model, gets the new one; a folder the user chose otherwise is kept.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Generator
from contextlib import closing
from pathlib import Path

import attrs
import dask.array as da
import napari
import napari.viewer
import numpy as np
import sleap_io as sio
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    FileEdit,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)  # fmt: skip
from magicgui.widgets.bases import CategoricalWidget
from napari.layers import Image, Points
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error, show_warning

from napari_pose.core.io import save_labels
from napari_pose.core.pose_arrays import PoseArrays, replace_frames
from napari_pose.core.skeleton import load_skeleton
from napari_pose.napari._qt.layout import ScrollingDock
from napari_pose.napari.convert import (
    EDGES_KEY,
    POSE_KEY,
    PoseBinding,
    layers_to_labels,
    video_name,
)
from napari_pose.napari.drawing import add_pose_layers, redraw
from napari_pose.napari.labelling import PlaneFrames
from napari_pose.napari.predictions import check_model_skeleton, merge_predictions
from napari_pose.napari.session import ProjectSession, projects, same_path
from napari_pose.napari.sync import attach
from napari_pose.nn.inference import (
    Crowding,
    PredictConfig,
    Predictor,
    predict_video,
    predictions_to_arrays,
    trained_animals,
)
from napari_pose.nn.package import SKELETON_FILE
from napari_pose.nn.predict import FramePrediction
from napari_pose.nn.refine import refine_tracks
from napari_pose.nn.tracking import TrackerConfig, track_planes

FRAME_CHOICES = ["current frame", "range", "all", "suggested", "labelled"]
#: Frame choices that are frames of a project: their predictions are meant to join it.
PROJECT_FRAMES = ("suggested", "labelled")
DEVICE_CHOICES = ["auto", "cpu", "cuda", "mps"]
#: Seconds between redraws of the predictions layer during a run: redrawing every point of a
#: long run after every small batch would cost more than the inference.
REDRAW_INTERVAL_S = 0.5

#: What the worker yields per batch: the model (loaded in the worker), frame indices, results.
Batch = tuple[Predictor, np.ndarray, list[FramePrediction]]


@thread_worker
def _run_prediction(load: Callable[[], Predictor], frames: PlaneFrames, indices: list[int],
                    name: str, stop: threading.Event, crowding: Crowding,
                    ) -> Generator[Batch, None, str | None]:  # fmt: skip
    """Predict ``indices`` of the image ``name`` batch by batch until done or ``stop`` is set,
    counting frames that held more animals than the limit into ``crowding`` (for the dock to
    report: a warning raised in this thread could be lost, as ``warnings`` state is global).

    Problems the user can fix (a bad model folder, frames the model cannot take, an absent
    device) are ``ValueError``s or ``OSError``s and are returned as one plain message rather
    than raised as a traceback; anything else is a bug and is raised.
    """
    try:
        predictor = load()
        predictor.check_frames(frames[indices[0]][None], source=repr(name))  # say which image
        with closing(predict_video(predictor, frames, indices, crowding=crowding)) as batches:
            for done, predictions in batches:
                yield predictor, done, predictions
                if stop.is_set():
                    break
    except (ValueError, OSError) as error:
        return str(error)
    return None


def plane_shape(image: Image) -> tuple[int, ...]:
    """The image axes before (y, x): ``(n_frames,)`` for a video, ``(t, z)`` for a stack."""
    return tuple(int(n) for n in image.data.shape[: image.ndim - 2])


def shows_video(image: Image, video: sio.Video) -> bool:
    """Whether ``image`` shows ``video``: opened from its file, or named after it by a project."""
    filename = video.filename[0] if isinstance(video.filename, list) else video.filename
    source = image.source.path
    same_file = source is not None and Path(str(source)).resolve() == Path(filename).resolve()
    return same_file or video_name(video) == image.name


def project_video(viewer: napari.Viewer, image: Image) -> tuple[ProjectSession, int] | None:
    """The open project with user labels on the video ``image`` shows, and that video's index."""
    for session in projects(viewer).listed().values():
        user_videos = {layer.metadata[POSE_KEY].video for layer in session.user_layers()}
        for v in sorted(user_videos):
            if shows_video(image, session.labels.videos[v]):
                return session, v
    return None


def default_plane_axes(image: Image) -> str:
    """Letters naming ``image``'s plane axes (those before y, x): its axis labels when they are
    distinct letters ('t', 'z', as the TIFF reader sets them from the file), else time first
    and then depth (``"T"``, ``"TZ"``)."""
    n = len(plane_shape(image))
    labels = "".join(str(label) for label in image.axis_labels[:n]).upper()
    if len(labels) == n and labels.isalpha() and len(set(labels)) == n:
        return labels
    return ("T" + "ZQRSUVW")[:n]


def check_plane_axes(text: str, image: Image) -> str:
    """The user's letters for ``image``'s plane axes, upper case, or a ``ValueError``."""
    axes, n = text.strip().upper(), len(plane_shape(image))
    if len(axes) != n or not axes.isalpha() or len(set(axes)) != n or axes.count("T") > 1:
        raise ValueError(f"stack axes {text!r}: {image.name!r} has {n} axes before y, x "
                         f"(shape {plane_shape(image)}); give one distinct letter each, 'T' for "
                         "time and e.g. 'Z' for depth")  # fmt: skip
    return axes


def confidence_map_arrays(predictor: Predictor, image: Image) -> dict[str, da.Array]:
    """Lazy ``(*planes, H, W)`` float32 maps of ``image``, one chunk per frame.

    ``"confmaps"`` always, ``"pafs"`` (PAF magnitude) for bottom-up models. A frame goes through
    the model only when napari reads its chunk; the last few frames are kept so the PAF layer
    does not run the model again for the frame the confidence map layer just read.
    """
    planes = plane_shape(image)
    height, width = image.data.shape[len(planes) : len(planes) + 2]
    frames = PlaneFrames(image, planes)

    @functools.lru_cache(maxsize=4)
    def maps_of(frame: int) -> dict[str, np.ndarray]:
        return predictor.confidence_maps(frames[frame][None])

    def block(name: str, frame: np.ndarray) -> np.ndarray:
        return maps_of(int(frame.flat[0]))[name].reshape(frame.shape + (height, width))

    names = ["confmaps", "pafs"] if predictor.package.pipeline == "bottomup" else ["confmaps"]
    # One chunk per plane holding its frame index: dask's ``block_info`` would do too, but it
    # is built for every chunk up front (seconds for a long video), this in milliseconds.
    index = da.from_array(np.arange(int(np.prod(planes))).reshape(planes), chunks=1, name=False)
    ndim = len(planes) + 2
    return {name: index.map_blocks(functools.partial(block, name), new_axis=[ndim - 2, ndim - 1],
                                   chunks=(1,) * len(planes) + (height, width), dtype=np.float32,
                                   meta=np.empty((0,) * ndim, np.float32))  # fmt: skip
            for name in names}  # fmt: skip


def _chosen(edit: FileEdit) -> Path | None:
    """The path in a file field, or ``None`` while it is empty (magicgui shows ``.``)."""
    value = edit.value  # a Path: these fields choose one file or folder, never several
    return value if isinstance(value, Path) and str(value) not in ("", ".") else None


def _folder_stamp(folder: Path) -> float | None:
    """When a model folder last changed, so a retrained model is reloaded rather than reused."""
    try:
        return max((p.stat().st_mtime for p in folder.iterdir()), default=0.0)
    except OSError:
        return None


@attrs.define(eq=False)
class _Run:
    """One prediction run: what is predicted, into which layer, and what came back so far.

    Attributes:
        image: The image layer predicted on.
        model: The model folder.
        frames: Frame (plane) indices to predict.
        plane_axes: Letters of the image's plane axes (``"T"`` for a video): tracking follows T.
        animals: Animals per frame detection kept, known when the model has loaded: the most
            tracks too.
        crowding: Frames predicted so far that held more animals than that.
        layer: The predictions Points layer, made or found when the model has loaded.
        kept: Predictions the layer held before this run; the frames redone are replaced.
        results: ``(frame, prediction)`` of every frame predicted so far.
        drawn_at: ``time.monotonic()`` of the last redraw of the layer.
    """

    image: Image
    model: Path
    frames: list[int]
    plane_axes: str
    animals: int = 0
    crowding: Crowding = attrs.Factory(Crowding)
    layer: Points | None = None
    kept: PoseArrays | None = None
    results: list[tuple[int, FramePrediction]] = attrs.Factory(list)
    drawn_at: float = 0.0


class PredictWidget(ScrollingDock):
    """Predict poses on frames of an image layer with a trained model, and look inside it."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        attach(viewer)
        self.model = FileEdit(label="model folder", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.frames = ComboBox(label="frames", choices=FRAME_CHOICES)
        self.first = SpinBox(label="from frame", value=0, min=0, max=10**9, visible=False)
        self.last = SpinBox(label="to frame", value=99, min=0, max=10**9, visible=False)
        self.batch_size = SpinBox(label="batch size", value=4, min=1, max=1024)
        self.device = ComboBox(label="device", choices=DEVICE_CHOICES)
        self.animals = SpinBox(label="animals per frame", value=0, min=0, max=1000,
                               tooltip="most animals a frame may hold: detection keeps the best "
                               "this many per frame, and tracking makes at most this many "
                               "tracks. 0: the most one frame of the training labels held")  # fmt: skip
        self.trained_animals = Label(label="", value="", visible=False)
        self.flip_tta = CheckBox(label="average with mirrored frames", value=False,
                                 tooltip="predict each frame also mirrored left/right and "
                                 "average (flip test-time augmentation): twice the model time")  # fmt: skip
        self.track_box = CheckBox(label="track identities", value=False)
        self.refine_box = CheckBox(label="refine along tracks", value=False,
                                   tooltip="after tracking, drop nodes that jump away for 1-2 "
                                   "frames and fill gaps of up to 3 frames (videos)")  # fmt: skip
        self.plane_axes = LineEdit(label="stack axes", visible=False,
                                   tooltip="one letter per axis before y, x: T time, Z depth. "
                                   "Tracking follows T, each depth on its own")  # fmt: skip
        self.start_button = PushButton(label="", text="Start")
        self.cancel_button = PushButton(label="", text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="status", value="")
        self.status.native.setWordWrap(True)  # a long message wraps rather than widens the dock
        self.save_path = FileEdit(
            label="save to", mode=FileDialogMode.OPTIONAL_FILE, filter="*.slp"
        )
        self.save_button = PushButton(label="", text="Save predictions")
        self.merge_button = PushButton(label="", text="Merge into project")
        self.maps_button = PushButton(label="", text="Show confidence maps")
        body = self.body
        body.extend([self.model, self.image, self.frames, self.first, self.last, self.batch_size,
                     self.device, self.animals, self.trained_animals, self.flip_tta,
                     self.track_box, self.refine_box, self.plane_axes, self.start_button,
                     self.cancel_button, self.progress, self.status, self.save_path,
                     self.save_button, self.merge_button, self.maps_button])  # fmt: skip
        self.worker: GeneratorWorker | None = None  # the running prediction
        self.predictions_layer: Points | None = None  # what Save writes and Merge moves
        self._origin: tuple[Image, Path] | None = None  # its image and model folder
        self._run: _Run | None = None
        self._stop = threading.Event()
        self._cache: tuple[tuple, Predictor] | None = None  # the last model loaded, by key
        self.frames.changed.connect(self._show_range)
        self.model.changed.connect(self._show_trained_animals)
        self.image.changed.connect(self._show_plane_axes)
        self._show_plane_axes(self.image.value)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.save_button.clicked.connect(self.save)
        self.merge_button.clicked.connect(self.merge)
        self.maps_button.clicked.connect(self.show_confidence_maps)
        found = projects(viewer)
        for session in found.sessions:
            self._follow(session)
        found.added.connect(self._follow)
        viewer.layers.events.inserted.connect(self.image.reset_choices)
        viewer.layers.events.removed.connect(self.image.reset_choices)

    def _follow(self, session: ProjectSession) -> None:
        session.model_changed.connect(self._project_model_changed)

    def _project_model_changed(self, new: Path | None, previous: Path | None) -> None:
        """A project has a new model: predict with it by default, unless the field holds a
        folder the user chose that is not that project's previous model."""
        current = _chosen(self.model)
        if new is not None and (current is None or same_path(current, previous)):
            self.model.value = new

    def _image_choices(self, _widget: CategoricalWidget | None = None) -> list[tuple[str, Image]]:
        return [(l.name, l) for l in self._viewer.layers if isinstance(l, Image)]

    def _show_range(self, choice: str) -> None:
        self.first.visible = self.last.visible = choice == "range"

    def _show_plane_axes(self, image: Image | None) -> None:
        """Offer the stack axes (defaults from the layer) for images with several plane axes."""
        stack = image is not None and len(plane_shape(image)) > 1
        self.plane_axes.visible = stack
        if stack:
            self.plane_axes.value = default_plane_axes(image)

    def _show_trained_animals(self) -> None:
        """Say what 0 animals per frame stands for with the chosen model: the most animals one
        frame of its training labels held (nothing while the folder is no model)."""
        folder = _chosen(self.model)
        try:
            animals = None if folder is None else trained_animals(folder)
        except (ValueError, OSError):  # PoseFileError: not a model folder (yet)
            animals = None
        self.trained_animals.visible = animals is not None
        self.trained_animals.value = f"0: as in the training labels, up to {animals} per frame"

    # ------------------------------------------------------------------ the model
    def _config(self) -> PredictConfig:
        return PredictConfig(batch_size=int(self.batch_size.value), device=self.device.value,
                             max_instances=int(self.animals.value) or None,
                             flip_tta=bool(self.flip_tta.value))  # fmt: skip

    def _key(self, folder: Path, config: PredictConfig) -> tuple:
        """What a loaded model depends on (flip averaging wraps its networks)."""
        return folder.resolve(), config.device, config.flip_tta, _folder_stamp(folder)

    def _cached(self, folder: Path, config: PredictConfig) -> Predictor | None:
        """The model already loaded from ``folder``, set up for ``config``, if any.

        Loading takes a while for large models; reusing it is what makes predicting the
        current frame instant when the user steps and predicts again.
        """
        if self._cache is None or self._cache[0] != self._key(folder, config):
            return None
        predictor = self._cache[1]
        predictor.config = config
        return predictor

    def _load_predictor(self, folder: Path, config: PredictConfig) -> Predictor:
        """The model in ``folder``, loaded once and reused while the folder is unchanged."""
        predictor = self._cached(folder, config) or Predictor.load(folder, config)
        self._cache = (self._key(folder, config), predictor)
        return predictor

    def _chosen_model_and_image(self) -> tuple[Path, Image]:
        folder, image = _chosen(self.model), self.image.value
        if folder is None:
            raise ValueError("choose a model folder (made by Train model or `napari-pose train`)")
        if image is None:
            raise ValueError("open an image or a video to predict on")
        if image.ndim < 3:  # poses are stored per frame: a lone image is not a frame of anything
            raise ValueError(
                f"{image.name!r} is a single 2D image; predict on a video or a stack "
                "of frames (add it as one with `viewer.add_image(image[None])`)"
            )
        return folder, image

    # ------------------------------------------------------------------ frames
    def current_frame(self, image: Image) -> int:
        """The frame (flattened plane index) of ``image`` on screen."""
        planes = plane_shape(image)
        position = image.world_to_data(self._viewer.dims.point)[: len(planes)]
        plane = np.clip(np.round(position).astype(np.int64), 0, np.array(planes) - 1)
        return int(np.ravel_multi_index(tuple(plane), planes))

    def _frames(self, image: Image) -> list[int]:
        """The frames the chosen option names, or a ``ValueError`` saying why there are none."""
        choice, n_frames = self.frames.value, int(np.prod(plane_shape(image)))
        if choice == "current frame":
            frames = [self.current_frame(image)]
        elif choice == "all":
            frames = list(range(n_frames))
        elif choice == "range":
            frames = list(range(int(self.first.value), min(int(self.last.value) + 1, n_frames)))
        else:
            frames = [f for f in self._project_frames(image, choice) if f < n_frames]
        if not frames:
            raise ValueError(f"nothing to predict: no {choice} frames in {image.name!r}")
        return frames

    def _project_frames(self, image: Image, choice: str) -> list[int]:
        """Suggested or user-labelled frames of the project open on ``image``'s video."""
        found = project_video(self._viewer, image)
        if found is None:
            raise ValueError(f"no open pose project labels {image.name!r}, so it has no {choice} "
                             "frames; open its project or choose other frames")  # fmt: skip
        session, v = found
        labels = session.labels
        if choice == "suggested":
            return sorted({s.frame_idx for s in labels.suggestions if s.video is labels.videos[v]})
        frames: set[int] = set()
        for layer in session.user_layers():
            binding = layer.metadata[POSE_KEY]
            if binding.video == v:
                frames.update(binding.merged(layer.data, layer.features).frame.tolist())
        return sorted(frames)

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Predict the chosen frames (what the Start button does)."""
        try:
            folder, image = self._chosen_model_and_image()
            frames = self._frames(image)
            stack = len(plane_shape(image)) > 1
            axes = check_plane_axes(self.plane_axes.value, image) if stack else "T"
            config = self._config()
            cached = self._cached(folder, config)
            if self.frames.value in PROJECT_FRAMES:
                skeleton = (cached.skeleton if cached is not None
                            else load_skeleton(folder / SKELETON_FILE))  # fmt: skip
                found = project_video(self._viewer, image)
                assert found is not None  # ``_frames`` found the project's frames above
                check_model_skeleton(found[0], folder, skeleton.node_names)
        except ValueError as error:  # PoseFileError too: a model folder without a skeleton
            show_error(str(error))
            return

        def load() -> Predictor:  # in the worker: loading a large model takes a while
            return cached if cached is not None else Predictor.load(folder, config)

        self._run = _Run(image, folder, frames, axes)
        self._stop = threading.Event()
        self.progress.value, self.status.value = 0, "starting"
        self.start_button.enabled, self.cancel_button.enabled = False, True
        self.worker = _run_prediction(load, PlaneFrames(image, plane_shape(image)), frames,
                                      image.name, self._stop, self._run.crowding)  # fmt: skip
        self.worker.yielded.connect(self._add_batch)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def cancel(self) -> None:
        """Stop after the current batch; the frames predicted so far stay in the layer."""
        self._stop.set()
        self.status.value = "stopping after this batch"

    def _add_batch(self, batch: Batch) -> None:
        predictor, indices, predictions = batch
        run = self._run
        assert run is not None  # set by start() before its worker yields
        if run.layer is None:
            self._cache = (self._key(run.model, predictor.config), predictor)
            run.animals = predictor.max_instances
            run.layer, run.kept = self._predictions_layer(run, predictor.skeleton)
        run.results.extend(zip(indices.tolist(), predictions, strict=True))
        self.progress.value = round(100 * len(run.results) / len(run.frames))
        if not self._stop.is_set():
            self.status.value = f"predicted {len(run.results)} of {len(run.frames)} frames"
        if time.monotonic() - run.drawn_at >= REDRAW_INTERVAL_S:
            self._draw(run)

    def _returned(self, problem: str | None) -> None:
        if problem is not None:
            self.status.value = "failed"
            show_error(problem)

    def _finished(self) -> None:
        run, self._run, self.worker = self._run, None, None
        assert run is not None  # set by start() before its worker runs
        if run.layer is not None:
            self._draw(run)
            if self.track_box.value:
                self._track(run.layer, run.plane_axes, run.animals)
            if self._stop.is_set():
                done = f"{len(run.results)} of {len(run.frames)} frames"
                self.status.value = f"cancelled after {done}"
            if run.crowding.crowded:
                show_warning(run.crowding.message())
        self.start_button.enabled, self.cancel_button.enabled = True, False

    # ------------------------------------------------------------------ the predictions layer
    def _predictions_layer(self, run: _Run, skeleton: sio.Skeleton
                           ) -> tuple[Points, PoseArrays]:  # fmt: skip
        """The layer this model's predictions on this image go to, and what it holds already.

        A layer from an earlier run of the same model is reused (frames predicted again are
        replaced, others kept); otherwise a new one is added with its skeleton edges.
        """
        name = f"{run.image.name} predictions [{run.model.name}]"
        for layer in self._viewer.layers:
            binding = layer.metadata.get(POSE_KEY) if isinstance(layer, Points) else None
            if (layer.name == name and binding is not None and binding.predicted
                    and binding.arrays.skeleton.node_names == skeleton.node_names):  # fmt: skip
                self.predictions_layer, self._origin = layer, (run.image, run.model)
                return layer, binding.merged(layer.data, layer.features)
        binding = self._new_binding(run.image, skeleton)
        self.predictions_layer = add_pose_layers(self._viewer, binding, run.image, name)
        self._origin = (run.image, run.model)
        return self.predictions_layer, binding.arrays

    def _new_binding(self, image: Image, skeleton: sio.Skeleton) -> PoseBinding:
        """An empty predictions binding of its own, on the project's video object if one is open
        (so saved predictions point at the same file), else on the image's source."""
        planes = plane_shape(image)
        found = project_video(self._viewer, image)
        if found is not None:
            video = found[0].labels.videos[found[1]]
        else:
            shape = (int(np.prod(planes)), *image.data.shape[len(planes) :])
            video = sio.Video(filename=str(image.source.path or image.name),
                              backend_metadata={"shape": shape}, open_backend=False)  # fmt: skip
        labels = sio.Labels(videos=[video], skeletons=[skeleton])
        return PoseBinding(labels, PoseArrays.empty(skeleton, labels.videos, []), 0, True, planes)

    def _draw(self, run: _Run) -> None:
        """Show everything predicted so far (and what the layer kept) in the predictions layer."""
        layer, kept = run.layer, run.kept
        assert layer is not None and kept is not None  # set with the run's first batch
        binding: PoseBinding = layer.metadata[POSE_KEY]
        new = predictions_to_arrays(binding.arrays.skeleton, binding.labels.videos,
                                    [(binding.video, f, p) for f, p in run.results])  # fmt: skip
        binding.arrays = replace_frames(kept, new)
        redraw(self._viewer, layer, binding)
        run.drawn_at = time.monotonic()

    def _track(self, layer: Points, plane_axes: str, animals: int) -> None:
        """Give the layer's predictions identities (``nn.tracking``), once a run has ended:
        tracking is sequential over frames, so it runs on everything predicted at once. In a
        stack each depth is tracked along the time axis (``track_planes``). At most
        ``animals`` tracks (per depth): the animals per frame detection kept."""
        binding: PoseBinding = layer.metadata[POSE_KEY]
        config = TrackerConfig(max_tracks=animals)
        planes = {binding.video: (binding.plane_shape, plane_axes)}
        binding.arrays = track_planes(binding.arrays, planes, config)
        if self.refine_box.value and len(binding.plane_shape) <= 1:  # a stack's planes: no
            binding.arrays = refine_tracks(binding.arrays)
        binding.labels.tracks = list(binding.arrays.tracks)  # saving indexes the labels' tracks
        redraw(self._viewer, layer, binding)
        n_tracks = len(binding.arrays.tracks)
        self.status.value = f"{self.status.value}; {n_tracks} tracks"

    def save(self) -> Path | None:
        """Write the predictions layer to the chosen file (``.slp`` unless it says otherwise)."""
        layer, path = self.predictions_layer, _chosen(self.save_path)
        if layer is None or layer not in self._viewer.layers:
            show_error("nothing to save: predict some frames first")
            return None
        if path is None:
            show_error("choose a file to save the predictions to")
            return None
        path = path if path.suffix else path.with_suffix(".slp")
        content = {"metadata": layer.metadata, "features": layer.features}
        try:
            save_labels(layers_to_labels([(layer.data, content)]), path)
        except ValueError as error:  # PoseFileError: the file could not be written
            show_error(str(error))
            return None
        self.status.value = f"saved {path}"
        return path

    # ------------------------------------------------------------------ merging into the project
    def merge(self) -> bool:
        """Move the predictions layer's instances into the open project labelling its video.

        The project's older predictions on the frames predicted are replaced and the others
        kept; user labels are untouched. The project's predictions layer (made if it has none)
        and its trajectories now show them and saving the project writes them, so this dock's
        own layer goes. Layers are rewritten with their data events blocked, so the merge is
        reported to the project's session, which autosaves it and guards it on closing.
        """
        layer, origin = self.predictions_layer, self._origin  # set and cleared together
        if self.worker is not None:
            show_error("wait for the run to end, or cancel it, before merging")
            return False
        if layer is None or origin is None or layer not in self._viewer.layers:
            show_error("nothing to merge: predict some frames first")
            return False
        image, model = origin
        found = project_video(self._viewer, image)
        if found is None:
            show_error(f"no open pose project labels {image.name!r}; open it first or Save "
                       "predictions to a file")  # fmt: skip
            return False
        session, v = found
        predictions = layer.metadata[POSE_KEY].merged(layer.data, layer.features)
        try:
            new = merge_predictions(session, v, predictions, model, like=image)
        except ValueError as error:  # the model's nodes are not the project's
            show_error(str(error))
            return False
        self._remove(layer)
        n_frames = len(np.unique(new.frame))
        self.status.value = (f"merged {len(new)} predicted instances on {n_frames} frames into "
                             f"{self._project_name(session)}")  # fmt: skip
        return True

    @staticmethod
    def _project_name(session: ProjectSession) -> str:
        """The project's file, or the name the other docks list it by when it has none yet."""
        return str(session.path or session.name)

    def _remove(self, layer: Points) -> None:
        """Take this dock's predictions layer and its skeleton edges out of the viewer."""
        binding = layer.metadata[POSE_KEY]
        for edges in [l for l in self._viewer.layers if l.metadata.get(EDGES_KEY) is binding]:
            self._viewer.layers.remove(edges)
        self._viewer.layers.remove(layer)
        self.predictions_layer = self._origin = None

    # ------------------------------------------------------------------ confidence maps
    def show_confidence_maps(self) -> list[Image]:
        """Add lazy confidence-map layers (PAF magnitudes too for bottom-up models) on the image."""
        try:
            folder, image = self._chosen_model_and_image()
            predictor = self._load_predictor(folder, self._config())
        except ValueError as error:
            show_error(str(error))
            return []
        n_axes = image.ndim
        titles = {"confmaps": "confidence maps", "pafs": "PAF magnitude"}
        return [self._viewer.add_image(maps, name=f"{image.name} {titles[kind]} [{folder.name}]",
                                       colormap="inferno", blending="additive",
                                       contrast_limits=(0, 1), scale=image.scale[:n_axes],
                                       translate=image.translate[:n_axes])  # fmt: skip
                for kind, maps in confidence_map_arrays(predictor, image).items()]  # fmt: skip
