"""The ImageNet-1k WordNet hierarchy: the committed files, label propagation on a DAG, and the build script."""

from __future__ import annotations

import importlib.util
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from neuronscan.concepts import ancestors_map, build_label_matrix, concept_depths, read_hierarchy
from neuronscan.concepts._labels import read_concept_names
from neuronscan.config import config_from_dict
from neuronscan.errors import InputError
from pipelines._inputs import plan_inputs

ROOT = Path(__file__).resolve().parents[3]
HIERARCHY = ROOT / "configs" / "imagenet_hierarchy.csv"
NAMES = ROOT / "configs" / "imagenet_concept_names.csv"
SCRIPT = ROOT / "tools" / "build_imagenet_hierarchy.py"


def _script():
    spec = importlib.util.spec_from_file_location("build_imagenet_hierarchy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _longest_depths(edges):
    """Longest path from a root, by relaxing edges until nothing changes (independent of concept_depths)."""
    nodes = {n for e in edges for n in e}
    depth = dict.fromkeys(nodes, 0)
    for _ in range(len(nodes)):
        changed = False
        for child, parent in edges:
            if depth[parent] + 1 > depth[child]:
                depth[child], changed = depth[parent] + 1, True
        if not changed:
            return depth
    raise AssertionError("cycle")


def _propagated(edges, concept):
    """The label matrix of one image labelled ``concept``, and its positive concepts."""
    labels = pd.DataFrame({"image_id": [7], "concept": [concept]})
    lm = build_label_matrix(labels, np.array([7]), hierarchy=edges)
    return lm, {lm.concepts[j] for j in lm.matrix.tocoo().col}


# --- label propagation and depth on a DAG -------------------------------------------------------------------

SMALL_DAG = [  # x has two parents; p1 sits deeper than p2, so x's shortest and longest paths differ
    ("x", "p1"), ("x", "p2"), ("p1", "g"), ("g", "root"), ("p2", "root"), ("other", "root"),
]


def test_a_two_parent_node_labels_both_parents_and_every_ancestor_once():
    lm, positives = _propagated(SMALL_DAG, "x")
    assert positives == {"x", "p1", "p2", "g", "root"}
    column_sums = np.asarray(lm.matrix.sum(axis=0)).ravel()
    assert lm.matrix.nnz == 5 and set(column_sums.tolist()) == {0, 1}
    assert column_sums[lm.concepts.index("other")] == 0
    assert lm.report["propagated_label_rows"] == 4  # root is reached through p1 and p2 but added once


def test_depth_is_the_longest_path_from_a_root():
    depths = concept_depths(SMALL_DAG)
    assert depths == {"root": 0, "g": 1, "p2": 1, "other": 1, "p1": 2, "x": 3}  # the shortest path to x is 2
    lm, _ = _propagated(SMALL_DAG, "x")
    assert dict(zip(lm.concepts, lm.depth.tolist())) == depths


def test_a_real_two_parent_leaf_reaches_both_parents_and_all_their_ancestors_once():
    edges = read_hierarchy(str(HIERARCHY))
    parents = sorted(p for c, p in edges if c == "accordion")
    assert parents == ["free-reed instrument", "keyboard instrument"]
    lm, positives = _propagated(edges, "accordion")
    expected = {"accordion"} | ancestors_map(edges)["accordion"]
    assert {"free-reed instrument", "keyboard instrument", "musical instrument", "artifact", "entity"} <= expected
    assert positives == expected
    assert lm.matrix.nnz == len(expected) and np.asarray(lm.matrix.sum(axis=0)).max() == 1
    depths = concept_depths(edges)
    # free-reed instrument -> wind instrument -> musical instrument is one step longer than keyboard instrument's
    assert depths["accordion"] == 1 + max(depths[p] for p in parents) == 10
    assert depths["free-reed instrument"] == depths["keyboard instrument"] + 1


# --- the committed files --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def committed():
    frame = pd.read_csv(HIERARCHY, dtype=str, keep_default_na=False)
    names = pd.read_csv(NAMES, dtype=str, keep_default_na=False)
    return frame, names, read_hierarchy(str(HIERARCHY))


def test_the_committed_hierarchy_has_the_1000_classes_as_leaves_under_one_root(committed):
    frame, names, edges = committed
    assert list(frame.columns) == ["concept", "parent", "concept_wnid", "parent_wnid"]
    assert list(names.columns) == ["id", "concept"]
    wnids = names["id"].tolist()
    assert len(wnids) == len(set(wnids)) == 1000 and wnids == sorted(wnids)  # ImageNet's class-index order
    assert all(re.fullmatch(r"n\d{8}", w) for w in wnids)
    children, parents = set(frame["concept"]), set(frame["parent"])
    leaves = children - parents
    assert leaves == set(names["concept"])
    assert set(frame.loc[frame["concept"].isin(leaves), "concept_wnid"]) == set(wnids)
    assert parents - children == {"entity"}
    assert set(frame.loc[frame["parent"] == "entity", "parent_wnid"]) == {"n00001740"}
    anc = ancestors_map(edges)  # raises on a cycle
    assert all("entity" in anc[leaf] for leaf in leaves)
    assert all(node == "entity" or "entity" in anc[node] for node in anc)


def test_committed_names_are_readable_unique_and_one_per_wnid(committed):
    frame, names, _ = committed
    pairs = pd.concat([
        frame[["concept", "concept_wnid"]].set_axis(["name", "wnid"], axis=1),
        frame[["parent", "parent_wnid"]].set_axis(["name", "wnid"], axis=1),
    ]).drop_duplicates()
    assert pairs["name"].is_unique and pairs["wnid"].is_unique
    assert pairs["name"].str.casefold().is_unique
    assert not pairs["name"].str.contains("_").any()
    by_wnid = dict(zip(pairs["wnid"], pairs["name"]))
    assert by_wnid["n01440764"] == "tench"
    assert by_wnid["n02012849"] == "crane (n02012849)" and by_wnid["n03126707"] == "crane (n03126707)"
    assert by_wnid["n02113186"] == "Cardigan (n02113186)" and by_wnid["n02963159"] == "cardigan (n02963159)"
    assert not frame.duplicated(["concept", "parent"]).any()
    assert dict(zip(names["id"], names["concept"])) == {w: by_wnid[w] for w in names["id"]}


def test_committed_figures_match_the_docs(committed):
    frame, _, edges = committed
    depths = concept_depths(edges)
    assert depths == _longest_depths(edges)
    n_parents = Counter(frame["concept"])
    figures = (len(depths), len(edges), max(depths.values()), sum(1 for n in n_parents.values() if n >= 2))
    assert figures == (1860, 1937, 18, 75)
    for doc in (ROOT / "README.md", ROOT / "docs" / "data-contracts.md"):
        text = doc.read_text()
        assert "1,860 nodes" in text and "1,937 edges" in text and "max depth 18" in text, doc.name
        assert "75 nodes with two or more parents" in text, doc.name


def test_the_imagenet_config_uses_the_committed_files():
    import yaml

    data = yaml.safe_load((ROOT / "configs" / "imagenet_resnet50.yaml").read_text())["data"]
    assert (ROOT / data["hierarchy"]) == HIERARCHY and (ROOT / data["concept_names"]) == NAMES


# --- reading: CSV hierarchies, concept names, the plan ----------------------------------------------------------

def test_read_hierarchy_reads_csv_and_ignores_extra_columns(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("concept,parent,concept_wnid,note\nNA,null,n1,x\n\"a, b\",NA,n2,\n")
    assert read_hierarchy(str(path)) == [("NA", "null"), ("a, b", "NA")]
    pq_path = tmp_path / "h.parquet"
    pd.DataFrame({"concept": ["a"], "parent": ["b"], "concept_wnid": ["n1"]}).to_parquet(pq_path)
    assert read_hierarchy(str(pq_path)) == [("a", "b")]


def test_read_hierarchy_refuses_empty_cells_and_cycles(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("concept,parent\na,\n")
    with pytest.raises(InputError, match="empty concept or parent"):
        read_hierarchy(str(path))
    path.write_text("concept,parent\na,b\nb,a\n")
    with pytest.raises(InputError, match="cycle"):
        read_hierarchy(str(path))


def test_read_concept_names(tmp_path):
    path = tmp_path / "names.csv"
    path.write_text("id,concept,extra\nn1,tench,x\nn2,NA,\n")
    assert read_concept_names(str(path)) == {"n1": "tench", "n2": "NA"}
    assert len(read_concept_names(str(NAMES))) == 1000
    for text, message in (("id,concept\nn1,a\nn1,b\n", r"give 1 id\(s\) twice"), ("id,name\nn1,a\n", "lack column"),
                          ("id,concept\nn1,\n", "empty id or concept"), ("id,concept\n", "no rows")):
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            read_concept_names(str(path))


def test_wnid_folders_label_images_with_the_hierarchy_leaves(tmp_path):
    for folder, name in (("n01440764", "a.jpg"), ("n02012849", "b.jpg"), ("n03126707", "c.jpg"), ("other", "d.jpg")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / name).write_bytes(b"x")
    cfg = config_from_dict({
        "data": {"folder": str(tmp_path), "concept_names": str(NAMES), "hierarchy": str(HIERARCHY)},
        "model": {"name": "resnet18", "layers": ["layer4"]},
    })
    plan = plan_inputs(cfg)
    assert plan.labels.sort_values("image_id")["concept"].tolist() == [
        "tench", "crane (n02012849)", "crane (n03126707)", "other"]  # a folder the names do not hold keeps its name
    assert plan.listing["concepts"].tolist()[0] == ["n01440764"]  # the listing keeps the folder names
    assert plan.source["concept_names"] == str(NAMES)
    lm = build_label_matrix(plan.labels, plan.listing["image_id"].to_numpy(), hierarchy=plan.hierarchy)
    col = lm.concepts.index("bird")
    assert lm.matrix[:, col].toarray().ravel().tolist() == [False, True, False, False]
    assert lm.matrix[:, lm.concepts.index("entity")].toarray().ravel().tolist() == [True, True, True, False]


# --- the build script ------------------------------------------------------------------------------------------

FIXTURE_NOUNS = """\
  1 This software and database is being provided to you, the LICENSEE, by
  2 Princeton University under the following license.
00001740 03 n 01 entity 0 002 ~ 00002000 n 0000 ~ 00003000 n 0000 | that which is perceived
00002000 03 n 01 object 0 001 @ 00001740 n 0000 | a physical thing
00003000 03 n 02 abstraction 0 abstract_entity 0 001 @ 00001740 n 0000 | a general concept
00004000 06 n 01 crane 0 002 @ 00002000 n 0000 + 01234567 v 0101 | lifts things
00005000 05 n 02 crane 0 Grus 0 001 @ 00006000 n 0000 | a bird
00006000 05 n 01 wading_bird 0 001 @ 00002000 n 0000 | a bird of the shallows
00007000 06 n 01 toy_crane 1 002 @ 00004000 n 0000 @ 00003000 n 0000 | a crane and an idea
00008000 18 n 01 Ada_Lovelace 0 001 @i 00003000 n 0000 | an instance
00009000 03 n 01 unused 0 001 @ 00001740 n 0000 | not above any class
"""


def _fixture(tmp_path):
    wordnet = tmp_path / "wordnet"
    wordnet.mkdir()
    (wordnet / "data.noun").write_text(FIXTURE_NOUNS)
    synsets = tmp_path / "synsets.txt"
    synsets.write_text("n00007000\nn00005000\nn00008000\n")
    return wordnet, synsets


def test_the_script_is_deterministic_and_disambiguates_shared_names(tmp_path, capsys):
    build = _script()
    wordnet, synsets = _fixture(tmp_path)
    outputs = []
    for run in ("a", "b"):
        out, names = tmp_path / run / "h.csv", tmp_path / run / "names.csv"
        assert build.main(["--wordnet-dir", str(wordnet), "--synsets", str(synsets), "--out", str(out),
                           "--names-out", str(names)]) == 0
        outputs.append((out.read_bytes(), names.read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0].decode() == (
        "concept,parent,concept_wnid,parent_wnid\n"
        "Ada Lovelace,abstraction,n00008000,n00003000\n"
        "abstraction,entity,n00003000,n00001740\n"
        "crane (n00004000),object,n00004000,n00002000\n"
        "crane (n00005000),wading bird,n00005000,n00006000\n"
        "object,entity,n00002000,n00001740\n"
        "toy crane,abstraction,n00007000,n00003000\n"
        "toy crane,crane (n00004000),n00007000,n00004000\n"
        "wading bird,object,n00006000,n00002000\n"
    )
    assert outputs[0][1].decode() == (
        "id,concept\nn00007000,toy crane\nn00005000,crane (n00005000)\nn00008000,Ada Lovelace\n")
    printed = capsys.readouterr().out
    for line in ("nodes: 8", "edges: 8", "leaves: 3", "roots: 1 (entity)", "max depth: 3",
                 "nodes with two or more parents: 1"):
        assert line in printed
    edges = read_hierarchy(str(tmp_path / "a" / "h.csv"))
    assert max(concept_depths(edges).values()) == 3


def test_the_script_refuses_a_class_that_is_not_a_noun_synset(tmp_path):
    build = _script()
    wordnet, synsets = _fixture(tmp_path)
    synsets.write_text("n00007000\nn99999999\n")
    with pytest.raises(SystemExit, match="not WordNet 3.0 noun synsets"):
        build.main(["--wordnet-dir", str(wordnet), "--synsets", str(synsets), "--out", str(tmp_path / "h.csv")])


def _timm_synsets() -> str | None:
    """A timm wheel (``$NEURONSCAN_TIMM_WHEEL``) or the installed timm package's folder, whichever is there."""
    wheel = os.environ.get("NEURONSCAN_TIMM_WHEEL")
    if wheel and Path(wheel).is_file():
        return wheel
    spec = importlib.util.find_spec("timm")  # finds the package without importing it (and torch)
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent
        if (folder / "data" / "_info" / "imagenet_synsets.txt").is_file():
            return str(folder)
    return None


def test_the_script_regenerates_the_committed_files_byte_for_byte(tmp_path):
    wordnet = Path(os.environ.get("NEURONSCAN_WORDNET_DIR", "/usr/share/wordnet"))
    if not (wordnet / "data.noun").is_file():
        pytest.skip(f"WordNet 3.0 is not installed ({wordnet}/data.noun): apt-get install wordnet-base, "
                    "or set NEURONSCAN_WORDNET_DIR")
    synsets = _timm_synsets()
    if synsets is None:
        pytest.skip("no timm ImageNet synset list: pip install timm, or set NEURONSCAN_TIMM_WHEEL to a timm wheel")
    out, names = tmp_path / "h.csv", tmp_path / "names.csv"
    assert _script().main(["--wordnet-dir", str(wordnet), "--synsets", synsets, "--out", str(out),
                           "--names-out", str(names)]) == 0
    assert out.read_bytes() == HIERARCHY.read_bytes()
    assert names.read_bytes() == NAMES.read_bytes()
