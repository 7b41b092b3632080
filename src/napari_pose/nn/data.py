"""Training data: the user-labelled frames of a ``Labels``, decoded once, and batches from them.

``LabelledFrames`` holds, for every frame that carries user instances (in any number of
videos), the decoded image and the instances' keypoints. Frames are decoded once, in frame order
per video so the decoder reads forward, and kept in memory as ``uint8``: augmentation then
makes endless different examples from them without touching the video again.

``make_batch`` turns a list of examples into model inputs. An example is either a whole frame
(single-instance, centroid and bottom-up models see the frame, scaled) or one instance of a
frame (the centred-instance model sees a crop centred on that animal's anchor). Both are one
affine warp from the frame (see ``augment``), so scaling, cropping and augmentation cost one
resampling of the output pixels only. Crops may also get a second animal pasted against the
centred one (``paste_encounters``), the situation the centred-instance model gets wrong.
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
from napari_pose.core.stacks import to_uint8
from napari_pose.core.video import open_video
from napari_pose.nn.augment import (
    ENCOUNTER_DISTANCE,
    ENCOUNTER_RADIUS,
    ENCOUNTER_SOFT_EDGE,
    AugmentConfig,
    adjust_intensity,
    animal_size,
    encounter_matrices,
    mirror_permutation,
    random_affine,
    skeleton_mask,
    swap_symmetric,
    transform_points,
    warp,
)
from napari_pose.nn.targets import grid


@attrs.define(eq=False)
class LabelledFrames:
    """User-labelled frames as arrays.

    Attributes:
        skeleton: The skeleton whose node order ``points`` follows.
        videos: The videos ``keys`` index into.
        keys: ``(n_frames, 2)`` (video index, frame index) of each labelled frame.
        images: One ``(H, W, C)`` uint8 image per frame (sizes may differ between videos).
        points: One ``(n_instances, k, 2)`` float32 array per frame, ``(x, y)`` in frame pixels,
            NaN where a node is missing or not visible (the model learns to draw nothing there).
        unknown: ``None`` (every node is known), or one ``(n_instances, k)`` bool array per
            frame: nodes whose place nobody knows (pseudo-labels leave out the nodes two
            predictions disagree on). They are left out of the loss, neither present nor
            absent: training them as not visible would teach the model to miss them.
    """

    skeleton: sio.Skeleton
    videos: list[sio.Video]
    keys: np.ndarray
    images: list[np.ndarray]
    points: list[np.ndarray]
    unknown: list[np.ndarray] | None = None

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
        """Left/right node pairs the skeleton declares (what flip augmentation swaps).

        Only declared ones: pairs read from node names (``wingL``/``wingR``) turned flips on
        for clip.slp and cost half its accuracy on unseen frames (OKS mAP 0.38 -> 0.21,
        docs/benchmarks.md): a model that never sees a mirrored fly tells its wings apart by
        chirality, one that does must guess from the body's outline.
        """
        return [tuple(sorted(pair)) for pair in self.skeleton.symmetry_inds]

    @property
    def mirror(self) -> np.ndarray:
        """``mirror[j]``: the node ``j`` becomes under a left/right flip (itself if unpaired)."""
        return mirror_permutation(self.n_nodes, self.symmetric_pairs)

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
            unknown=None if self.unknown is None else [self.unknown[i] for i in frames],
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
        known: ``None`` (all known), or ``(B, k)`` 1.0 where the node's maps are trained and
            0.0 where an instance in the example does not know the node
            (``LabelledFrames.unknown``).
    """

    images: torch.Tensor
    points: torch.Tensor
    anchors: torch.Tensor
    matrices: torch.Tensor
    known: torch.Tensor | None = None


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
    example gets a random warp and intensity change on top; a crop, with probability
    ``augment.towards_neighbour``, a centre moved towards the nearest other animal
    (``_towards_neighbours``), and with probability ``augment.encounter`` a second animal
    pasted against the centred one (``paste_encounters``) before the intensity change.
    """
    frames = examples[:, 0] if crop else examples
    images = [data.images[i] for i in frames]
    own = [data.points[f][[j]] for f, j in examples] if crop else [data.points[i] for i in frames]
    anchors = [anchor_points(p, anchor) for p in own]
    if crop:
        centres = np.concatenate(anchors)
        if augment is not None and augment.towards_neighbour > 0:
            centres = centres + _towards_neighbours(data, examples, centres, anchor,
                                                    augment.towards_neighbour, generator)  # fmt: skip
        matrices = crop_matrices(torch.from_numpy(centres).float(), scale, size[0])
    else:
        matrices = scale_matrices(len(frames), scale)
    points = _pad_instances(own, (data.n_nodes, 2))
    anchors_t = _pad_instances(anchors, (2,))
    known = _known(data, examples, crop)
    if augment is not None:
        mirror = torch.from_numpy(data.mirror)
        can_flip = bool((mirror != torch.arange(len(mirror))).any())
        extra, flipped = random_affine(len(frames), size, augment, generator, can_flip)
        matrices = extra @ matrices
        points = swap_symmetric(points, flipped, mirror)
        if known is not None:  # a flipped example's node columns are swapped, as its points
            known = torch.where(flipped[:, None], known[:, mirror], known)
    images_t = _warp_grouped(images, matrices, size)
    points = transform_points(points, matrices)
    anchors_t = transform_points(anchors_t, matrices)
    if crop and augment is not None and augment.encounter > 0:
        pasted = paste_encounters(data, examples, images_t, points, anchors_t[:, 0], matrices,
                                  anchor=anchor, probability=augment.encounter,
                                  generator=generator)  # fmt: skip
        images_t, points = pasted.images, pasted.points
    if augment is not None:
        images_t = adjust_intensity(images_t, augment, generator)
    return Batch(images_t, points, anchors_t, matrices, known)


def _towards_neighbours(data: LabelledFrames, examples: np.ndarray, centres: np.ndarray,
                        anchor: int | None, probability: float,
                        generator: torch.Generator | None) -> np.ndarray:  # fmt: skip
    """``(B, 2)`` shifts of crop ``centres`` (of ``examples`` ``(frame, instance)``): with
    ``probability``, a random 10-45% of the way to the nearest other animal of the frame
    (``AugmentConfig.towards_neighbour``); zero for the rest and where the frame holds no
    other animal. Under half the way, the crop's own animal stays the one nearest its centre.
    """
    chosen = (torch.rand(len(examples), generator=generator) < probability).numpy()
    fraction = (0.10 + 0.35 * torch.rand(len(examples), generator=generator)).numpy()
    shifts = np.zeros_like(centres)
    for row in np.flatnonzero(chosen):
        frame, own = examples[row]
        others = np.delete(anchor_points(data.points[frame], anchor), own, axis=0)
        offsets = others[np.isfinite(others).all(axis=-1)] - centres[row]
        if len(offsets):
            nearest = offsets[np.einsum("ij,ij->i", offsets, offsets).argmin()]
            shifts[row] = fraction[row] * nearest
    return shifts


def _known(data: LabelledFrames, examples: np.ndarray, crop: bool) -> torch.Tensor | None:
    """``(B, k)`` which nodes each example trains (``Batch.known``): a crop's own instance's
    known nodes; on a whole frame, the nodes every instance knows (a node's map shows all
    instances at once). ``None`` when ``data`` knows every node."""
    if data.unknown is None:
        return None
    if crop:
        unknown = np.stack([data.unknown[f][j] for f, j in examples])
    else:
        unknown = np.stack([data.unknown[i].any(axis=0) for i in examples])
    return torch.from_numpy(~unknown).float()


def _donor_candidates(data: LabelledFrames, examples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instances that can be pasted into crops, and where each crop's own instance is among them.

    Returns the candidates (positions in ``instances()`` with two or more visible nodes: one
    node gives no size to cut out by) and, per crop of ``examples`` ``(frame, instance)``,
    the position of its instance among them, or ``len(candidates)`` when it is none.
    """
    counts = np.array([len(p) for p in data.points])
    own = (np.cumsum(counts) - counts)[examples[:, 0]] + examples[:, 1]
    visible = np.isfinite(np.concatenate(data.points)).all(axis=-1).sum(axis=-1)
    candidates = np.flatnonzero(visible >= 2)
    position = np.searchsorted(candidates, own)
    return candidates, np.where(np.isin(own, candidates), position, len(candidates))


