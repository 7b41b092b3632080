"""Deterministic synthetic multi-animal pose data with exact ground truth.

Real pose data sets are large downloads with imperfect labels. The sample data behind napari's
"Open Sample" menu, the demo and the fast tests is generated here instead: a few stylised
five-part "bugs" walking over a textured arena. The generator knows every keypoint exactly
(sub-pixel, in SLEAP's convention that pixel centres sit at integer coordinates), so a reader,
a converter or a tiny trained network can be checked against the truth rather than against
another program's output.

Every part is drawn so that its node can be found from the image alone: a bright round head,
a mid-grey thorax, a dark elongated abdomen and two equally bright wings. Like real animals, the
wings look alike and left is told from right by body orientation (the left wing lies left of
the head direction), so left/right flip augmentation that swaps symmetric nodes stays valid.

The same arguments always give bit-identical arrays: all randomness comes from one seeded
``numpy.random.Generator`` and drawing is plain float32 arithmetic.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import av
import numpy as np
import sleap_io as sio
from skimage.filters import gaussian

NODE_NAMES: tuple[str, ...] = ("head", "thorax", "abdomen", "left_wing", "right_wing")
EDGES: tuple[tuple[str, str], ...] = (
    ("thorax", "head"),
    ("thorax", "abdomen"),
    ("thorax", "left_wing"),
    ("thorax", "right_wing"),
)
SYMMETRIES: tuple[tuple[str, str], ...] = (("left_wing", "right_wing"),)
HEAD, THORAX, ABDOMEN, LEFT_WING, RIGHT_WING = range(len(NODE_NAMES))

FPS = 25
KEYFRAME_INTERVAL = 50
# Bump when the drawing or the motion model changes, so stale sample projects get rewritten.
GENERATOR_VERSION = 2

# Body geometry in pixels for a 256-pixel frame (scaled with the frame, see `_body_scale`).
_HEAD_DIST = 11.0  # thorax -> head
_ABDOMEN_DIST = 14.0  # thorax -> abdomen
_WING_DIST = 12.0  # thorax -> each wing, swept back by `_WING_SWEEP` from the tail axis
_WING_SWEEP = np.deg2rad(60.0)
_REACH = _ABDOMEN_DIST + 9.0  # farthest drawn pixel from the thorax (abdomen tip)

# (node drawn at, semi-axis along the part, semi-axis across, intensity); bottom layer first,
# so the wings sit under the body and the head on top.
_PARTS: tuple[tuple[int, float, float, float], ...] = (
    (LEFT_WING, 5.5, 3.0, 205.0),
    (RIGHT_WING, 5.5, 3.0, 205.0),
    (ABDOMEN, 9.0, 5.5, 45.0),
    (THORAX, 6.0, 4.5, 155.0),
    (HEAD, 3.5, 3.5, 245.0),
)
_BACKGROUND_MEAN = 110.0
_N_SUGGESTIONS = 10


def make_skeleton() -> sio.Skeleton:
    """A fresh five-node skeleton (a tree rooted at the thorax, one left/right symmetry).

    Fresh on every call because ``Skeleton`` objects are mutable and shared by reference inside
    ``Labels``: a module-level instance edited by one project would leak into every other.
    """
    return sio.Skeleton(
        nodes=list(NODE_NAMES),
        edges=list(EDGES),
        symmetries=list(SYMMETRIES),
        name="synthetic",
    )


@attrs.frozen(eq=False)
class SyntheticData:
    """Generated frames with their exact ground truth.

    Attributes:
        frames: ``(n_frames, size, size)`` uint8 grayscale images.
        points: ``(n_frames, n_animals, n_nodes, 2)`` float64 ``(x, y)`` keypoints, pixel
            centres at integer coordinates. Kept even where not visible, as SLEAP does.
        visible: ``(n_frames, n_animals, n_nodes)`` bool, False where the keypoint lies
            outside the image.
        skeleton: The skeleton the node axis of ``points`` follows.
    """

    frames: np.ndarray
    points: np.ndarray
    visible: np.ndarray
    skeleton: sio.Skeleton


def _body_scale(size: int) -> float:
    """Animals grow with the frame but never below half size, so parts stay a few pixels wide."""
    return max(size, 128) / 256.0


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles folded into (-pi, pi], so steering turns the short way round."""
    return np.arctan2(np.sin(angle), np.cos(angle))


