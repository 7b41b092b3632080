"""The *Train model* dock widget: pick labels and settings, watch training, read the result.

Thin by design: ``nn.train.train`` does all the work and is a generator of ``Progress``, so the
widget only runs it in a ``thread_worker`` (napari stays responsive) and shows what it yields.
The CLI drives the same generator, so both give identical models. *Retrain and predict* runs
one round of the labelling loop the same way: ``napari.rounds.run_round`` is the generator,
and the dock merges the predictions and suggestions it yields into the project. A run or round
that finishes with a complete package makes it the project's model
(``ProjectSession.set_model``), which the other docks follow.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from pathlib import Path

import napari
import napari.viewer
import sleap_io as sio
from magicgui.types import FileDialogMode
from magicgui.widgets import (
    ComboBox,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
    SpinBox,
)  # fmt: skip
from magicgui.widgets.bases import CategoricalWidget
from napari.qt.threading import GeneratorWorker, thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QPainter, QPaintEvent, QPalette, QPen, QPolygonF
from qtpy.QtWidgets import QWidget

from napari_pose.core.io import load_labels
from napari_pose.napari import rounds
from napari_pose.napari._qt.layout import ScrollingDock
from napari_pose.napari.convert import POSE_KEY
from napari_pose.napari.labelling import PlaneFrames, image_of
from napari_pose.napari.predictions import merge_predictions
from napari_pose.napari.session import ProjectSession, projects
from napari_pose.nn.train import Progress, TrainConfig, summarise, train

#: ``auto`` lets ``train`` choose from the labels (one animal per frame: single instance).
PIPELINE_CHOICES = ["auto", "single_instance", "topdown", "bottomup"]
#: Steps between plot redraws: repainting on every step would cost more than a small step.
REDRAW_EVERY = 10
#: Minutes of training a new user gets by default: a budget they can plan around, where a
#: count of epochs takes seconds on one project and hours on another.
DEFAULT_MINUTES = 15


class LossPlot(QWidget):
    """Training loss per step (line) and validation loss per epoch (dots), log scale.

    Drawn with ``QPainter`` because two curves do not justify a plotting dependency; the data
    are plain lists so they can be checked without looking at pixels.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setMinimumHeight(150)
        self.train_loss: list[float] = []
        self.val_loss: list[float] = []
        self.val_step: list[int] = []  # how many training steps preceded each validation
        self.val_error: list[float] = []  # median pixel error of each validation
        self.val_map: list[float] = []  # OKS mAP of each validation
        self.val_window = ""  # which labelled frames validation scores (kept out of training)

    def clear(self) -> None:
        for values in (self.train_loss, self.val_loss, self.val_step, self.val_error,
                       self.val_map):  # fmt: skip
            values.clear()
        self.val_window = ""
        self.update()

    def add_step(self, loss: float) -> None:
        self.train_loss.append(loss)
        if len(self.train_loss) % REDRAW_EVERY == 0:
            self.update()

    def add_epoch(self, validation: dict) -> None:
        """One validation's figures (``train.Progress.validation`` of an epoch)."""
        self.val_loss.append(validation["val_loss"])
        self.val_step.append(len(self.train_loss))
        self.val_error.append(validation.get("dist_median_px", math.nan))
        self.val_map.append(validation.get("oks_map", math.nan))
        self.val_window = validation.get("window", "")
        self.update()

    def headline(self) -> str:
        """The latest validation's figures and where its frames lie, above the curves."""
        error = self.val_error[-1] if self.val_error else math.nan
        oks = self.val_map[-1] if self.val_map else math.nan
        shown = (f"median error {error:.2f} px, OKS mAP {oks:.2f}" if math.isfinite(error)
                 else "-")  # fmt: skip
        where = f" ({self.val_window})" if self.val_window else ""
        return f"validation{where}: {shown}"

    def paintEvent(self, event: QPaintEvent | None) -> None:  # noqa: N802 (Qt's name)
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        text = self.palette().color(QPalette.ColorRole.WindowText)
        painter.setPen(text)
        area = QRectF(self.rect()).adjusted(44, 20, -8, -8)
        painter.drawRect(area)
        painter.drawText(4, 14, self.headline())
        values = self.train_loss + self.val_loss
        logs = [math.log10(v) for v in values if v > 0 and math.isfinite(v)]
        if not logs:
            return
        low, high = min(logs), max(logs)
        high = max(high, low + 1e-3)
        n = max(len(self.train_loss) - 1, 1)

        def point(index: float, value: float) -> QPointF:
            y = (math.log10(value) - low) / (high - low)
            x = area.left() + area.width() * index / n
            return QPointF(x, area.bottom() - area.height() * y)

        painter.drawText(2, int(area.top()) + 10, f"{10**high:.0e}")
        painter.drawText(2, int(area.bottom()), f"{10**low:.0e}")
        painter.setPen(QPen(QColor("#4c9be8"), 1))
        painter.drawPolyline(QPolygonF([point(i, v) for i, v in enumerate(self.train_loss)
                                        if v > 0 and math.isfinite(v)]))  # fmt: skip
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor("#f0a030"))
        for step, value in zip(self.val_step, self.val_loss, strict=True):
            if value > 0 and math.isfinite(value):
                painter.drawEllipse(point(max(step - 1, 0), value), 3.0, 3.0)


