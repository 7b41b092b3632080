"""Skeleton edits keep instances consistent; skeleton files and templates load as SLEAP's do."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sleap_io as sio

from napari_pose.core.errors import PoseFileError
from napari_pose.core.io import load_labels, save_labels
from napari_pose.core.pose_arrays import arrays_to_labels, labels_to_arrays
from napari_pose.core.skeleton import (
    TEMPLATES,
    add_edge,
    add_node,
    add_node_in_labels,
    delete_node,
    load_skeleton,
    points_lost,
    remove_edge,
    remove_symmetry,
    rename_node,
    reorder_nodes,
    save_skeleton,
    set_symmetry,
    with_node,
)


@pytest.fixture
def clip(data_dir):
    return data_dir / "sleap" / "tracks" / "clip.slp"


@pytest.fixture
def lazy_labels(clip):
    return sio.load_slp(clip, lazy=True, open_videos=False)


@pytest.fixture
def arrays(lazy_labels):
    """Fresh arrays per test: node edits change their skeleton in place."""
    return labels_to_arrays(lazy_labels)


def edge_set(skeleton: sio.Skeleton) -> set[tuple[str, str]]:
    return set(skeleton.edge_names)


def symmetry_set(skeleton: sio.Skeleton) -> set[frozenset[str]]:
    return {frozenset(n.name for n in s.nodes) for s in skeleton.symmetries}


def assert_columns_follow_names(new, old, old_names: list[str]) -> None:
    """Every node column of ``new`` holds the data ``old`` had under the same node name."""
    for name in set(new.skeleton.node_names) & set(old_names):
        i, j = new.skeleton.index(name), old_names.index(name)
        for field in ("xy", "visible", "complete", "point_score"):
            np.testing.assert_array_equal(
                getattr(new, field)[:, i], getattr(old, field)[:, j], err_msg=f"{field} {name}"
            )


# --- skeleton-only edits -----------------------------------------------------------------------


def test_add_node_appends_and_refuses_duplicates_and_empty_names():
    skeleton = TEMPLATES["mouse"]()
    add_node(skeleton, "tail_tip")
    assert skeleton.node_names[-1] == "tail_tip"
    assert skeleton.index("tail_tip") == 8
    for bad in ("snout", "", "  "):
        with pytest.raises(ValueError):
            add_node(skeleton, bad)
    assert len(skeleton) == 9


def test_rename_node_is_seen_through_instances_of_labels(clip):
    labels = sio.load_slp(clip, open_videos=False)
    inst = labels.labeled_frames[0].instances[0]
    head = inst["head"].copy()
    rename_node(labels.skeleton, "head", "snout")
    np.testing.assert_array_equal(inst["snout"], head)
    assert "head" not in labels.skeleton
    assert ("thorax", "snout") in labels.skeleton.edge_names
    with pytest.raises(ValueError, match="already has"):
        rename_node(labels.skeleton, "snout", "thorax")
    with pytest.raises(ValueError, match="no node"):
        rename_node(labels.skeleton, "head", "nose")
    rename_node(labels.skeleton, "snout", "snout")  # renaming to itself is not a clash
    assert labels.skeleton.node_names[0] == "snout"


def test_labels_rename_then_remove_keeps_the_renamed_points(clip):
    """The documented Labels route: sleap-io's rename keeps the stored point names in step."""
    labels = sio.load_slp(clip, open_videos=False)
    inst = labels.labeled_frames[0].instances[0]
    head, thorax = inst["head"]["xy"].copy(), inst["thorax"]["xy"].copy()
    labels.rename_nodes({"head": "snout"})
    labels.remove_nodes(["abdomen"])
    np.testing.assert_array_equal(inst["snout"]["xy"], head)
    np.testing.assert_array_equal(inst["thorax"]["xy"], thorax)
    assert len(inst.points) == 12


def test_edges_add_once_remove_either_way_and_never_add_nodes():
    skeleton = TEMPLATES["mouse"]()
    n_edges = len(skeleton.edges)
    add_edge(skeleton, "left_ear", "right_ear")
    add_edge(skeleton, "right_ear", "left_ear")  # same line: ignored
    add_edge(skeleton, "left_ear", "right_ear")
    assert len(skeleton.edges) == n_edges + 1
    assert ("left_ear", "right_ear") in skeleton.edge_names

    remove_edge(skeleton, "right_ear", "left_ear")
    assert len(skeleton.edges) == n_edges
    with pytest.raises(ValueError, match="no edge"):
        remove_edge(skeleton, "left_ear", "right_ear")
    for a, b in [("snout", "tail_tip"), ("snout", "snout")]:
        with pytest.raises(ValueError):
            add_edge(skeleton, a, b)
    assert len(skeleton) == 8  # sleap-io alone would have added "tail_tip"