def _initial_positions(
    rng: np.random.Generator, n_animals: int, low: float, high: float, min_dist: float
) -> np.ndarray:
    """Non-overlapping start positions by rejection sampling (few animals: always quick)."""
    placed: list[np.ndarray] = []
    for _ in range(10_000):
        if len(placed) == n_animals:
            break
        candidate = rng.uniform(low, high, size=2)
        if all(np.hypot(*(candidate - p)) >= min_dist for p in placed):
            placed.append(candidate)
    if len(placed) < n_animals:
        raise ValueError(f"cannot fit {n_animals} animals apart in the frame; use a larger size")
    return np.array(placed)


def _separate(pos: np.ndarray, min_dist: float, low: float, high: float) -> np.ndarray:
    """Push animals closer than ``min_dist`` apart along their join, then back inside the arena.

    A few rounds suffice because steering already keeps animals apart; this is only the hard
    guarantee behind "thoraxes never closer than ``min_dist``".
    """
    for _ in range(8):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.hypot(delta[..., 0], delta[..., 1])
        np.fill_diagonal(dist, np.inf)
        overlap = np.clip(min_dist - dist, 0.0, None)
        if not overlap.any():
            break
        # Half the overlap for each of the pair (plus a hair so they end strictly apart).
        push = (delta / np.maximum(dist, 1e-9)[..., None]) * (overlap[..., None] * 0.5 + 1e-6)
        pos = np.clip(pos + push.sum(axis=1), low, high)
    return pos


def _simulate(
    rng: np.random.Generator, n_frames: int, size: int, n_animals: int, scale: float
) -> np.ndarray:
    """Walk the animals and return their keypoints, ``(n_frames, n_animals, n_nodes, 2)``.

    Heading, speed and the small pose changes (head and abdomen bend, wing sweep) are AR(1)
    processes, i.e. random walks with momentum, so the motion is smooth. Animals steer toward
    the centre near the walls and away from each other; thoraxes are then clamped to the arena
    and kept at least ``min_dist`` apart. The arena margin is smaller than the body, so heads
    and tails sometimes leave the image (those points become invisible).
    """
    low, high = 6.0 * scale, size - 1 - 6.0 * scale
    min_dist = 1.6 * _REACH * scale
    wall_zone = 16.0 * scale
    mean_speed = 2.4 * scale
    centre = np.full(2, (size - 1) / 2.0)

    pos = _initial_positions(rng, n_animals, low, high, min_dist)
    heading = rng.uniform(-np.pi, np.pi, n_animals)
    turn = np.zeros(n_animals)
    speed = np.full(n_animals, mean_speed)
    # Pose angles: head bend, abdomen bend, left and right wing sweep offsets (radians).
    pose = np.zeros((n_animals, 4))
    noise = rng.normal(size=(n_frames, n_animals, 6))

    trajectory = np.empty((n_frames, n_animals, 2))
    headings = np.empty((n_frames, n_animals))
    poses = np.empty((n_frames, n_animals, 4))
    for t in range(n_frames):
        trajectory[t], headings[t], poses[t] = pos, heading, pose

        to_centre = centre - pos
        edge_dist = np.minimum(pos - low, high - pos).min(axis=1)
        wall_weight = np.clip(1.0 - edge_dist / wall_zone, 0.0, 1.0)
        steer = to_centre / np.linalg.norm(to_centre, axis=1, keepdims=True).clip(1e-9)
        steer *= wall_weight[:, None]
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.hypot(delta[..., 0], delta[..., 1])
        np.fill_diagonal(dist, np.inf)
        repel = np.clip(1.0 - (dist - min_dist) / (1.5 * min_dist), 0.0, 1.0)
        steer += (delta / dist[..., None] * repel[..., None]).sum(axis=1)
        strength = np.linalg.norm(steer, axis=1)
        wanted = _wrap(np.arctan2(steer[:, 1], steer[:, 0]) - heading)

        turn = 0.8 * turn + 0.05 * noise[t, :, 0]
        heading = _wrap(heading + turn + 0.15 * np.clip(strength, 0.0, 1.0) * wanted)
        speed = 0.9 * speed + 0.1 * mean_speed + 0.3 * scale * noise[t, :, 1]
        speed = np.clip(speed, 0.0, 4.0 * scale)
        pos = pos + speed[:, None] * np.stack([np.cos(heading), np.sin(heading)], axis=1)
        pos = _separate(np.clip(pos, low, high), min_dist, low, high)
        pose = np.clip(0.9 * pose + 0.04 * noise[t, :, 2:], -0.25, 0.25)

    return _keypoints(trajectory, headings, poses, scale)


