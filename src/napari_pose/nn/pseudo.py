"""Pseudo-labels: the unlabelled frames of the labelled videos, posed by a trained pipeline.

A video holds about ten times more frames than anyone labels. Self-training (and lightning-pose's
semi-supervised losses) use them: a model trained on the labels poses the other frames, and
those of its poses it is sure of are trained on as if they were labels. What "sure" means
decides whether that helps or teaches the model its own mistakes; the rules here:

- **Which frames**: frames of the labelled videos that this run does not train or validate on,
  evenly spread over each video (``spread``), and none within the validation window's span
  widened by the labelling stride (``candidate_frames``): a pseudo-label of a frame next to a
  validation frame would show the model what validation scores, and validation would overstate
  it. With ``TrainConfig.frames`` given, only frames of its span are used, and frames its step
  skips count as unlabelled (the benchmarks' setting: labels on every tenth frame).
- **Two opinions**: every frame is posed as it is and turned by 180 degrees
  (``np.rot90(frame, 2)``), and the second pose is mapped back (``rotate_back``). Training
  rotated frames by up to 180 degrees, so both are views the model knows, and a half turn needs
  no left/right node swap (a mirror image would). A node the two agree on to within
  ``AGREE_PX`` frame pixels, with both peaks at least ``MIN_SCORE``, is kept at the mean of the
  two (``agree``); an error that depends on how the animal lies in the frame does not survive
  the turn.
- **Instances**: an instance (the two poses matched by their mean node distance) is kept when
  at least ``MIN_NODES`` of the nodes the labels usually show agree, its anchor node included
  (the crop and the centroid target then sit where a label's would). Its other nodes are NaN,
  as a hidden node of a label is.
- **Frames for whole-frame models** (centroid, single-instance, bottom-up): a frame is only
  used when it has as many kept instances as the labels' usual count and neither pose found an
  animal that was not kept. A whole-frame model is taught that everything without a label is
  background, so a frame with a missed animal would teach it to miss that animal. Crop models
  (centred instance) see one animal and use every kept instance.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

import attrs
import numpy as np
import sleap_io as sio
from scipy.optimize import linear_sum_assignment

from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.core.stacks import to_uint8
from napari_pose.core.video import open_video
from napari_pose.nn.data import LabelledFrames
from napari_pose.nn.predict import FramePrediction

#: Most distance (frame pixels) between a node's two predictions for it to be kept. Two pixels
#: is about a label's own error on clip.slp's 1024 px frames (labellers differ by 1-3 px), so a
#: kept node is about as good as a label; more and the model would be trained on its own errors.
AGREE_PX = 2.0
#: Least confidence-map peak of both predictions of a kept node: half of a perfect peak (1).
#: The predictor reports nodes down to 0.2; peaks that low are often a wrong body part.
MIN_SCORE = 0.5
#: Share of the nodes a labelled instance usually shows that must be kept for the instance to
#: be kept: a few disagreeing nodes (a leg tip, a wing under another animal) are left out, but
#: an instance with fewer is a doubtful animal, and its left-out nodes would be trained on as
#: hidden.
MIN_NODES = 0.7


def labelled_keys(labels: sio.Labels, frames: range | None = None) -> np.ndarray:
    """``(n, 2)`` (video, frame) of the frames with user instances that a run with
    ``TrainConfig.frames`` = ``frames`` trains on (those ``data.load_frames`` decodes when
    given time), sorted."""
    arrays = labels_to_arrays(labels)
    keep = ~arrays.predicted
    if frames is not None:
        keep &= np.isin(arrays.frame, np.asarray(frames))
    keys = np.stack([arrays.video[keep], arrays.frame[keep]], axis=1).astype(np.int64)
    return np.unique(keys.reshape(-1, 2), axis=0)


def labelling_stride(keys: np.ndarray) -> int:
    """The usual gap between consecutive labelled frames ``keys`` ``(n, 2)`` (sorted) of one
    video (1 when every frame is labelled or no video has two)."""
    same_video = np.diff(keys[:, 0]) == 0
    gaps = np.diff(keys[:, 1])[same_video]
    return max(int(np.median(gaps)), 1) if len(gaps) else 1


def candidate_frames(lengths: Sequence[int], videos: np.ndarray, labelled: np.ndarray,
                     validation: np.ndarray, margin: int,
                     frames: range | None = None) -> np.ndarray:  # fmt: skip
    """``(m, 2)`` (video, frame) of every frame that may be pseudo-labelled, sorted.

    Args:
        lengths: Frames in each video of the project.
        videos: The videos to look in (those with labels).
        labelled: ``(n, 2)`` frames with labels this run uses: never pseudo-labelled.
        validation: ``(v, 2)`` the validation frames: for each video, frames from the first
            one minus ``margin`` to the last one plus ``margin`` are left out.
        margin: How far around the validation window to keep out (the labelling stride: the
            nearest frames a labeller would have chosen).
        frames: Only frames of this span (``start`` to ``stop``; its step does not matter).
    """
    parts = []
    for video in np.unique(np.asarray(videos)):
        start, stop = (0, lengths[video]) if frames is None else (frames.start, frames.stop)
        index = np.arange(max(start, 0), min(stop, lengths[video]))
        index = index[~np.isin(index, labelled[labelled[:, 0] == video, 1])]
        window = validation[validation[:, 0] == video, 1]
        if len(window):
            index = index[(index < window.min() - margin) | (index > window.max() + margin)]
        parts.append(np.stack([np.full(len(index), video), index], axis=1))
    return np.concatenate(parts).astype(np.int64) if parts else np.empty((0, 2), np.int64)


def spread(n: int, count: int) -> np.ndarray:
    """Positions of ``count`` of ``n`` sorted candidates, evenly spread over them, in order:
    on one video, about one frame every ``n / count``, the middle one of each run."""
    count = min(max(count, 0), n)
    return ((np.arange(count) + 0.5) * n / max(count, 1)).astype(np.int64)


def read_frames(videos: Sequence[sio.Video], keys: np.ndarray,
                channels: int) -> Generator[np.ndarray, None, None]:  # fmt: skip
    """The frames ``keys`` ``(m, 2)`` (sorted) as ``(H, W, channels)`` uint8, one at a time.

    Each video is opened once and read in frame order, so the decoder goes forward from one
    frame to the next instead of seeking back to a keyframe for each. A generator: the caller
    reads as many as it has time for (closing it closes the video). Gray frames of a colour
    project become three equal channels, as ``data.load_frames`` makes them.
    """
    for video in np.unique(keys[:, 0]):
        with open_video(videos[video]) as reader:
            for frame in keys[keys[:, 0] == video, 1]:
                image = to_uint8(reader[int(frame)])
                image = image[..., None] if image.ndim == 2 else image
                yield image if image.shape[-1] == channels else np.repeat(image, channels, -1)


def video_lengths(videos: Sequence[sio.Video], which: np.ndarray) -> list[int]:
    """Frames in each of ``videos`` (0 for those not in ``which``, which are not opened)."""
    lengths = [0] * len(videos)
    for index in np.unique(np.asarray(which)):
        with open_video(videos[index]) as reader:
            lengths[index] = reader.n_frames
    return lengths


def rotate_back(prediction: FramePrediction, height: int, width: int) -> FramePrediction:
    """A prediction made on a frame turned by 180 degrees (``np.rot90(frame, 2)``, ``height``
    x ``width``), in the unturned frame's pixels: ``x -> W - 1 - x``, ``y -> H - 1 - y`` (pixel
    centres at integers). A half turn keeps left and right, so nodes keep their names."""
    points = np.array([width - 1, height - 1], np.float32) - prediction.points
    return attrs.evolve(prediction, points=points.astype(prediction.points.dtype))


def predict_both_ways(images: Sequence[np.ndarray],
                      predict: Callable[[list[np.ndarray]], list[FramePrediction]],
                      ) -> list[tuple[FramePrediction, FramePrediction]]:  # fmt: skip
    """Each image's prediction as it is and turned by 180 degrees (mapped back), from one call
    of ``predict`` (images in, one prediction per image out, in order)."""
    turned = [np.rot90(image, 2) for image in images]
    found = predict([*images, *turned])
    return [(found[i], rotate_back(found[len(images) + i], *image.shape[:2]))
            for i, image in enumerate(images)]  # fmt: skip


@attrs.frozen
class Agreement:
    """What two predictions of one frame agree on.

    Attributes:
        points: ``(n, k, 2)`` kept instances, the mean of both predictions, NaN where a node
            was left out.
        complete: Whether whole-frame models may use the frame: ``max_instances`` instances
            kept and no detection of either prediction left out.
    """

    points: np.ndarray
    complete: bool


def agree(first: FramePrediction, second: FramePrediction, *, min_nodes: int,
          max_instances: int, anchor: int | None = None, agree_px: float = AGREE_PX,
          min_score: float = MIN_SCORE) -> Agreement:  # fmt: skip
    """Keep what ``first`` and ``second`` (two predictions of one frame) agree on.

    Instances are matched one to one (Hungarian) by the mean distance of the nodes both found;
    a pair's node is kept when the two lie within ``agree_px`` and both peaks are at least
    ``min_score``; a pair is kept with at least ``min_nodes`` kept nodes, ``anchor`` (when
    given) among them. See the module notes for why.
    """
    k = first.points.shape[1]
    distance = np.linalg.norm(first.points[:, None] - second.points[None], axis=-1)  # (n, m, k)
    common = np.isfinite(distance)
    mean = np.where(common, distance, 0).sum(-1) / np.maximum(common.sum(-1), 1)
    rows, cols = linear_sum_assignment(np.where(common.any(-1), mean, 1e9))
    close = distance[rows, cols] <= agree_px  # NaN (a node one of them missed) is not close
    sure = (first.point_scores[rows] >= min_score) & (second.point_scores[cols] >= min_score)
    kept = close & sure
    keep = kept.sum(-1) >= min_nodes
    if anchor is not None:
        keep &= kept[:, anchor]
    mean_points = (first.points[rows] + second.points[cols]) / 2
    points = np.where(kept[..., None], mean_points, np.nan)[keep].astype(np.float32)
    found = (len(first.points), len(second.points))
    complete = len(points) == max_instances and found == (max_instances, max_instances)
    return Agreement(points.reshape(-1, k, 2), bool(complete))


def min_nodes(points: Sequence[np.ndarray], share: float = MIN_NODES) -> int:
    """Nodes an instance must keep: ``share`` of the visible nodes of the median labelled
    instance in ``points`` (per-frame ``(n, k, 2)``), at least one. Skeletons with nodes that
    are usually hidden are then not held to nodes nobody can see."""
    visible = np.isfinite(np.concatenate(points)).all(-1).sum(-1)
    return max(1, math.ceil(share * float(np.median(visible)))) if len(visible) else 1


@attrs.frozen
class PseudoLabels:
    """Kept pseudo-labels of a run.

    Attributes:
        frames: Every frame with a kept instance: images and points (NaN = left out).
        complete: ``(n,)`` whether whole-frame models may use each frame (``Agreement``).
        looked_at: Frames predicted to find them.
    """

    frames: LabelledFrames
    complete: np.ndarray
    looked_at: int

    @property
    def n_instances(self) -> int:
        return sum(len(p) for p in self.frames.points)


def collect(template: LabelledFrames, keys: np.ndarray, images: Sequence[np.ndarray],
            agreements: Sequence[Agreement]) -> PseudoLabels:  # fmt: skip
    """The frames ``keys`` ``(m, 2)`` with ``images`` that kept an instance, as pseudo-labels
    with ``template``'s skeleton and videos."""
    where = [i for i, agreement in enumerate(agreements) if len(agreement.points)]
    frames = attrs.evolve(
        template,
        keys=np.asarray(keys, np.int64).reshape(-1, 2)[where],
        images=[images[i] for i in where],
        points=[agreements[i].points for i in where],
        # Nodes left out are unknown, not hidden: the loss skips them (``Batch.known``).
        unknown=[np.isnan(agreements[i].points).any(axis=-1) for i in where],
    )
    complete = np.array([agreements[i].complete for i in where], dtype=np.bool_)
    return PseudoLabels(frames, complete, len(agreements))