def test_set_symmetry_replaces_old_pairs_and_remove_symmetry():
    skeleton = TEMPLATES["fly"]()
    set_symmetry(skeleton, "wingL", "forelegR4")  # both were in other pairs
    assert frozenset({"wingL", "forelegR4"}) in symmetry_set(skeleton)
    assert frozenset({"wingL", "wingR"}) not in symmetry_set(skeleton)
    assert frozenset({"forelegL4", "forelegR4"}) not in symmetry_set(skeleton)
    assert len(skeleton.symmetries) == 4
    flipped = skeleton.get_flipped_node_inds()
    assert flipped[skeleton.index("wingL")] == skeleton.index("forelegR4")
    assert flipped[skeleton.index("wingR")] == skeleton.index("wingR")

    remove_symmetry(skeleton, "forelegR4", "wingL")
    assert len(skeleton.symmetries) == 3
    with pytest.raises(ValueError, match="not a symmetric pair"):
        remove_symmetry(skeleton, "wingL", "forelegR4")
    with pytest.raises(ValueError):
        set_symmetry(skeleton, "eyeL", "eyeL")
    with pytest.raises(ValueError):
        set_symmetry(skeleton, "eyeL", "antenna")
    assert len(skeleton) == 13


# --- node edits on PoseArrays ------------------------------------------------------------------


def test_delete_node_drops_its_column_edges_and_symmetries(arrays):
    old_names = arrays.skeleton.node_names
    set_symmetry(arrays.skeleton, "wingL", "wingR")
    set_symmetry(arrays.skeleton, "eyeL", "eyeR")
    placed = np.isfinite(arrays.xy[:, old_names.index("wingL"), 0]).sum()
    assert placed > 0
    assert points_lost(arrays, "wingL") == placed

    new = delete_node(arrays, "wingL")
    assert new.skeleton is arrays.skeleton  # edited in place, shared with the labels
    assert new.skeleton.node_names == [n for n in old_names if n != "wingL"]
    assert new.xy.shape == (len(arrays), 12, 2) and new.point_score.shape == (len(arrays), 12)
    assert_columns_follow_names(new, arrays, old_names)
    assert all("wingL" not in edge for edge in new.skeleton.edge_names)
    assert len(new.skeleton.edges) == 11
    assert symmetry_set(new.skeleton) == {frozenset({"eyeL", "eyeR"})}
    np.testing.assert_array_equal(new.frame, arrays.frame)
    with pytest.raises(ValueError, match="no node"):
        delete_node(new, "wingL")


def test_deleted_node_round_trips_through_labels_and_slp(arrays, lazy_labels, tmp_path):
    new = delete_node(arrays, "abdomen")
    save_labels(arrays_to_labels(new, template=lazy_labels), tmp_path / "out.slp")
    back = labels_to_arrays(load_labels(tmp_path / "out.slp"))
    assert back.skeleton.node_names == new.skeleton.node_names
    np.testing.assert_array_equal(back.xy, new.xy)
    np.testing.assert_array_equal(back.visible, new.visible)


def test_reorder_nodes_permutes_columns_by_name(arrays):
    old_names = arrays.skeleton.node_names
    edges = edge_set(arrays.skeleton)
    order = old_names[::-1]
    new = reorder_nodes(arrays, order)
    assert new.skeleton.node_names == order
    assert edge_set(new.skeleton) == edges
    assert_columns_follow_names(new, arrays, old_names)
    np.testing.assert_array_equal(new.xy[:, 0], arrays.xy[:, -1])


@pytest.mark.parametrize(
    "order",
    [lambda n: n[:-1], lambda n: [n[0], *n[:-1]], lambda n: [*n[:-1], "tail"], lambda n: n + n],
    ids=["missing", "repeated", "unknown", "doubled"],
)
def test_reorder_nodes_rejects_anything_but_a_permutation(arrays, order):
    names = arrays.skeleton.node_names
    with pytest.raises(ValueError, match="exactly once"):
        reorder_nodes(arrays, order(names))
    assert arrays.skeleton.node_names == names