@thread_worker
def _run_training(source: sio.Labels | Path, out: Path, config: TrainConfig,
                  stop: threading.Event, labels_path: str | None,
                  start_from: Path | None = None,
                  ) -> Generator[Progress, None, str | None]:  # fmt: skip
    """Train in a worker thread; return the message of an input problem the user can fix.

    Problems with the input (nothing labelled, a missing video, an unreadable file, an absent
    device, a model to continue from that does not fit the labels) are all ``ValueError``s or
    ``OSError``s and are returned rather than raised, so the user sees one plain message
    instead of a traceback; anything else is a bug and is raised.
    """
    try:
        labels = source if isinstance(source, sio.Labels) else load_labels(source)
        yield from train(labels, out, config, start_from=start_from, stop=stop,
                         labels_path=labels_path)  # fmt: skip
    except (ValueError, OSError) as error:
        return str(error)
    return None


@thread_worker
def _run_round(steps: Generator[rounds.RoundProgress, None, rounds.RoundResult],
               ) -> Generator[rounds.RoundProgress, None, rounds.RoundResult | str]:  # fmt: skip
    """Run a round in a worker thread; problems with the input are returned as one message,
    as ``_run_training`` does."""
    try:
        result = yield from steps
    except (ValueError, OSError) as error:
        return str(error)
    return result


