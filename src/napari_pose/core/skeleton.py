"""Skeleton editing that keeps instances consistent, skeleton files, and built-in templates.

The labelling GUI edits a skeleton while instances of it exist, so every operation that adds,
deletes or reorders nodes must also add, drop or permute the matching point columns. Two places
hold such columns:

- ``PoseArrays`` (our working copy): use :func:`with_node`, :func:`delete_node` and
  :func:`reorder_nodes` here. They edit ``arrays.skeleton`` **in place** (sleap-io's own
  methods) and return new arrays whose columns match it. The skeleton is edited rather than
  copied because the ``Labels`` the arrays came from, its layers and ``arrays_to_labels(arrays,
  template=labels)`` all share that one object; any *other* arrays of the same skeleton are stale
  afterwards and must be passed through the same function (or rebuilt).
- An eager (materialised) ``sio.Labels``: sleap-io already updates its instances in
  ``labels.rename_nodes({old: new})``, ``labels.remove_nodes([name])`` and
  ``labels.reorder_nodes(order)``; only adding a node is missing (:func:`add_node_in_labels`).
  Lazy labels cannot be edited this way (sleap-io 0.9.5 edits the skeleton, then fails on the raw
  point table, leaving the two inconsistent); edit their ``PoseArrays`` and write them back with
  ``arrays_to_labels(arrays, template=labels)`` instead, and never read the lazy labels again.

Renaming, edges and symmetries change no point column: the functions taking a bare skeleton
cover them for both holders.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import attrs
import numpy as np
import sleap_io as sio
import yaml

from napari_pose.core.dlc import CONFIG_SUFFIXES, config_edges, read_dlc_config
from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import atomic_write, load_labels, repeated_node
from napari_pose.core.pose_arrays import PoseArrays

__all__ = [
    "TEMPLATES",
    "add_edge",
    "add_node",
    "add_node_in_labels",
    "delete_node",
    "load_skeleton",
    "points_lost",
    "remove_edge",
    "remove_symmetry",
    "rename_node",
    "reorder_nodes",
    "save_skeleton",
    "set_symmetry",
    "with_node",
]

# PoseArrays fields with one column per node, which node edits must keep aligned.
_NODE_FIELDS = ("xy", "visible", "complete", "point_score")
# A never-placed point in sleap-io's per-instance point records.
_MISSING_POINT = {"xy": np.nan, "visible": False, "complete": False, "score": np.nan}


# --------------------------------------------------------------------------------------------
# Skeleton-only edits
# --------------------------------------------------------------------------------------------


def _node(skeleton: sio.Skeleton, name: str) -> sio.Node:
    """The node called ``name``, or a ValueError that names it (sleap-io raises a bare KeyError)."""
    if name not in skeleton:
        raise ValueError(f"the skeleton has no node {name!r}")
    return skeleton[name]


def _pair(skeleton: sio.Skeleton, a: str, b: str) -> tuple[sio.Node, sio.Node]:
    """Nodes ``a`` and ``b``, which must be two different nodes of ``skeleton``.

    Checked here because sleap-io's ``add_edge``/``add_symmetry`` silently *add* unknown nodes,
    which would leave the skeleton with more nodes than the instances have points.
    """
    if a == b:
        raise ValueError(f"node {a!r} cannot be paired with itself")
    return _node(skeleton, a), _node(skeleton, b)


def _check_new_name(skeleton: sio.Skeleton, name: str) -> None:
    if not name.strip():
        raise ValueError("a node name cannot be empty")
    if name in skeleton:
        raise ValueError(f"the skeleton already has a node {name!r}")


def add_node(skeleton: sio.Skeleton, name: str) -> None:
    """Append a node called ``name`` to ``skeleton`` (in place).

    Instances of the skeleton then lack a point for it: use :func:`with_node` for arrays or
    :func:`add_node_in_labels` for a ``Labels`` instead when instances exist.
    """
    _check_new_name(skeleton, name)
    skeleton.add_node(name)


def rename_node(skeleton: sio.Skeleton, old: str, new: str) -> None:
    """Rename node ``old`` to ``new`` (in place); a no-op when the names are equal.

    Instances hold the node objects themselves, so they see the new name at once. For the
    skeleton of an eager ``Labels`` call ``labels.rename_nodes({old: new})`` instead: each
    sleap-io instance also stores point names, which ``labels.remove_nodes``/``reorder_nodes``
    match against later, and a stale name there silently drops the renamed node's points.
    """
    _node(skeleton, old)
    if new != old:
        _check_new_name(skeleton, new)
        skeleton.rename_node(old, new)


def add_edge(skeleton: sio.Skeleton, a: str, b: str) -> None:
    """Connect ``a`` to ``b`` (in place).

    Does nothing when they are already connected in either direction: edges are drawn
    undirected, so a reversed duplicate would only draw the same line twice.
    """
    source, destination = _pair(skeleton, a, b)
    if not any({e.source.name, e.destination.name} == {a, b} for e in skeleton.edges):
        skeleton.add_edge(source, destination)


def remove_edge(skeleton: sio.Skeleton, a: str, b: str) -> None:
    """Remove the edge between ``a`` and ``b``, whichever its direction (in place)."""
    _pair(skeleton, a, b)
    kept = [e for e in skeleton.edges if {e.source.name, e.destination.name} != {a, b}]
    if len(kept) == len(skeleton.edges):
        raise ValueError(f"no edge between {a!r} and {b!r}")
    skeleton.edges = kept


def set_symmetry(skeleton: sio.Skeleton, a: str, b: str) -> None:
    """Make ``a`` and ``b`` a left/right pair (in place), replacing any pair either was in.

    A node mirrors exactly one other: flip augmentation swaps each node with its partner
    (``Skeleton.get_flipped_node_inds``), where a second pair would silently override the first.
    """
    pair = _pair(skeleton, a, b)
    skeleton.symmetries = [s for s in skeleton.symmetries if s.nodes.isdisjoint(pair)]
    skeleton.add_symmetry(*pair)


def remove_symmetry(skeleton: sio.Skeleton, a: str, b: str) -> None:
    """Remove the left/right pairing of ``a`` and ``b`` (in place)."""
    _pair(skeleton, a, b)
    kept = [s for s in skeleton.symmetries if {n.name for n in s.nodes} != {a, b}]
    if len(kept) == len(skeleton.symmetries):
        raise ValueError(f"{a!r} and {b!r} are not a symmetric pair")
    skeleton.symmetries = kept


# --------------------------------------------------------------------------------------------
# Node edits carried through to instances
# --------------------------------------------------------------------------------------------


def _with_columns(arrays: PoseArrays, columns: np.ndarray | list[int]) -> PoseArrays:
    """``arrays`` with only the node ``columns``, in that order (fresh copies, rows untouched)."""
    return attrs.evolve(arrays, **{f: getattr(arrays, f)[:, columns] for f in _NODE_FIELDS})


def points_lost(arrays: PoseArrays, name: str) -> int:
    """How many placed points (occluded ones included) deleting node ``name`` would discard."""
    column = arrays.skeleton.index(_node(arrays.skeleton, name))
    return int(np.isfinite(arrays.xy[:, column, 0]).sum())


def with_node(arrays: PoseArrays, name: str) -> PoseArrays:
    """Add node ``name`` to ``arrays.skeleton`` (in place) and return arrays with its column.

    The new column is missing (NaN, not visible) in every instance.
    """
    add_node(arrays.skeleton, name)
    blank = PoseArrays.empty(arrays.skeleton, arrays.videos, arrays.tracks, len(arrays))
    for field in _NODE_FIELDS:
        getattr(blank, field)[:, :-1] = getattr(arrays, field)
    return attrs.evolve(arrays, **{field: getattr(blank, field) for field in _NODE_FIELDS})


def delete_node(arrays: PoseArrays, name: str) -> PoseArrays:
    """Delete node ``name`` from ``arrays.skeleton`` (in place); return arrays without its column.

    Edges and symmetries involving the node go with it (``Skeleton.remove_node``). Ask the user
    first when :func:`points_lost` is not zero: the points cannot be recovered.
    """
    column = arrays.skeleton.index(_node(arrays.skeleton, name))
    arrays.skeleton.remove_node(name)
    return _with_columns(arrays, np.delete(np.arange(arrays.xy.shape[1]), column))


def reorder_nodes(arrays: PoseArrays, new_order: list[str]) -> PoseArrays:
    """Put ``arrays.skeleton``'s nodes in ``new_order`` (in place) and permute columns to match.

    ``new_order`` must name every node exactly once; sleap-io does not check for repeats, and a
    repeated name would replace another node (and its points) without a word.
    """
    skeleton = arrays.skeleton
    if sorted(new_order) != sorted(skeleton.node_names):
        raise ValueError(
            f"new order {new_order} must name each node of {skeleton.node_names} exactly once"
        )
    columns = [skeleton.index(name) for name in new_order]
    skeleton.reorder_nodes(new_order)
    return _with_columns(arrays, columns)


def relayout(arrays: PoseArrays, old_nodes: list[sio.Node]) -> PoseArrays:
    """Arrays whose columns follow ``old_nodes``, re-laid for ``arrays.skeleton``'s nodes now.

    For the other arrays sharing a skeleton after a node edit went through one of them (e.g.
    predictions after a node was deleted via the user labels): columns follow their node
    objects, which survive renames and reordering; added nodes are missing, deleted ones go.
    """
    new_nodes = arrays.skeleton.nodes
    position = {id(node): i for i, node in enumerate(old_nodes)}
    kept = [(i, position[id(node)]) for i, node in enumerate(new_nodes) if id(node) in position]
    target, source = (list(column) for column in zip(*kept)) if kept else ([], [])
    blank = PoseArrays.empty(arrays.skeleton, arrays.videos, arrays.tracks, len(arrays))
    for field in _NODE_FIELDS:
        getattr(blank, field)[:, target] = getattr(arrays, field)[:, source]
    return attrs.evolve(arrays, **{field: getattr(blank, field) for field in _NODE_FIELDS})


def add_node_in_labels(labels: sio.Labels, name: str, skeleton: sio.Skeleton | None = None) -> None:
    """Add node ``name`` to ``skeleton`` (default: the only one) and a missing point for it to
    each of its instances in ``labels`` (in place).

    sleap-io has no ``Labels`` method for this: a skeleton longer than its instances' points
    breaks both indexing by the new node and saving, and ``Instance.update_skeleton`` alone
    leaves the new point uninitialised (``np.empty``), i.e. a random "placed" point.
    """
    if labels.is_lazy:
        raise ValueError("lazy labels are read-only: edit their PoseArrays, or materialise them")
    if skeleton is None:
        skeleton = labels.skeleton
    add_node(skeleton, name)
    for inst in labels.instances:
        if inst.skeleton is skeleton:
            inst.update_skeleton()  # keeps points by name; the new slot is uninitialised memory
            point = inst.points[-1:]
            for field in _MISSING_POINT.keys() & set(point.dtype.names):
                point[field] = _MISSING_POINT[field]


# --------------------------------------------------------------------------------------------
# Skeleton files
# --------------------------------------------------------------------------------------------


def load_skeleton(path: str | Path) -> sio.Skeleton:
    """Read a skeleton from SLEAP skeleton JSON, a ``.slp`` (its first skeleton) or a DeepLabCut
    ``config.yaml`` (body parts and ``skeleton`` edges).

    Raises:
        PoseFileError: The file is missing or unreadable, or holds no usable skeleton (no nodes,
            or repeated node names, which would make nodes impossible to tell apart).
    """
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a skeleton file" if path.is_dir() else "file not found"
        raise PoseFileError(path, problem)
    suffix = path.suffix.lower()
    if suffix == ".slp":
        skeletons = load_labels(path).skeletons
    elif suffix in CONFIG_SUFFIXES:
        skeletons = [_dlc_skeleton(path)]
    else:
        skeletons = _json_skeletons(path)
    if not skeletons:
        raise PoseFileError(path, "holds no skeleton")
    if not skeletons[0].node_names:
        raise PoseFileError(path, "the skeleton has no nodes")
    repeated = repeated_node(skeletons[0])
    if repeated is not None:
        raise PoseFileError(path, repeated)
    return skeletons[0]


def _json_skeletons(path: Path) -> list[sio.Skeleton]:
    """Skeletons of a SLEAP skeleton JSON (or training config) file."""
    try:
        loaded = sio.load_skeleton(path)
    except Exception as exc:  # sleap-io lets JSON, Unicode and key errors escape as they are
        raise PoseFileError(
            path, f"not a SLEAP skeleton JSON file ({type(exc).__name__}: {exc})"
        ) from exc
    return loaded if isinstance(loaded, list) else [loaded]


def _dlc_skeleton(path: Path) -> sio.Skeleton:
    """The skeleton of a DLC project config; multi-animal projects list ``bodyparts: MULTI!``."""
    try:
        config = read_dlc_config(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PoseFileError(path, f"not a readable YAML file ({type(exc).__name__})") from exc
    if config is None:
        raise PoseFileError(path, "not a DeepLabCut config.yaml (no bodyparts listed)")
    parts = config.get("bodyparts")
    if not isinstance(parts, list):
        parts = (config.get("multianimalbodyparts") or []) + (config.get("uniquebodyparts") or [])
    parts = [str(part) for part in parts]
    return sio.Skeleton(
        nodes=parts,
        edges=config_edges(config, parts),
        name=str(config["Task"]) if config.get("Task") else None,
    )


def save_skeleton(skeleton: sio.Skeleton, path: str | Path) -> None:
    """Write ``skeleton`` as SLEAP skeleton JSON (whatever the extension), atomically.

    Raises:
        PoseFileError: The file could not be written; any old file at ``path`` is left intact.
    """
    path = Path(path)
    try:
        atomic_write(path, lambda tmp: tmp.write_text(_sleap_json(skeleton), encoding="utf-8"))
    except OSError as exc:
        raise PoseFileError(path, f"could not be written ({exc.strerror or exc})") from exc


def _sleap_json(skeleton: sio.Skeleton) -> str:
    """SLEAP's standalone skeleton JSON: jsonpickle of the skeleton's networkx node-link graph.

    jsonpickle writes each object in full once and refers back to it as ``{"py/id": n}``, ``n``
    counting nodes *and* edge types in order of first appearance; ``nodes`` lists node order
    through such references. sleap-io 0.9.5's ``encode_skeleton`` numbers nodes and edge types
    separately, so its references point at the wrong objects: its own reader then falls back
    to the order nodes appear in edges, silently permuting every instance's points.
    """
    ids: dict[object, int] = {}

    def ref(key: object, full: dict) -> dict:
        if key in ids:
            return {"py/id": ids[key]}
        ids[key] = len(ids) + 1
        return full

    def node(n: sio.Node) -> dict:
        return ref(n, {"py/object": "sleap.skeleton.Node", "py/state": {"py/tuple": [n.name, 1.0]}})

    def kind(value: int) -> dict:  # EdgeType: 1 edge, 2 symmetry
        edge_type = {"py/reduce": [{"py/type": "sleap.skeleton.EdgeType"}, {"py/tuple": [value]}]}
        return ref(("type", value), edge_type)

    links = [
        {
            "edge_insert_idx": i,
            "key": 0,
            "source": node(e.source),
            "target": node(e.destination),
            "type": kind(1),
        }
        for i, e in enumerate(skeleton.edges)
    ]
    # SLEAP stores a symmetry as a pair of opposite links; order them by node for stable files.
    for symmetry in skeleton.symmetries:
        a, b = sorted(symmetry.nodes, key=skeleton.index)
        for source, target in ((a, b), (b, a)):
            links.append(
                {"key": 0, "source": node(source), "target": node(target), "type": kind(2)}
            )
    graph = {"name": skeleton.name, "num_edges_inserted": len(skeleton.edges)}
    nodes = [{"id": node(n)} for n in skeleton.nodes]  # full objects for nodes in no link
    return json.dumps(
        {"directed": True, "graph": graph, "links": links, "multigraph": True, "nodes": nodes}
    )


# --------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------


def _fly() -> sio.Skeleton:
    """SLEAP's 13-node fly (the skeleton of its ``clip.slp`` example), with left/right pairs.

    Nodes and edges are exactly SLEAP's, in its order; SLEAP's file declares no symmetries, which
    flip augmentation needs, so the five L/R pairs are added.
    """
    limbs = ["wingL", "wingR", "forelegL4", "forelegR4", "midlegL4", "midlegR4"]
    limbs += ["hindlegL4", "hindlegR4"]
    return sio.Skeleton(
        nodes=["head", "thorax", "abdomen", *limbs, "eyeL", "eyeR"],
        edges=[("thorax", n) for n in ["head", "abdomen", *limbs]]
        + [("head", "eyeL"), ("head", "eyeR")],
        symmetries=[*zip(limbs[::2], limbs[1::2]), ("eyeL", "eyeR")],
        name="fly",
    )


def _mouse() -> sio.Skeleton:
    """A top-view mouse: head and tail chains branching from the body centre."""
    return sio.Skeleton(
        nodes=["snout", "left_ear", "right_ear", "neck", "body_center"]
        + ["tail_base", "tail_mid", "tail_end"],
        edges=[
            ("body_center", "neck"),
            ("neck", "snout"),
            ("neck", "left_ear"),
            ("neck", "right_ear"),
            ("body_center", "tail_base"),
            ("tail_base", "tail_mid"),
            ("tail_mid", "tail_end"),
        ],
        symmetries=[("left_ear", "right_ear")],
        name="mouse",
    )


#: Built-in skeletons to start a project from; each call builds a new, independent skeleton.
TEMPLATES: dict[str, Callable[[], sio.Skeleton]] = {"fly": _fly, "mouse": _mouse}