def test_with_node_appends_a_missing_column(arrays):
    old_names = arrays.skeleton.node_names
    new = with_node(arrays, "tail")
    assert new.skeleton.node_names == [*old_names, "tail"]
    assert np.isnan(new.xy[:, -1]).all() and not new.visible[:, -1].any()
    assert not new.complete[:, -1].any() and np.isnan(new.point_score[:, -1]).all()
    assert_columns_follow_names(new, arrays, old_names)
    assert points_lost(new, "tail") == 0
    with pytest.raises(ValueError, match="already has"):
        with_node(new, "tail")
    assert new.xy.shape[1] == len(new.skeleton) == 14


def test_add_node_in_labels_pads_every_instance(clip, tmp_path):
    labels = sio.load_slp(clip, open_videos=False)
    add_node_in_labels(labels, "tail")
    assert all(len(inst.points) == 14 for inst in labels.instances)
    inst = labels.labeled_frames[0].instances[0]
    assert np.isnan(inst["tail"]["xy"]).all() and not inst["tail"]["visible"]
    labels.save(tmp_path / "out.slp")  # fails if any instance lacks the new point
    back = sio.load_slp(tmp_path / "out.slp", open_videos=False)
    assert back.skeleton.node_names[-1] == "tail"
    saved = back.labeled_frames[0].instances[0].numpy()
    np.testing.assert_array_equal(saved[:13], inst.numpy()[:13])
    assert np.isnan(saved[13]).all()


def test_add_node_in_labels_refuses_lazy_labels(lazy_labels):
    with pytest.raises(ValueError, match="lazy"):
        add_node_in_labels(lazy_labels, "tail")
    assert len(lazy_labels.skeleton) == 13


# --- templates ---------------------------------------------------------------------------------


def test_fly_template_is_sleaps_fly_skeleton(clip):
    sleap = sio.load_slp(clip, lazy=True, open_videos=False).skeleton
    fly = TEMPLATES["fly"]()
    assert fly.node_names == sleap.node_names
    assert edge_set(fly) == edge_set(sleap) and len(fly.edges) == len(sleap.edges)
    # SLEAP's file has no symmetries; ours are the L/R pairs sleap-io infers from the names.
    assert sleap.symmetries == []
    inferred = {frozenset(fly.node_names[i] for i in p) for p in sleap.infer_symmetries_by_name()}
    assert symmetry_set(fly) == inferred and len(inferred) == 5


def test_mouse_template_and_templates_are_independent():
    mouse = TEMPLATES["mouse"]()
    assert mouse.node_names == ["snout", "left_ear", "right_ear", "neck", "body_center",
                                "tail_base", "tail_mid", "tail_end"]  # fmt: skip
    assert symmetry_set(mouse) == {frozenset({"left_ear", "right_ear"})}
    # a tree: every node but the root is reached by exactly one edge
    targets = sorted(dst for _, dst in mouse.edge_names)
    assert targets == sorted(set(mouse.node_names) - {"body_center"})
    add_node(mouse, "tail_tip")
    rename_node(mouse, "snout", "nose")
    assert TEMPLATES["mouse"]().node_names[0] == "snout" and len(TEMPLATES["mouse"]()) == 8


# --- files -------------------------------------------------------------------------------------


SKELETONS = {
    **TEMPLATES,
    # nodes in no edge, and edges that do not start at the first node
    "isolated": lambda: sio.Skeleton(["a", "b", "c", "d"], edges=[("c", "b")], name="isolated"),
    "single": lambda: sio.Skeleton(["centroid"], name="single"),
}


@pytest.mark.parametrize("name", sorted(SKELETONS))
def test_json_save_load_round_trip(tmp_path, name):
    skeleton = SKELETONS[name]()
    path = tmp_path / "skeleton.json"
    path.write_text("old")
    save_skeleton(skeleton, path)
    back = load_skeleton(path)
    assert back.node_names == skeleton.node_names  # node order is column order
    assert back.edge_names == skeleton.edge_names
    assert symmetry_set(back) == symmetry_set(skeleton)
    assert back.name == name
    assert [p.name for p in tmp_path.iterdir()] == ["skeleton.json"]  # no temporary left over
    assert sio.load_skeleton(path).node_names == skeleton.node_names  # sleap-io reads it too


def test_save_skeleton_into_missing_folder_is_a_pose_file_error(tmp_path):
    with pytest.raises(PoseFileError) as err:
        save_skeleton(TEMPLATES["fly"](), tmp_path / "nowhere" / "s.json")
    assert err.value.path == tmp_path / "nowhere" / "s.json"