def _keypoints(
    thorax: np.ndarray, heading: np.ndarray, pose: np.ndarray, scale: float
) -> np.ndarray:
    """Place every node from thorax position, heading and pose angles (all frames at once).

    Image coordinates have y pointing down, so seen from above an animal facing angle ``h``
    has its left side at ``h - 90 degrees``.
    """

    def offset(angle: np.ndarray, dist: float) -> np.ndarray:
        return dist * scale * np.stack([np.cos(angle), np.sin(angle)], axis=-1)

    tail = heading + np.pi
    points = np.empty(thorax.shape[:2] + (len(NODE_NAMES), 2))
    points[:, :, THORAX] = thorax
    points[:, :, HEAD] = thorax + offset(heading + pose[..., 0], _HEAD_DIST)
    points[:, :, ABDOMEN] = thorax + offset(tail + pose[..., 1], _ABDOMEN_DIST)
    points[:, :, LEFT_WING] = thorax + offset(tail + _WING_SWEEP + pose[..., 2], _WING_DIST)
    points[:, :, RIGHT_WING] = thorax + offset(tail - _WING_SWEEP + pose[..., 3], _WING_DIST)
    return points


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A static textured arena floor: smooth blotches plus fine grain, about 110 +/- 15.

    Static so that lossless H.264 encodes it once per keyframe and the sample stays small.
    """
    coarse, fine, grain = rng.normal(size=(3, size, size))
    coarse = gaussian(coarse, sigma=size / 16)
    fine = gaussian(fine, sigma=2.0)
    return (
        _BACKGROUND_MEAN + 12.0 * coarse / coarse.std() + 5.0 * fine / fine.std() + 2.0 * grain
    ).astype(np.float32)


def _render(points: np.ndarray, background: np.ndarray, scale: float) -> np.ndarray:
    """Draw every animal over the background, anti-aliased to sub-pixel accuracy.

    Each animal is rendered into a small patch around its thorax for all frames at once
    (premultiplied colour and coverage, parts composited bottom to top), then the patches are
    pasted in a loop over frames and animals onto one float canvas, rounded once per frame.
    """
    n_frames, n_animals = points.shape[:2]
    size = background.shape[0]
    half = int(np.ceil(_REACH * scale + 2))
    grid = np.arange(2 * half + 1, dtype=np.float32)
    corner = np.rint(points[:, :, THORAX]).astype(np.int64) - half  # (F, A, 2) as (x, y)
    local = (points - corner[:, :, None, :]).astype(np.float32)  # node positions in patch

    colour = np.zeros((n_frames, n_animals, grid.size, grid.size), np.float32)
    cover = np.zeros_like(colour)
    for node, along, across, intensity in _PARTS:
        centre = local[:, :, node]
        # Each part points away from the thorax; the thorax itself along the body axis.
        away = local[:, :, HEAD if node == THORAX else node] - local[:, :, THORAX]
        axis = np.arctan2(away[..., 1], away[..., 0])
        cos, sin = np.cos(axis)[..., None, None], np.sin(axis)[..., None, None]
        dx = grid[None, None, None, :] - centre[..., 0, None, None]
        dy = grid[None, None, :, None] - centre[..., 1, None, None]
        u = (dx * cos + dy * sin) / (along * scale)
        v = (dy * cos - dx * sin) / (across * scale)
        # Signed distance to the ellipse edge in pixels (approximate) -> 1-pixel soft edge.
        edge = (np.sqrt(u * u + v * v) - 1.0) * (min(along, across) * scale)
        alpha = np.clip(0.5 - edge, 0.0, 1.0)
        colour = colour * (1.0 - alpha) + np.float32(intensity) * alpha
        cover = cover * (1.0 - alpha) + alpha

    frames = np.empty((n_frames, size, size), np.uint8)
    canvas = np.empty_like(background)
    for f in range(n_frames):
        canvas[:] = background
        for a in range(n_animals):
            x0, y0 = corner[f, a]
            # Clip the patch to the image: animals may reach past the border.
            px0, py0 = max(0, -x0), max(0, -y0)
            px1 = min(grid.size, size - x0)
            py1 = min(grid.size, size - y0)
            window = canvas[y0 + py0 : y0 + py1, x0 + px0 : x0 + px1]
            window *= 1.0 - cover[f, a, py0:py1, px0:px1]
            window += colour[f, a, py0:py1, px0:px1]
        frames[f] = np.clip(np.rint(canvas), 0, 255)
    return frames


def make_synthetic(
    n_frames: int = 200, size: int = 256, n_animals: int = 2, seed: int = 0
) -> SyntheticData:
    """Generate ``n_frames`` square frames of ``n_animals`` walking animals with exact labels.

    Args:
        n_frames: Number of frames.
        size: Width and height in pixels (at least 64; even if the frames go to H.264).
        n_animals: Number of animals; a few fit in 256 pixels, too many raise ``ValueError``.
        seed: Seed of the only random generator used, so equal arguments give equal output.
    """
    if n_frames < 1 or n_animals < 1 or size < 64:
        raise ValueError("need n_frames >= 1, n_animals >= 1 and size >= 64")
    rng = np.random.default_rng(seed)
    scale = _body_scale(size)
    background = _background(rng, size)
    points = _simulate(rng, n_frames, size, n_animals, scale)
    inside = (points >= -0.5) & (points <= size - 0.5)
    return SyntheticData(
        frames=_render(points, background, scale),
        points=points,
        visible=np.all(inside, axis=-1),
        skeleton=make_skeleton(),
    )


def to_labels(
    data: SyntheticData,
    video: sio.Video | str,
    *,
    labelled_frames: slice | np.ndarray | None = None,
    predicted: bool = False,
) -> sio.Labels:
    """The ground truth as a ``Labels``: one track per animal, one instance per animal and frame.

    Args:
        data: Output of `make_synthetic`.
        video: The video the frames live in, or its path (opened when it exists).
        labelled_frames: Which frames get labels (slice, indices or boolean mask); all if None.
            Up to ten evenly spread unlabelled frames become suggestions, as in a project
            that is part way through labelling.
        predicted: Make ``PredictedInstance``s with score 1.0 instead of user instances, to
            stand in for perfect model output.
    """
    if not isinstance(video, sio.Video):
        video = sio.Video(filename=str(video))
    n_frames, n_animals = data.visible.shape[:2]
    frame_inds = np.arange(n_frames)[slice(None) if labelled_frames is None else labelled_frames]
    tracks = [sio.Track(name=f"animal_{i}") for i in range(n_animals)]
    visible = data.visible.astype(np.float64)[..., None]
    if predicted:
        # Columns: x, y, score, visible, complete (see PredictedPointsArray.from_array).
        columns = [data.points, np.ones_like(visible), visible, np.zeros_like(visible)]
    else:
        # Columns: x, y, visible, complete; complete = "placed by a human", true of ground truth.
        columns = [data.points, visible, np.ones_like(visible)]
    table = np.concatenate(columns, axis=-1)

    def instance(f: int, a: int) -> sio.Instance:
        if predicted:
            return sio.PredictedInstance.from_numpy(
                table[f, a], data.skeleton, score=1.0, track=tracks[a], tracking_score=1.0
            )
        return sio.Instance.from_numpy(table[f, a], data.skeleton, track=tracks[a])

    frames = [
        sio.LabeledFrame(
            video=video, frame_idx=int(f), instances=[instance(f, a) for a in range(n_animals)]
        )
        for f in frame_inds
    ]
    unlabelled = np.setdiff1d(np.arange(n_frames), frame_inds)
    n_suggestions = min(_N_SUGGESTIONS, len(unlabelled))
    picks = np.unique(np.linspace(0, len(unlabelled) - 1, n_suggestions).round().astype(int))
    suggestions = [sio.SuggestionFrame(video=video, frame_idx=int(unlabelled[i])) for i in picks]
    return sio.Labels(
        labeled_frames=frames,
        videos=[video],
        skeletons=[data.skeleton],
        tracks=tracks,
        suggestions=suggestions,
    )


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Call ``write(temp_path)`` then move the result onto ``path``.

    Readers never see a half-written file, and an interrupted run leaves the old file (or no
    file) rather than a corrupt one that a later idempotency check would trust.
    """
    # A unique name rather than mkstemp, whose 0600 mode would stick to the final file.
    temp = path.with_name(f".{path.stem}-{uuid.uuid4().hex}{path.suffix}")
    try:
        write(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_video(frames: np.ndarray, path: str | Path) -> None:
    """Encode grayscale frames as lossless H.264 in an .mp4, atomically.

    The gray values go straight into the Y plane (chroma fixed at 128) with the stream flagged
    full range, so decoders return the exact input values whether they read the Y plane or
    convert to RGB (a limited-range flag would make them stretch 16..235 to 0..255). ``qp=0``
    makes libx264 lossless. A keyframe every `KEYFRAME_INTERVAL` frames makes seeking go
    through real keyframes, as it does in experiment videos.

    Args:
        frames: ``(n_frames, height, width)`` uint8, height and width even (4:2:0 chroma).
        path: Destination ``.mp4``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 3 or frames.dtype != np.uint8:
        raise ValueError("frames must be a (n_frames, height, width) uint8 array")
    _, height, width = frames.shape
    if height % 2 or width % 2:
        raise ValueError(f"H.264 4:2:0 needs even frame sizes, got {width}x{height}")
    # One yuv420p buffer: the Y plane on top, then the U and V planes (a quarter each).
    buffer = np.full((height * 3 // 2, width), 128, np.uint8)

    def encode(temp: Path) -> None:
        with av.open(str(temp), mode="w", format="mp4") as container:
            stream = container.add_stream(
                "libx264",
                rate=FPS,
                options={
                    "qp": "0",
                    "g": str(KEYFRAME_INTERVAL),
                    "keyint_min": str(KEYFRAME_INTERVAL),
                },
            )
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            stream.codec_context.color_range = av.video.reformatter.ColorRange.JPEG
            for index, image in enumerate(frames):
                buffer[:height] = image
                frame = av.VideoFrame.from_ndarray(buffer, format="yuv420p")
                frame.color_range = av.video.reformatter.ColorRange.JPEG
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))

    _replace_atomically(Path(path), encode)


def write_sample_project(
    folder: str | Path, n_frames: int = 200, size: int = 256, n_animals: int = 2, seed: int = 0
) -> Path:
    """Write ``synthetic.mp4`` and ``synthetic.slp`` into ``folder`` and return the .slp path.

    A JSON stamp beside them records the arguments and `GENERATOR_VERSION`; when it matches
    and both files exist nothing is regenerated, so "Open Sample" is instant after the first
    time. The stamp is written last, so an interrupted run is simply redone.

    The .slp stores the video's absolute path. sleap-io also looks for a missing video by name
    beside the .slp, so a moved or copied folder still finds its own video; a bare relative
    name would instead be resolved against the current directory first, which can pick up a
    different ``synthetic.mp4``.
    """
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    video_path, labels_path, stamp_path = (
        folder / f"synthetic.{ext}" for ext in ("mp4", "slp", "json")
    )
    stamp = json.dumps(
        {
            "n_frames": n_frames,
            "size": size,
            "n_animals": n_animals,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
        },
        indent=1,
    )
    files_there = video_path.exists() and labels_path.exists() and stamp_path.exists()
    if files_there and stamp_path.read_text() == stamp:
        return labels_path
    # Invalidate first: a run cut short must not leave an old stamp vouching for new files.
    stamp_path.unlink(missing_ok=True)

    data = make_synthetic(n_frames=n_frames, size=size, n_animals=n_animals, seed=seed)
    write_video(data.frames, video_path)
    # Opened, so that sleap-io records the video's shape, fps and backend type in the .slp.
    labels = to_labels(data, video_path.as_posix())
    try:
        _replace_atomically(
            labels_path, lambda temp: sio.save_slp(labels, str(temp), verbose=False)
        )
    finally:
        labels.video.close()
    _replace_atomically(stamp_path, lambda temp: temp.write_text(stamp))
    return labels_path
