"""Training data: the user-labelled frames of a ``Labels``, decoded once, and batches from them.

``LabelledFrames`` holds, for every frame that carries user instances (in any number of
videos), the decoded image and the instances' keypoints. Frames are decoded once, in frame order
per video so the decoder reads forward, and kept in memory as ``uint8``: augmentation then
makes endless different examples from them without touching the video again.

``make_batch`` turns a list of examples into model inputs. An example is either a whole frame
(single-instance, centroid and bottom-up models see the frame, scaled) or one instance of a
frame (the centred-instance model sees a crop centred on that animal's anchor). Both are one
affine warp from the frame (see ``augment``), so scaling, cropping and augmentation cost one
resampling of the output pixels only.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import numpy as np
import sleap_io as sio
import torch

from napari_pose.core.errors import MissingVideoError, VideoFileError
from napari_pose.core.pose_arrays import labels_to_arrays
from napari_pose.core.skeleton import symmetries_from_names
from napari_pose.core.stacks import to_uint8
from napari_pose.core.video import open_video
from napari_pose.nn.augment import (
    AugmentConfig,
    adjust_intensity,
    random_affine,
    swap_symmetric,
    transform_points,
    warp,
)


@attrs.define(eq=False)
class LabelledFrames:
    """User-labelled frames as arrays.

    Attributes:
        skeleton: The skeleton whose node order ``points`` follows.
        videos: The videos ``keys`` index into.
        keys: ``(n_frames, 2)`` (video index, frame index) of each labelled frame.
        images: One ``(H, W, C)`` uint8 image per frame (sizes may differ between videos).
        points: One ``(n_instances, k, 2)`` float32 array per frame, ``(x, y)`` in frame pixels,
            NaN where a node is missing or not visible (occluded nodes are not trained on).
    """

    skeleton: sio.Skeleton
    videos: list[sio.Video]
    keys: np.ndarray
    images: list[np.ndarray]
    points: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.images)

    @property
    def n_nodes(self) -> int:
        return len(self.skeleton.nodes)

    @property
    def channels(self) -> int:
        return self.images[0].shape[-1]

    @property
    def max_instances(self) -> int:
        """Most instances labelled in one frame (the default limit of the predictor)."""
        return max(len(p) for p in self.points)

    @property
    def edges(self) -> np.ndarray:
        """``(n_edges, 2)`` node indices of the skeleton's edges."""
        return np.asarray(self.skeleton.edge_inds, dtype=np.int64).reshape(-1, 2)

    @property
    def symmetric_pairs(self) -> list[tuple[int, int]]:
        """Left/right node pairs (what flip augmentation swaps): those the skeleton declares,
        or, when it declares none, those its node names say (``wingL``/``wingR``;
        ``core.skeleton.symmetries_from_names``). The model package records them."""
        declared = [tuple(sorted(pair)) for pair in self.skeleton.symmetry_inds]
        return declared or symmetries_from_names(self.skeleton.node_names)

    @property
    def mirror(self) -> np.ndarray:
        """``mirror[j]``: the node ``j`` becomes under a left/right flip (itself if unpaired)."""
        mirror = np.arange(self.n_nodes)
        for a, b in self.symmetric_pairs:
            mirror[a], mirror[b] = b, a
        return mirror

    def instances(self) -> np.ndarray:
        """``(n, 2)`` (frame position, instance position) of every instance, frame by frame."""
        counts = np.array([len(p) for p in self.points])
        frame = np.repeat(np.arange(len(counts)), counts)
        start = np.repeat(np.cumsum(counts) - counts, counts)
        return np.stack([frame, np.arange(counts.sum()) - start], axis=1)

    def subset(self, frames: Sequence[int] | np.ndarray) -> LabelledFrames:
        """The frames at positions ``frames`` (a train or validation split)."""
        frames = np.asarray(frames, dtype=np.int64)
        return attrs.evolve(
            self,
            keys=self.keys[frames],
            images=[self.images[i] for i in frames],
            points=[self.points[i] for i in frames],
        )