def test_load_sleap_skeleton_json(data_dir):
    skeleton = load_skeleton(data_dir / "sleap" / "skeleton" / "fly_skeleton_legs.json")
    assert len(skeleton) == 24 and skeleton.node_names[:3] == ["head", "neck", "thorax"]
    assert ("thorax", "neck") in skeleton.edge_names and ("neck", "head") in skeleton.edge_names


def test_load_skeleton_from_slp(clip):
    skeleton = load_skeleton(clip)
    assert skeleton.node_names == TEMPLATES["fly"]().node_names
    assert len(skeleton.edges) == 12


def test_load_dlc_config(data_dir):
    skeleton = load_skeleton(data_dir / "deeplabcut" / "openfield" / "config.yaml")
    assert skeleton.node_names == ["snout", "leftear", "rightear", "tailbase"]
    assert skeleton.edges == [] and skeleton.name == "openfield"


def test_load_multi_animal_dlc_config(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "Task: mice\nmultianimalproject: true\nbodyparts: MULTI!\n"
        "multianimalbodyparts: [nose, tail]\nuniquebodyparts: [corner]\n"
        "skeleton:\n- [nose, tail]\n- [nose, ghost]\n"
    )
    with pytest.warns(UserWarning, match="ghost"):
        skeleton = load_skeleton(path)
    assert skeleton.node_names == ["nose", "tail", "corner"]
    assert skeleton.edge_names == [("nose", "tail")]


BAD_FILES = {
    "garbage.json": "not json {",
    "empty.json": json.dumps({"nodes": []}),
    "list.json": "[]",
    "no_bodyparts.yaml": "Task: x\nscorer: me\n",
    "broken.yaml": "bodyparts: [a, b\n",
    "repeated.yaml": "bodyparts: [a, b, a]\n",
    "garbage.slp": "not hdf5",
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_skeleton_files_raise_pose_file_error(tmp_path, name):
    path = tmp_path / name
    path.write_text(BAD_FILES[name])
    with pytest.raises(PoseFileError) as err:
        load_skeleton(path)
    assert err.value.path == path


def test_missing_skeleton_file_and_folder(tmp_path):
    with pytest.raises(PoseFileError, match="not found"):
        load_skeleton(tmp_path / "absent.json")
    with pytest.raises(PoseFileError, match="folder"):
        load_skeleton(tmp_path)


def jsonpickle_refs(doc: dict) -> tuple[list, list]:
    """Resolve ``py/id`` references as jsonpickle (and so SLEAP) does: every ``py/object`` and
    ``py/reduce`` in document order takes the next id. Returns the node list and the links as
    ``(kind, value)`` pairs, e.g. ``("node", "head")`` or ``("type", 1)``."""
    objects = []

    def walk(x):
        if isinstance(x, dict):
            if "py/object" in x or "py/reduce" in x:
                objects.append(x)
            for value in x.values():
                walk(value)
        elif isinstance(x, list):
            for value in x:
                walk(value)

    def what(ref):
        obj = objects[ref["py/id"] - 1] if "py/id" in ref else ref
        if "py/object" in obj:
            return "node", obj["py/state"]["py/tuple"][0]
        return "type", obj["py/reduce"][1]["py/tuple"][0]

    walk(doc)
    nodes = [what(n["id"]) for n in doc["nodes"]]
    links = [(what(x["source"]), what(x["target"]), what(x["type"])) for x in doc["links"]]
    return nodes, links


def test_saved_json_references_resolve_as_in_sleaps_own_files(data_dir, tmp_path):
    sleap_file = json.loads((data_dir / "sleap/skeleton/fly_skeleton_legs.json").read_text())
    nodes, links = jsonpickle_refs(sleap_file)
    assert nodes[:3] == [("node", "head"), ("node", "neck"), ("node", "thorax")]
    assert links[1] == (("node", "thorax"), ("node", "neck"), ("type", 1))  # a py/id type

    fly = TEMPLATES["fly"]()
    save_skeleton(fly, tmp_path / "fly.json")
    nodes, links = jsonpickle_refs(json.loads((tmp_path / "fly.json").read_text()))
    assert nodes == [("node", name) for name in fly.node_names]
    edges = [(s[1], t[1]) for s, t, kind in links if kind == ("type", 1)]
    assert edges == fly.edge_names
    symmetric = {frozenset((s[1], t[1])) for s, t, kind in links if kind == ("type", 2)}
    assert symmetric == symmetry_set(fly)
