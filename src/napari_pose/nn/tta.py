"""Flip test-time augmentation: average a model's maps over the frame and its mirror image.

A model sees each input twice, as it is and mirrored left/right, in one forward pass (the two
halves of a doubled batch), and the mirrored half's maps are mirrored back and averaged with
the first half's. Errors that depend on which way an animal faces then partly cancel: this
is SLEAP's and DeepLabCut's flip test-time augmentation, for twice the model cost.

Pixel alignment: output column ``j`` is input pixel ``x = j * stride`` (``peaks``). A plain
``torch.flip`` of an input ``W`` wide maps ``x`` to ``W - 1 - x``, so output column ``j`` of
the mirrored pass would be input pixel ``W - 1 - j * stride``, between two output columns for
any stride above 1 (a map resampled there would blur and bias the peaks). Instead the input is
mirrored about ``x = c / 2`` with ``c`` the nearest multiple of the stride at or above
``W - 1`` (``c = W`` for the usual widths, multiples of the stride): a flip plus a shift by a
whole number of input pixels, zero-filled like the padding frames get. Output columns then map
onto output columns exactly, and mirroring the maps back is a flip plus a whole-column shift:
no resampling at all. The ``c - W + 1`` input columns shifted out (one, at the far edge) and
the output columns with no mirrored counterpart keep the unaugmented values alone.

A mirror image shows a left wing where the right wing was, so the mirrored pass draws node
``j`` in the channel of its partner ``mirror[j]`` (as ``augment.swap_symmetric`` swaps
training points): ``confmaps`` channels are swapped back by ``mirror``; ``centroids`` (one
map, one point per animal) need no swap. Part-affinity fields (bottom-up models) would need
their x component negated and their edges remapped to the mirrored edges: not supported here,
so a model with a ``pafs`` head is refused.
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