def load_frames(labels: sio.Labels, frames: range | None = None, *,
                stop: Callable[[int, int], bool] | None = None) -> LabelledFrames:  # fmt: skip
    """Decode every frame with user instances (restricted to frame indices in ``frames``).

    ``stop(decoded, total)`` is asked before each frame; once it answers ``True`` decoding
    ends and only the frames decoded so far are kept. Decoding a large project takes seconds
    to minutes, so training uses it to honour a cancel or its time limit meanwhile.

    Raises ``ValueError`` when nothing is labelled, ``MissingVideoError`` when a video with
    labels cannot be found (naming it), ``VideoFileError`` when a frame cannot be decoded.
    """
    arrays = labels_to_arrays(labels)
    keep = ~arrays.predicted
    if frames is not None:
        keep &= (arrays.frame >= frames.start) & (arrays.frame < frames.stop)
        keep &= (arrays.frame - frames.start) % frames.step == 0
    arrays = arrays.select(keep)
    if len(arrays) == 0:
        where = "" if frames is None else f" in frames {frames.start}-{frames.stop - 1}"
        raise ValueError(f"no user-labelled instances{where} to train on")
    points = np.where(arrays.visible[..., None], arrays.xy, np.nan).astype(np.float32)
    keys = np.stack([arrays.video, arrays.frame], axis=1).astype(np.int64)
    unique, first = np.unique(keys, axis=0, return_index=True)
    bounds = np.append(np.sort(first), len(keys))  # rows are sorted by (video, frame)

    def stopped() -> bool:
        return stop is not None and stop(len(images), len(unique))

    images: list[np.ndarray] = []
    for video_index in np.unique(unique[:, 0]):
        if stopped():
            break
        video = arrays.videos[video_index]
        try:
            reader = open_video(video)
        except (FileNotFoundError, VideoFileError) as error:
            raise MissingVideoError(
                str(video.filename), f"cannot open the video of the labels: {error}"
            ) from error
        with reader:
            for frame in unique[unique[:, 0] == video_index, 1]:
                if stopped():
                    break
                image = to_uint8(reader[int(frame)])
                images.append(image[..., None] if image.ndim == 2 else image)
    # Gray frames of a project that also has colour videos become three equal channels; the
    # others are kept as decoded (copying every frame cost more than decoding it).
    channels = max((image.shape[-1] for image in images), default=1)
    images = [image if image.shape[-1] == channels
              else np.repeat(image, channels // image.shape[-1], axis=-1) for image in images]  # fmt: skip
    n = len(images)
    return LabelledFrames(
        skeleton=arrays.skeleton,
        videos=arrays.videos,
        keys=unique[:n],
        images=images,
        points=[points[a:b] for a, b in zip(bounds[:n], bounds[1 : n + 1], strict=True)],
    )


def split_frames(keys: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split labelled frames ``keys`` ``(n, 2)`` (video, frame), sorted, into (train,
    validation) positions: validation is one time window of consecutive labelled frames.

    Neighbouring frames of a video look alike: validation frames drawn at random between
    training frames score what the model has all but seen (OKS mAP 0.96 on clip.slp where
    frames 1300-1499, never seen, score 0.35). One run of consecutive labelled frames, at a
    seeded place, is a stretch of the recording the model has not seen, like the frames it
    will be used on. At least one frame goes to each side when there are two or more frames;
    with a single labelled frame it is used for both (the loss still falls, the metrics mean
    little).
    """
    n_frames = len(keys)
    positions = np.arange(n_frames)
    if n_frames < 2:
        return positions, positions
    n_val = min(max(1, round(n_frames * val_fraction)), n_frames - 1)
    start = int(np.random.default_rng(seed).integers(0, n_frames - n_val + 1))
    val = positions[start : start + n_val]
    return np.concatenate([positions[:start], positions[start + n_val :]]), val


def describe_window(keys: np.ndarray, videos: Sequence[sio.Video]) -> str:
    """Where validation frames ``keys`` ``(n, 2)`` lie, for the user: ``"frames 1080-1190 of
    clip.mp4"`` (one span per video)."""
    spans = []
    for video in np.unique(keys[:, 0]):
        frames = keys[keys[:, 0] == video, 1]
        filename = videos[video].filename  # a list of files for an image sequence
        name = (
            Path(str(filename[0])).parent.name
            if isinstance(filename, list)
            else Path(str(filename)).name
        )
        spans.append(f"{frames.min()}-{frames.max()} of {name}")
    return "frames " + ", ".join(spans)


def anchor_points(points: np.ndarray, anchor: int | None) -> np.ndarray:
    """``(n, 2)`` anchor of each instance ``(n, k, 2)``: node ``anchor``, or (when ``None`` or
    that node is missing) the centre of the bounding box of the visible nodes."""
    with warnings.catch_warnings():  # an instance without visible nodes has no centre
        warnings.simplefilter("ignore", RuntimeWarning)
        centre = (np.nanmin(points, axis=1) + np.nanmax(points, axis=1)) / 2
    if anchor is None:
        return centre
    node = points[:, anchor]
    return np.where(np.isfinite(node).all(axis=-1, keepdims=True), node, centre)


def crop_matrices(centres: torch.Tensor, scale: float, size: int) -> torch.Tensor:
    """``(n, 3, 3)`` matrices mapping frame pixels to a ``size`` crop, at ``scale``, whose
    centre pixel ``(size - 1) / 2`` is each ``centres`` ``(n, 2)`` point."""
    n = len(centres)
    m = torch.zeros(n, 3, 3)
    m[:, 0, 0] = m[:, 1, 1] = scale
    m[:, :2, 2] = (size - 1) / 2 - scale * centres
    m[:, 2, 2] = 1
    return m


def scale_matrices(n: int, scale: float) -> torch.Tensor:
    """``(n, 3, 3)`` matrices that resize frames by ``scale`` (pixel centres stay on integers)."""
    m = torch.eye(3).repeat(n, 1, 1)
    m[:, 0, 0] = m[:, 1, 1] = scale
    return m


@attrs.frozen
class Batch:
    """Model inputs and the keypoints they show.

    Attributes:
        images: ``(B, C, h, w)`` float32 in ``[0, 1]``.
        points: ``(B, n, k, 2)`` keypoints in input pixels, NaN-padded to the batch's largest
            instance count (for crops, ``n == 1``: only the centred animal).
        anchors: ``(B, n, 2)`` each instance's anchor (the centroid model's target) in input
            pixels, NaN-padded like ``points``.
        matrices: ``(B, 3, 3)`` frame-to-input transforms (their inverses map predictions back).
    """

    images: torch.Tensor
    points: torch.Tensor
    anchors: torch.Tensor
    matrices: torch.Tensor


def _pad_instances(arrays: list[np.ndarray], tail: tuple[int, ...]) -> torch.Tensor:
    n = max((len(a) for a in arrays), default=0)
    out = np.full((len(arrays), n, *tail), np.nan, dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
    return torch.from_numpy(out)


def _warp_grouped(images: list[np.ndarray], matrices: torch.Tensor,
                  size: tuple[int, int]) -> torch.Tensor:  # fmt: skip
    """Warp frames that may differ in size: one ``warp`` call per distinct frame shape."""
    out = torch.empty(len(images), images[0].shape[-1], *size)
    shapes = [image.shape for image in images]
    for shape in set(shapes):
        idx = [i for i, s in enumerate(shapes) if s == shape]
        stack = torch.from_numpy(np.stack([images[i] for i in idx])).permute(0, 3, 1, 2)
        out[idx] = warp(stack.float().div_(255.0), matrices[idx], size)
    return out


def make_batch(
    data: LabelledFrames,
    examples: np.ndarray,
    *,
    size: tuple[int, int],
    scale: float,
    anchor: int | None = None,
    crop: bool = False,
    augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> Batch:
    """Inputs of ``size`` ``(h, w)`` for ``examples``.

    Whole frames (``crop=False``): ``examples`` are frame positions, resized by ``scale``.
    Crops: ``examples`` are rows of ``data.instances()``; each crop is ``size`` at ``scale``,
    centred on that instance's anchor, and holds only that instance's keypoints (the other
    animals in view are background to the centred-instance model). ``anchor`` is the anchor
    node (``None``: bounding-box centre). With ``augment`` (and a seeded ``generator``) each
    example gets a random warp and intensity change on top.
    """
    frames = examples[:, 0] if crop else examples
    images = [data.images[i] for i in frames]
    own = [data.points[f][[j]] for f, j in examples] if crop else [data.points[i] for i in frames]
    anchors = [anchor_points(p, anchor) for p in own]
    if crop:
        centres = torch.from_numpy(np.concatenate(anchors)).float()
        matrices = crop_matrices(centres, scale, size[0])
    else:
        matrices = scale_matrices(len(frames), scale)
    points = _pad_instances(own, (data.n_nodes, 2))
    anchors_t = _pad_instances(anchors, (2,))
    if augment is not None:
        mirror = torch.from_numpy(data.mirror)
        can_flip = bool((mirror != torch.arange(len(mirror))).any())
        extra, flipped = random_affine(len(frames), size, augment, generator, can_flip)
        matrices = extra @ matrices
        points = swap_symmetric(points, flipped, mirror)
    images_t = _warp_grouped(images, matrices, size)
    if augment is not None:
        images_t = adjust_intensity(images_t, augment, generator)
    return Batch(
        images_t,
        transform_points(points, matrices),
        transform_points(anchors_t, matrices),
        matrices,
    )