class TrainWidget(ScrollingDock):
    """Train a pose model on an open project (or a labels file) while napari stays usable."""

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        super().__init__()
        self._viewer = viewer
        self._projects = projects(viewer)
        self.project = ComboBox(label="project", choices=self._project_choices)
        self.labels_file = FileEdit(label="or labels file", mode=FileDialogMode.EXISTING_FILE,
                                    filter="*.slp *.h5 *.csv *.yaml")  # fmt: skip
        self.pipeline = ComboBox(label="pipeline", choices=PIPELINE_CHOICES)
        self.preset = ComboBox(label="model size", choices=["small", "medium", "large"])
        self.time_limit = FloatSpinBox(label="time limit (min, 0: none)", value=DEFAULT_MINUTES,
                                       min=0, max=100_000)  # fmt: skip
        self.epochs = SpinBox(label="at most epochs", value=200, min=1, max=100_000)
        self.device = ComboBox(label="device", choices=["auto", "cpu", "cuda", "mps"])
        self.output = FileEdit(label="output folder", mode=FileDialogMode.EXISTING_DIRECTORY)
        self.start_from = FileEdit(label="continue from model",
                                   mode=FileDialogMode.EXISTING_DIRECTORY)  # fmt: skip
        self.start_from.tooltip = (
            "A model folder to continue training on the current labels: every stage starts "
            "from its best weights, with its pipeline, model and input sizes (its nodes must "
            "be the project's). Empty: train from scratch."
        )
        self.start_button = PushButton(label="", text="Start")
        self.round_button = PushButton(label="", text="Retrain and predict")
        self.round_button.tooltip = (
            "One round of the labelling loop: continue training the latest model (the one last "
            "trained or chosen here; none: from scratch) on the project's labels as they are "
            "now, into a new folder <model>-round-N beside it; predict the suggested frames "
            "with it and merge them into the predictions; add the frames it is least sure of "
            "to the suggestions. Labelling meanwhile is safe: your instances are never touched."
        )
        self.cancel_button = PushButton(label="", text="Cancel", enabled=False)
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(label="status", value="")
        self.results = Label(label="results", value="")
        self.predict_button = PushButton(label="", text="Predict with this model", enabled=False)
        self.body.extend([self.project, self.labels_file, self.pipeline, self.preset, self.time_limit,
                     self.epochs, self.device, self.start_from, self.output, self.start_button,
                     self.round_button, self.cancel_button, self.progress, self.status, self.results,
                     self.predict_button])  # fmt: skip
        for text in (self.status, self.results):
            text.native.setWordWrap(True)  # a long message wraps rather than widens the dock
        self.plot = LossPlot()
        self.body.native.layout().addWidget(self.plot)
        self.worker: GeneratorWorker | None = None  # the running training
        self._stop = threading.Event()
        self._out: Path | None = None
        self._latest: Path | None = None  # the model last trained or chosen: a round's start
        self._round: tuple[ProjectSession, int] | None = None  # the running round's target
        self._trained_for: ProjectSession | None = None  # the project the running run trains
        self.start_button.clicked.connect(self.start)
        self.round_button.clicked.connect(self.retrain_and_predict)
        self.start_from.changed.connect(self._chose_start)
        self.cancel_button.clicked.connect(self.cancel)
        self.predict_button.clicked.connect(self.open_predict)
        viewer.layers.events.inserted.connect(self.project.reset_choices)
        viewer.layers.events.removed.connect(self.project.reset_choices)

    def _project_choices(self, _widget: CategoricalWidget | None = None) -> list[str]:
        return list(self._projects.listed())

    @staticmethod
    def _chosen(edit: FileEdit) -> Path | None:
        """The path in a file field, or ``None`` while it is empty (magicgui shows ``.``)."""
        value = edit.value  # a Path: these fields choose one file or folder, never several
        return value if isinstance(value, Path) and str(value) not in ("", ".") else None

    def start(self) -> None:
        """Start training with the chosen labels and settings (what the Start button does)."""
        out, labels_file = self._chosen(self.output), self._chosen(self.labels_file)
        project = self._projects.listed().get(self.project.value)
        if out is None:
            show_error("choose an output folder for the model")
            return
        source: Path | sio.Labels
        labels_path: str | None
        trained_for = project
        if labels_file is not None:
            source, labels_path = labels_file, str(labels_file)
            # A labels file open as a project is that project's: its model is the new one.
            trained_for = next((s for s in self._projects.sessions if s.owns(labels_file)), None)
        elif project is not None:  # the layers' current state, unsaved edits included
            source = project.current()
            labels_path = None if project.path is None else str(project.path)
        else:
            show_error("open a pose project or choose a labels file to train on")
            return
        self._begin(out)
        self._trained_for = trained_for
        self.worker = _run_training(source, out, self._config(), self._stop, labels_path,
                                    self._chosen(self.start_from))  # fmt: skip
        self.worker.yielded.connect(self._show)
        self.worker.returned.connect(self._returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def _config(self) -> TrainConfig:
        return TrainConfig(
            pipeline=None if self.pipeline.value == "auto" else self.pipeline.value,
            preset=self.preset.value,
            epochs=int(self.epochs.value),
            time_limit=float(self.time_limit.value) or None,
            device=self.device.value,
        )

    def _begin(self, out: Path) -> None:
        """The dock's state while a run (training or a round) writing ``out`` goes on."""
        self._stop = threading.Event()
        self.predict_button.enabled = False
        self.plot.clear()
        self.progress.value, self.status.value, self.results.value = 0, "starting", ""
        self.progress.label = "progress"
        self.start_button.enabled, self.round_button.enabled = False, False
        self.cancel_button.enabled = True
        self._out = out

    def _chose_start(self, _value=None) -> None:
        chosen = self._chosen(self.start_from)
        if chosen is not None:
            self._latest = chosen

    def latest_model(self) -> Path | None:
        """The model a round continues from: the one last trained or chosen in the dock."""
        return self._latest if self._latest is not None else self._chosen(self.start_from)

    def retrain_and_predict(self) -> None:
        """Run one round of the labelling loop on the chosen project (``napari.rounds``): what
        the *Retrain and predict* button does."""
        session = self._projects.listed().get(self.project.value)
        if session is None or not session.user_layers():
            show_error("open a pose project: a round trains on its labels and writes into it")
            return
        latest = self.latest_model()
        base = latest or self._chosen(self.output)
        if base is None and session.path is not None:
            base = session.path.parent / "models" / "model"
        if base is None:
            show_error("choose an output folder: the round's model goes beside it")
            return
        layer = session.user_layers()[0]
        binding = layer.metadata[POSE_KEY]
        image = image_of(self._viewer, layer)
        if image is None:
            show_error("no image layer of this project to predict frames from")
            return
        out = rounds.round_folder(base)
        snapshot = session.current()  # what the round trains on: edits meanwhile wait
        self._begin(out)
        steps = rounds.run_round(
            snapshot, PlaneFrames(image, binding.plane_shape), binding.video, out, self._config(),
            start_from=latest, stop=self._stop,
            labels_path=None if session.path is None else str(session.path),
        )  # fmt: skip
        self._round = (session, binding.video)
        self.worker = _run_round(steps)
        self.worker.yielded.connect(self._show_round)
        self.worker.returned.connect(self._round_returned)
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def open_predict(self):
        """Dock the *Predict* widget with the model just trained chosen in it."""
        _, widget = self._viewer.window.add_plugin_dock_widget("napari-pose", "Predict")
        widget.model.value = self._out
        return widget

    def cancel(self) -> None:
        """Stop within about a step; the best weights so far are kept and resumable."""
        self._stop.set()
        self.status.value = "cancelling"

    def _show(self, progress: Progress) -> None:
        self.progress.value = max(self.progress.value, round(100 * progress.fraction))
        self.status.value = progress.message
        if progress.stage in ("done", "cancelled", "incomplete"):
            self.results.value = self._summary(progress)
            self.predict_button.enabled = progress.stage == "done"
            if progress.stage == "done" and self._out is not None:
                self._latest = self._out
                self._new_model(self._trained_for, self._out)
        elif progress.validation is not None:
            self.plot.add_epoch(progress.validation)
        elif progress.loss is not None:
            self.plot.add_step(progress.loss)

    def _show_round(self, progress: rounds.RoundProgress) -> None:
        """A round's progress: one bar named by the phase; what it found goes into the project
        it started on (if that is still open), as it arrives."""
        self.progress.label = progress.phase
        self.progress.value = max(self.progress.value, round(100 * progress.fraction))
        self.status.value = progress.message
        if progress.train is not None and progress.train.stage not in ("done", "cancelled",
                                                                       "incomplete"):  # fmt: skip
            if progress.train.validation is not None:
                self.plot.add_epoch(progress.train.validation)
            elif progress.train.loss is not None:
                self.plot.add_step(progress.train.loss)
        if self._round is None or not self._round[0].is_open:
            return
        session, video = self._round
        if progress.predictions is not None:
            try:
                n = len(merge_predictions(session, video, progress.predictions, self._out or "",
                                          skip_labelled=True))  # fmt: skip
            except ValueError as error:
                show_error(str(error))
                return
            self.results.value = f"{n} predicted instances merged"
        if progress.suggestions is not None:
            added = rounds.add_suggestions(session, video, progress.suggestions)
            self.results.value = f"{self.results.value}; {added} new suggestions"

    def _round_returned(self, result: rounds.RoundResult | str) -> None:
        if isinstance(result, str):
            self.status.value = "failed"
            show_error(result)
            return
        if result.status == "done":
            self._latest = self._out = result.model
            self._new_model(self._round[0] if self._round else None, result.model)
            self.predict_button.enabled = True
            self.results.value = f"{self.results.value}\nmodel: {result.model}"
        else:
            self.results.value = (f"{result.status}: the previous model is unchanged; "
                                  f"the unfinished one is in {result.model}")  # fmt: skip

    @staticmethod
    def _new_model(session: ProjectSession | None, model: Path) -> None:
        """A complete package was trained for ``session``: make it the project's model (if the
        project is still open), which the *Label poses* and *Predict* docks follow."""
        if session is not None and session.is_open:
            session.set_model(model)

    def _summary(self, progress: Progress) -> str:
        """The outcome for the results field: the validation figures (or, when the model found
        no animal, what to do), or where to resume a run that did not finish."""
        if progress.stage == "done":
            validation = progress.validation
            assert validation is not None  # a finished run always reports its figures
            return f"{summarise(validation)}\nmodel: {self._out}"
        return (f"{progress.stage}: resumable model in {self._out}\n"
                f"resume it with: napari-pose train LABELS -o {self._out} --resume")  # fmt: skip

    def _returned(self, problem: str | None) -> None:
        if problem is not None:
            self.status.value = "failed"
            show_error(problem)

    def _finished(self) -> None:
        self.worker, self._round, self._trained_for = None, None, None
        self.start_button.enabled, self.round_button.enabled = True, True
        self.cancel_button.enabled = False
        self.plot.update()