def frames_to_predict(template: LabelledFrames, images: Sequence[np.ndarray]) -> LabelledFrames:
    """``images`` as frames without labels (what ``train.predict_pipeline`` takes)."""
    empty = np.empty((0, template.n_nodes, 2), np.float32)
    return attrs.evolve(template, keys=np.zeros((len(images), 2), np.int64),
                        images=list(images), points=[empty] * len(images))  # fmt: skip


def training_frames(labelled: LabelledFrames, pseudo: PseudoLabels,
                    crops: bool) -> LabelledFrames:  # fmt: skip
    """``labelled`` and the pseudo-labelled frames a stage may use: all of them for a crop
    model, the complete ones for a whole-frame model."""
    extra = pseudo.frames if crops else pseudo.frames.subset(np.flatnonzero(pseudo.complete))
    return attrs.evolve(
        labelled,
        keys=np.concatenate([labelled.keys, extra.keys]),
        images=[*labelled.images, *extra.images],
        points=[*labelled.points, *extra.points],
        unknown=[*_unknown(labelled), *_unknown(extra)],
    )


def _unknown(frames: LabelledFrames) -> list[np.ndarray]:
    """``frames.unknown``, with all-known arrays where it is ``None`` (user labels)."""
    if frames.unknown is not None:
        return frames.unknown
    return [np.zeros(points.shape[:2], np.bool_) for points in frames.points]