def _windows(frames: list[np.ndarray], points: np.ndarray,
             margin: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:  # fmt: skip
    """The part of each frame within ``margin`` ``(n,)`` pixels (plus one, for bilinear
    neighbours) of the bounding box of its animal's visible ``points`` ``(n, k, 2)``.

    Returns the windows zero-padded to one shape ``(n, h, w, C)`` uint8, their top-left
    corners ``(n, 2)`` ``(x, y)`` in their frames and their own sizes ``(n, 2)`` ``(w, h)``.
    Converting whole frames to float cost more than the rest of an encounter.
    """
    frame_wh = np.array([frame.shape[1::-1] for frame in frames])
    pad = (margin + 1)[:, None]
    low = np.clip(np.floor(np.nanmin(points, axis=1) - pad), 0, frame_wh).astype(np.int64)
    high = np.clip(np.ceil(np.nanmax(points, axis=1) + pad) + 1, 0, frame_wh).astype(np.int64)
    sizes = high - low
    out = np.zeros((len(frames), sizes[:, 1].max(), sizes[:, 0].max(), frames[0].shape[-1]),
                   dtype=np.uint8)  # fmt: skip
    for i, (frame, (x0, y0), (x1, y1)) in enumerate(zip(frames, low, high, strict=True)):
        out[i, : y1 - y0, : x1 - x0] = frame[y0:y1, x0:x1]
    return torch.from_numpy(out), low, sizes


def _translations(offsets: torch.Tensor) -> torch.Tensor:
    """``(n, 3, 3)`` matrices that add ``offsets`` ``(n, 2)`` to points."""
    m = torch.eye(3).repeat(len(offsets), 1, 1)
    m[:, :2, 2] = offsets
    return m


@attrs.frozen
class Encounters:
    """Crops after ``paste_encounters``, with what was pasted where.

    Attributes:
        images: ``(B, C, h, w)`` the crops, donors blended in.
        points: ``(B, 1, k, 2)`` the centred animals' keypoints, NaN where a donor covers them.
        donors: ``(B,)`` row of ``LabelledFrames.instances()`` pasted into each crop; -1 where
            none was.
        matrices: ``(B, 3, 3)`` donor frame to crop transforms (identity where no donor).
        masks: ``(B, h, w)`` weight of the donor in each crop pixel (0 where none).
        occluded: ``(B, k)`` the centred animal's nodes the donor covers.
    """

    images: torch.Tensor
    points: torch.Tensor
    donors: np.ndarray
    matrices: torch.Tensor
    masks: torch.Tensor
    occluded: torch.Tensor


def paste_encounters(
    data: LabelledFrames,
    examples: np.ndarray,
    images: torch.Tensor,
    points: torch.Tensor,
    centres: torch.Tensor,
    matrices: torch.Tensor,
    *,
    anchor: int | None,
    probability: float,
    generator: torch.Generator | None,
) -> Encounters:
    """With ``probability``, paste another labelled animal against the centred one of each crop.

    ``examples`` are the crops' ``(frame, instance)`` rows, ``images`` ``(B, C, h, w)`` the
    crops, ``points`` ``(B, 1, k, 2)`` and ``centres`` ``(B, 2)`` the centred animals'
    keypoints and anchors in crop pixels, ``matrices`` the frame-to-crop transforms.

    The donor is any other instance with two or more visible nodes (another frame's, or the
    other animal of the same frame), cut out of its frame by ``skeleton_mask`` (radius
    ``ENCOUNTER_RADIUS`` of its size, soft edge ``ENCOUNTER_SOFT_EDGE``) and placed by
    ``encounter_matrices`` with its anchor ``ENCOUNTER_DISTANCE`` of the two animals' mean
    size from the centred anchor, at the crops' zoom. Pixels its frame does not cover are
    left alone (its mask is 0 there). ``crop = crop * (1 - mask) + donor * mask``.

    The centred animal's nodes where the mask exceeds 1/2 become NaN: the image there shows
    the donor, so a target on them would teach the model to draw the centred animal's parts on
    the other one, the very mistake this fights. NaN gives that node an empty map, as for a
    node the labeller marked not visible: the model learns to report what it cannot see as
    missing. Nothing is drawn from ``generator`` when there is no possible donor.
    """
    n_crops = len(examples)
    h, w = images.shape[-2:]
    none = Encounters(images, points, np.full(n_crops, -1), torch.eye(3).repeat(n_crops, 1, 1),
                      torch.zeros(n_crops, h, w),
                      torch.zeros(n_crops, points.shape[-2], dtype=torch.bool))  # fmt: skip
    flat = np.concatenate(data.points)  # (n_instances, k, 2), the order of instances()
    candidates, own = _donor_candidates(data, examples)
    n_choices = len(candidates) - (own < len(candidates))
    if probability <= 0 or not (n_choices > 0).any():
        return none
    # One draw per crop and purpose, always all of them: the next crop's draws do not depend
    # on whether this one got a donor.
    draws = torch.rand(n_crops, 5, generator=generator)
    chosen = np.flatnonzero((draws[:, 0] < probability).numpy() & (n_choices > 0))
    if len(chosen) == 0:
        return none
    # Uniform over the candidates other than the centred instance itself: skip over its place.
    pick = np.minimum((draws[chosen, 1].numpy() * n_choices[chosen]).astype(np.int64),
                      n_choices[chosen] - 1)  # fmt: skip
    donors = candidates[pick + (pick >= own[chosen])]
    donor_points = torch.from_numpy(flat[donors])
    donor_anchors = torch.from_numpy(anchor_points(flat[donors], anchor)).float()
    zoom = torch.linalg.det(matrices[chosen, :2, :2]).abs().sqrt()
    donor_size = animal_size(donor_points) * zoom
    mean_size = (animal_size(points[chosen, 0]) + donor_size) / 2
    low, high = ENCOUNTER_DISTANCE
    distance = (low + draws[chosen, 2] * (high - low)) * mean_size
    donor_matrices = encounter_matrices(donor_anchors, centres[chosen], zoom, distance,
                                        draws[chosen, 3:])  # fmt: skip
    # Only the window of its frame the cut-out can reach, not the whole frame, is resampled.
    reach = (ENCOUNTER_RADIUS + ENCOUNTER_SOFT_EDGE) * (donor_size / zoom)
    windows, corners, window_wh = _windows(
        [data.images[f] for f in data.instances()[donors, 0]], flat[donors], reach.numpy()
    )
    window_matrices = donor_matrices @ _translations(torch.from_numpy(corners).float())
    donor_crops = warp(windows.permute(0, 3, 1, 2).float().div_(255.0), window_matrices, (h, w))
    # Every crop pixel and the centred animal's nodes, through one mask computation.
    ys, xs = grid(h, w, 1)
    pixels = torch.stack([xs.flatten(), ys.flatten()], dim=-1).expand(len(chosen), h * w, 2)
    queries = torch.cat([pixels, points[chosen, 0]], dim=1)
    mask = skeleton_mask(queries, transform_points(donor_points, donor_matrices),
                         torch.from_numpy(data.edges), ENCOUNTER_RADIUS * donor_size,
                         ENCOUNTER_SOFT_EDGE * donor_size)  # fmt: skip
    # The window ends where its frame does or beyond the cut-out: what lies outside it, the
    # frame does not show (the warp would paste black there).
    in_window = transform_points(queries, torch.linalg.inv(window_matrices))
    wh = torch.from_numpy(window_wh).float()
    covered = ((in_window >= 0) & (in_window <= wh[:, None] - 1)).all(dim=-1)
    mask = mask * covered
    pixel_mask = mask[:, : h * w].reshape(len(chosen), 1, h, w)
    blended = images.clone()
    blended[chosen] = images[chosen] * (1 - pixel_mask) + donor_crops * pixel_mask
    occluded = none.occluded.clone()
    occluded[chosen] = mask[:, h * w :] > 0.5
    all_donors = none.donors.copy()
    all_donors[chosen] = donors
    all_matrices = none.matrices.clone()
    all_matrices[chosen] = donor_matrices
    masks = none.masks.clone()
    masks[chosen] = pixel_mask[:, 0]
    return Encounters(
        images=blended,
        points=points.masked_fill(occluded[:, None, :, None], torch.nan),
        donors=all_donors,
        matrices=all_matrices,
        masks=masks,
        occluded=occluded,
    )
