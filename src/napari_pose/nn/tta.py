"""Test-time augmentation: average a model's maps over the frame and transformed copies of it.

Two augmentations, each run as one forward pass on a batch of the frame and its copies, with
each copy's maps transformed back onto the frame's and averaged with the frame's own:

- Flip (``FlipAveraged``): the frame and its mirror image left/right, for twice the model
  cost; errors that depend on which way an animal faces partly cancel. SLEAP's and
  DeepLabCut's flip test-time augmentation.
- Rotation (``RotationAveraged``): the frame as it is and turned a few degrees either way
  about its centre, for three times the model cost; errors that depend on the exact angle
  an animal is seen at partly cancel.

Both may be on: ``RotationAveraged(FlipAveraged(model, mirror), degrees)`` flip-averages each
rotated pass (six passes).

Pixel alignment: output column ``j`` / row ``i`` is input pixel ``x = j * stride`` /
``y = i * stride`` (``peaks``).

The flip is exact, with no resampling. A plain ``torch.flip`` of an input ``W`` wide maps
``x`` to ``W - 1 - x``, so output column ``j`` of the mirrored pass would be input pixel
``W - 1 - j * stride``, between two output columns for any stride above 1 (a map resampled
there would blur and bias the peaks). Instead the input is mirrored about ``x = c / 2`` with
``c`` the nearest multiple of the stride at or above ``W - 1`` (``c = W`` for the usual
widths, multiples of the stride): a flip plus a shift by a whole number of input pixels,
zero-filled like the padding frames get. Output columns then map onto output columns exactly,
and mirroring the maps back is a flip plus a whole-column shift. The ``c - W + 1`` input
columns shifted out (one, at the far edge) and the output columns with no mirrored
counterpart keep the unaugmented values alone.

The rotation has to resample. A turn by any angle but a multiple of 90 degrees carries pixel
centres between pixel centres, so there is no whole-pixel counterpart to choose: the input is
turned by bilinear interpolation about its centre ``c = ((W - 1) / 2, (H - 1) / 2)`` (input
pixels), the rotated passes' maps are turned back, bilinearly too, about the same point of the
output grid, ``c / stride`` (output pixels), and interpolation blurs the maps slightly (peak
positions of the smooth maps models draw move by well under a pixel; ``rotate_maps``). Corners
of a turned frame fall outside the input and are zero-filled like padding; output pixels whose
turned-back value came partly or wholly from outside a rotated pass's maps are averaged with
that pass's coverage as its weight (a map of ones turned back the same way), so where no
rotated pass reached they keep the unaugmented value alone. Angles are positive
counterclockwise as displayed, rows down (kornia's and OpenCV's convention): ``rotate_maps``
by ``+a`` moves ``(x, y)`` to ``c + (cos a (x - cx) + sin a (y - cy),
-sin a (x - cx) + cos a (y - cy))``. A centre-cue channel (``pipelines.with_centre_cue``, a
round Gaussian at ``c``) turns onto itself.

Heads: a mirror image shows a left wing where the right wing was, so the mirrored pass draws
node ``j`` in the channel of its partner ``mirror[j]`` (as ``augment.swap_symmetric`` swaps
training points): ``confmaps`` channels are swapped back by ``mirror``; ``centroids`` (one
map, one point per animal) need no swap. A rotation swaps no sides: both heads are turned back
as they are. Part-affinity fields (bottom-up models) are vectors, which would need their
components transformed as well as their maps moved (the x component negated and edges remapped
under a flip, the vectors turned under a rotation): not supported here, so a model with a
``pafs`` head is refused by both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from napari_pose.nn.augment import mirror_permutation
from napari_pose.nn.models import PoseModel
from napari_pose.nn.pipelines import StageConfig

#: Heads whose maps are averaged; ``True``: channels are nodes, swapped by ``mirror``.
FLIPPABLE_HEADS = {"confmaps": True, "centroids": False}
#: Stage kinds whose models ``with_flip_tta`` wraps (bottom-up has PAFs).
FLIPPABLE_STAGES = ("single_instance", "centroid", "centered_instance")
#: Heads whose maps ``RotationAveraged`` turns back and averages.
ROTATABLE_HEADS = ("confmaps", "centroids")
#: Stage kinds whose models ``with_rotation_tta`` wraps (bottom-up has PAFs).
ROTATABLE_STAGES = ("single_instance", "centroid", "centered_instance")


def _shift_columns(maps: torch.Tensor, shift: int, fill: torch.Tensor | float) -> torch.Tensor:
    """``maps`` moved ``shift`` columns right (left when negative); vacated columns from
    ``fill`` (a tensor like ``maps`` or a number)."""
    width = maps.shape[-1]
    source = torch.arange(width, device=maps.device) - shift
    inside = (source >= 0) & (source < width)
    moved = maps[..., source.clamp(0, width - 1)]
    return torch.where(inside, moved, fill)


class FlipAveraged(PoseModel):
    """``model`` with flip test-time augmentation: the mean of its maps on the input and on the
    input's mirror image (mirrored back, node channels swapped by ``mirror``).

    To callers it is the ``PoseModel`` it wraps (same config, strides and heads), so every
    predictor takes it unchanged. ``mirror[j]`` is the node ``j`` becomes under a left/right
    flip (``LabelledFrames.mirror``; the identity when the skeleton declares no symmetries).

    Raises ``ValueError`` for a model with a PAF head (see the module notes), a head it does
    not know, or a ``mirror`` that is not a self-inverse permutation of the ``confmaps``
    channels.
    """

    mirror: torch.Tensor

    def __init__(self, model: PoseModel, mirror: torch.Tensor | np.ndarray | Sequence[int]) -> None:
        # Not ``PoseModel.__init__``: that would build a second, unused backbone.
        nn.Module.__init__(self)
        heads = model.config.heads
        unknown = sorted(set(heads) - set(FLIPPABLE_HEADS))
        if any(name.endswith("pafs") for name in unknown):
            raise ValueError(
                "flip test-time augmentation does not support bottom-up models: their "
                "part-affinity fields would need mirrored edges and negated x components"
            )
        if unknown:
            raise ValueError(f"flip test-time augmentation does not know the heads {unknown}")
        order = torch.as_tensor(np.asarray(mirror), dtype=torch.long).flatten()
        n_nodes = heads.get("confmaps")
        if n_nodes is not None:
            nodes = torch.arange(n_nodes)
            if len(order) != n_nodes or not torch.equal(order.sort().values, nodes):
                raise ValueError(f"mirror must be a permutation of the {n_nodes} nodes")
            if not torch.equal(order[order], nodes):
                raise ValueError("mirror must pair nodes: mirror[mirror[j]] == j")
        self.config = model.config
        self.model = model
        self.register_buffer("mirror", order.to(next(model.parameters(), order).device))
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        stride = self.output_stride
        width = x.shape[-1]
        shift = -(width - 1) % stride  # mirror axis c / 2 with c = width - 1 + shift
        mirrored = _shift_columns(x.flip(-1), shift, 0.0)
        outputs = self.model(torch.cat([x, mirrored]))
        averaged = {}
        for name, maps in outputs.items():
            plain, seen_mirrored = maps.chunk(2)
            # Mirrored-pass column i is input pixel c - i * stride: plain column c / stride - i.
            back = _shift_columns(
                seen_mirrored.flip(-1), (width - 1 + shift) // stride - maps.shape[-1] + 1, plain
            )
            if FLIPPABLE_HEADS[name]:
                back = back[:, self.mirror]
            averaged[name] = (plain + back) / 2
        return averaged


def with_flip_tta(models: Mapping[str, PoseModel], stages: Mapping[str, StageConfig],
                  mirror: torch.Tensor | np.ndarray | Sequence[int]) -> dict[str, PoseModel]:  # fmt: skip
    """A loaded package's ``models`` (by stage kind) with flip test-time augmentation where it
    is right; the others are returned as they are.

    A pose model sees left and right by the animal's chirality: one trained without flips
    calls the left wing of a mirrored fly its right wing, so averaging over a mirror image
    would blend each wing with the other's (measured on clip.slp: OKS mAP 0.40 -> 0.04).
    Pose models are wrapped only when their stage trained with flips (``augment.flip``, left
    and right swapped by the same ``mirror``); centroid models always (one map, no sides);
    bottom-up models never (``FlipAveraged``). ``stages`` are the package's stage configs;
    ``mirror`` is its node pairing (``mirror_of``).
    """
    out: dict[str, PoseModel] = {}
    for kind, model in models.items():
        stage = stages[kind]
        flippable = stage.kind in FLIPPABLE_STAGES and (
            stage.kind == "centroid" or stage.augment.flip
        )
        out[kind] = FlipAveraged(model, mirror) if flippable else model
    return out


def mirror_of(node_names: Sequence[str], flip_pairs: Sequence[Sequence[str]]) -> np.ndarray:
    """``mirror[j]``: the node ``j`` becomes under a flip, from a package's recorded
    ``flip_pairs`` (node names; ``config.yaml``)."""
    index = {name: i for i, name in enumerate(node_names)}
    return mirror_permutation(len(node_names), ([index[a], index[b]] for a, b in flip_pairs))


def rotate_maps(maps: torch.Tensor, degrees: float | torch.Tensor,
                centre: tuple[float, float] | None = None) -> torch.Tensor:  # fmt: skip
    """``maps`` ``(B, C, H, W)`` turned by ``degrees`` about ``centre`` ``(x, y)`` in their own
    pixels (default: the middle, ``((W - 1) / 2, (H - 1) / 2)``), bilinearly, zero outside.

    Positive angles turn counterclockwise as displayed (rows down): a point ``p`` moves to
    ``c + R (p - c)`` with ``R = [[cos, sin], [-sin, cos]]``. ``degrees`` is one angle or one
    per map (``(B,)``). Sampled in float32 (float64 for float64 maps), returned in the maps'
    dtype, so half-precision maps keep sub-pixel positions.
    """
    batch, _, height, width = maps.shape
    work = torch.float64 if maps.dtype == torch.float64 else torch.float32
    cx, cy = ((width - 1) / 2, (height - 1) / 2) if centre is None else centre
    angle = torch.deg2rad(torch.as_tensor(degrees, dtype=work, device=maps.device))
    angle = angle.reshape(-1).expand(batch)[:, None, None]
    cos, sin = angle.cos(), angle.sin()
    dy = torch.arange(height, dtype=work, device=maps.device)[:, None] - cy
    dx = torch.arange(width, dtype=work, device=maps.device)[None, :] - cx
    # Output pixel q shows source pixel c + R^-1 (q - c).
    source_x = cx + cos * dx - sin * dy
    source_y = cy + sin * dx + cos * dy
    # align_corners=True: -1 and 1 are the centres of the first and last pixels.
    grid = torch.stack(
        [source_x * (2 / max(width - 1, 1)) - 1, source_y * (2 / max(height - 1, 1)) - 1], dim=-1
    )
    turned = torch.nn.functional.grid_sample(
        maps.to(work), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )
    return turned.to(maps.dtype)


def _check_degrees(degrees: float) -> None:
    if not 0 < degrees < 90:
        raise ValueError(
            f"rotation test-time augmentation takes a small angle, above 0 and below 90 "
            f"degrees; got {degrees}"
        )


class RotationAveraged(PoseModel):
    """``model`` with rotation test-time augmentation: the mean of its maps on the input as it
    is and turned by ``-degrees`` and ``+degrees`` about its centre (turned back; see the
    module notes), in one forward pass on a tripled batch.

    To callers it is the ``PoseModel`` it wraps (same config, strides and heads), so every
    predictor takes it unchanged; it may wrap a ``FlipAveraged``. Raises ``ValueError`` for
    ``degrees`` outside ``(0, 90)``, a model with a PAF head (see the module notes) or a head
    it does not know.
    """

    def __init__(self, model: PoseModel, degrees: float) -> None:
        # Not ``PoseModel.__init__``: that would build a second, unused backbone.
        nn.Module.__init__(self)
        _check_degrees(degrees)
        unknown = sorted(set(model.config.heads) - set(ROTATABLE_HEADS))
        if any(name.endswith("pafs") for name in unknown):
            raise ValueError(
                "rotation test-time augmentation does not support bottom-up models: their "
                "part-affinity fields are vectors, which would need turning as well as moving"
            )
        if unknown:
            raise ValueError(f"rotation test-time augmentation does not know the heads {unknown}")
        self.config = model.config
        self.model = model
        self.degrees = float(degrees)
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n, stride = len(x), self.output_stride
        height, width = x.shape[-2:]
        turns = torch.tensor([-self.degrees, self.degrees], device=x.device)
        batch = torch.cat([x, rotate_maps(torch.cat([x, x]), turns.repeat_interleave(n))])
        if x.is_contiguous(memory_format=torch.channels_last):
            batch = batch.contiguous(memory_format=torch.channels_last)
        outputs = self.model(batch)
        # Input pixel c is output pixel c / stride: the rotated passes turn back about it.
        centre = ((width - 1) / 2 / stride, (height - 1) / 2 / stride)
        averaged = {}
        for name, maps in outputs.items():
            plain, turned = maps[:n], maps[n:]
            back = rotate_maps(turned, (-turns).repeat_interleave(n), centre)
            # How much of each output pixel the turned-back maps cover (the plain pass: all).
            seen = rotate_maps(turned.new_ones(2, 1, *turned.shape[-2:]), -turns, centre)
            averaged[name] = (plain + back[:n] + back[n:]) / (1 + seen[:1] + seen[1:])
        return averaged


def with_rotation_tta(models: Mapping[str, PoseModel], stages: Mapping[str, StageConfig],
                      degrees: float) -> dict[str, PoseModel]:  # fmt: skip
    """A loaded package's ``models`` (by stage kind) with rotation test-time augmentation by
    ``degrees`` where it is right; the others are returned as they are.

    Centroid, single-instance and centred-instance models are wrapped when their stage
    trained with rotations at least as large (``augment.rotation``, 180 by default: any
    small angle): a model that never saw an animal turned need not find it turned. Bottom-up
    models never (``RotationAveraged``). ``models`` may already be flip-averaged
    (``with_flip_tta``): each rotated pass is then flip-averaged too. ``stages`` are the
    package's stage configs. Raises ``ValueError`` for ``degrees`` outside ``(0, 90)``.
    """
    _check_degrees(degrees)
    out: dict[str, PoseModel] = {}
    for kind, model in models.items():
        stage = stages[kind]
        rotatable = stage.kind in ROTATABLE_STAGES and stage.augment.rotation >= degrees
        out[kind] = RotationAveraged(model, degrees) if rotatable else model
    return out
