"""Build the ImageNet-1k concept hierarchy from WordNet 3.0, offline.

Reads WordNet's ``data.noun`` (Debian's ``wordnet-base``: ``/usr/share/wordnet``) with nothing but the
standard library, follows every hypernym (``@``) and instance-hypernym (``@i``) pointer from the 1,000
ImageNet-1k classes up to ``entity``, and writes the ``(concept, parent)`` edges of every such path::

    python tools/build_imagenet_hierarchy.py --wordnet-dir /usr/share/wordnet \\
        --synsets timm-1.0.31-py3-none-any.whl \\
        --out configs/imagenet_hierarchy.csv --names-out configs/imagenet_concept_names.csv

Outputs (CSV, UTF-8, ``\\n`` line ends, rows sorted):

- ``--out``: one row per edge, columns ``concept, parent, concept_wnid, parent_wnid``. A synset at offset
  ``NNNNNNNN`` of ``data.noun`` is wnid ``nNNNNNNNN``. ``neuronscan.concepts.read_hierarchy`` reads the
  ``concept`` and ``parent`` columns and ignores the wnid columns, which are there to look names up.
- ``--names-out``: the 1,000 classes in ImageNet's class-index order, columns ``id, concept`` (wnid,
  name): the ``data.concept_names`` file that turns class folders named by wnid into the hierarchy's leaves.

Concept names are the synset's first lemma with underscores as spaces (``n01440764`` -> ``tench``). A name
that two or more synsets of the hierarchy share (compared case-insensitively) gets its wnid on every one of
them, ``crane (n02012849)`` and ``crane (n03126707)``, so names are unique and the same on every rebuild.

The output is CSV rather than Parquet so that a review sees the edges as text and a rebuild is byte-identical
whatever the pyarrow version (a Parquet footer records the writer's version).

``--synsets`` is a text file of wnids (the first word of each line, ``#`` comments skipped), or a timm wheel or
source folder, in which ``timm/data/_info/imagenet_synsets.txt`` is read. The summary printed at the end gives
nodes, edges, the maximum depth (the longest path from ``entity``, as ``neuronscan.concepts.concept_depths``
counts it) and the number of nodes with two or more parents (WordNet is a DAG, not a tree).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import sys
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

ROOT_WNID = "n00001740"
"""``entity``: WordNet's single noun root."""

TIMM_SYNSETS = "timm/data/_info/imagenet_synsets.txt"
"""Where timm ships the 1,000 ImageNet-1k wnids, in class-index order."""

_HYPERNYM_POINTERS = ("@", "@i")


def read_wordnet_nouns(wordnet_dir: str | os.PathLike) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Every noun synset of ``WORDNET_DIR/data.noun``: wnid -> (first lemma, hypernym wnids in file order).

    A line is ``offset lex_filenum ss_type w_cnt (word lex_id){w_cnt} p_cnt (symbol offset pos source/target)
    {p_cnt} | gloss``; ``w_cnt`` is hexadecimal, ``p_cnt`` decimal. Lines that start with a space are the
    licence header.
    """
    path = Path(wordnet_dir) / "data.noun"
    if not path.is_file():
        raise SystemExit(f"{path} not found: install WordNet 3.0 (apt-get install wordnet-base) or pass --wordnet-dir")
    nouns: dict[str, tuple[str, tuple[str, ...]]] = {}
    with path.open(encoding="utf-8", errors="strict") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip() or line.startswith(" "):
                continue
            fields = line.split(" | ", 1)[0].split()
            try:
                offset, ss_type, w_cnt = fields[0], fields[2], int(fields[3], 16)
                lemma = fields[4]
                p_at = 4 + 2 * w_cnt
                p_cnt = int(fields[p_at])
                pointers = fields[p_at + 1 : p_at + 1 + 4 * p_cnt]
            except (IndexError, ValueError) as exc:
                raise SystemExit(f"{path}:{number}: not a WordNet data line ({exc})") from None
            if ss_type != "n" or len(pointers) != 4 * p_cnt:
                raise SystemExit(f"{path}:{number}: not a noun synset line")
            parents = tuple(
                f"n{pointers[i + 1]}"
                for i in range(0, len(pointers), 4)
                if pointers[i] in _HYPERNYM_POINTERS and pointers[i + 2] == "n"
            )
            nouns[f"n{offset}"] = (lemma.replace("_", " "), parents)
    return nouns


def read_synsets(source: str | os.PathLike) -> list[str]:
    """The class wnids, in file order: a text file, a timm wheel, or a folder holding timm's package data."""
    source = Path(source)
    if source.is_dir():
        candidates = [source / TIMM_SYNSETS, source / "data/_info/imagenet_synsets.txt",
                      source / "imagenet_synsets.txt"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise SystemExit(f"no imagenet_synsets.txt under {source}")
        text = found.read_text(encoding="utf-8")
    elif zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            try:
                text = wheel.read(TIMM_SYNSETS).decode("utf-8")
            except KeyError:
                raise SystemExit(f"{source} has no {TIMM_SYNSETS}: is it a timm wheel?") from None
    elif source.is_file():
        text = source.read_text(encoding="utf-8")
    else:
        raise SystemExit(f"--synsets {source} not found")
    wnids = [line.split()[0] for line in io.StringIO(text) if line.strip() and not line.startswith("#")]
    if len(set(wnids)) != len(wnids):
        raise SystemExit(f"{source}: repeated wnids")
    return wnids


def build_hierarchy(
    nouns: dict[str, tuple[str, tuple[str, ...]]], classes: Sequence[str]
) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The (child wnid, parent wnid) edges above ``classes`` and a unique readable name for every node.

    Raises:
        SystemExit: a class is not a noun synset, or a path ends anywhere but at ``entity``.
    """
    missing = [w for w in classes if w not in nouns]
    if missing:
        raise SystemExit(f"{len(missing)} class wnid(s) are not WordNet 3.0 noun synsets, e.g. {missing[:5]}")
    edges: set[tuple[str, str]] = set()
    seen: set[str] = set()
    stack = list(classes)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        parents = nouns[node][1]
        if not parents and node != ROOT_WNID:
            raise SystemExit(f"{node} ({nouns[node][0]}) has no hypernym but is not entity ({ROOT_WNID})")
        for parent in parents:
            if parent not in nouns:
                raise SystemExit(f"{node} points to {parent}, which data.noun does not hold")
            edges.add((node, parent))
            stack.append(parent)
    return sorted(edges), unique_names(seen, nouns)


def unique_names(wnids: Iterable[str], nouns: dict[str, tuple[str, tuple[str, ...]]]) -> dict[str, str]:
    """wnid -> its first lemma, or ``lemma (wnid)`` for a lemma that several of ``wnids`` share."""
    wnids = sorted(set(wnids))
    counts: dict[str, int] = {}
    for w in wnids:
        key = nouns[w][0].casefold()
        counts[key] = counts.get(key, 0) + 1
    names = {w: nouns[w][0] if counts[nouns[w][0].casefold()] == 1 else f"{nouns[w][0]} ({w})" for w in wnids}
    if len({n.casefold() for n in names.values()}) != len(names):
        raise SystemExit("concept names are not unique after adding wnids")
    return names


def summarise(edges: Sequence[tuple[str, str]], classes: Sequence[str]) -> dict[str, int]:
    """Nodes, edges, leaves, roots, max depth (longest path from a root) and nodes with two or more parents."""
    parents: dict[str, list[str]] = {}
    children: dict[str, int] = {}
    for child, parent in edges:
        parents.setdefault(child, []).append(parent)
        parents.setdefault(parent, [])
        children[parent] = children.get(parent, 0) + 1
    depth: dict[str, int] = {}
    for node in parents:  # iterative: WordNet paths are short, but recursion limits are not ours to assume
        stack = [node]
        while stack:
            top = stack[-1]
            if top in depth:
                stack.pop()
                continue
            todo = [p for p in parents[top] if p not in depth]
            if todo:
                stack.extend(todo)
            else:
                depth[top] = 1 + max((depth[p] for p in parents[top]), default=-1)
                stack.pop()
    return {
        "nodes": len(parents),
        "edges": len(edges),
        "leaves": sum(1 for n in parents if n not in children),
        "roots": sum(1 for n in parents if not parents[n]),
        "classes": len(classes),
        "max_depth": max(depth.values(), default=0),
        "multi_parent_nodes": sum(1 for n in parents if len(parents[n]) >= 2),
    }


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue().encode("utf-8"))
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--wordnet-dir", default="/usr/share/wordnet", help="folder of WordNet 3.0's data.noun")
    parser.add_argument("--synsets", required=True, help="wnid list, or a timm wheel / folder (imagenet_synsets.txt)")
    parser.add_argument("--out", required=True, help="hierarchy CSV to write (concept, parent, *_wnid)")
    parser.add_argument("--names-out", help="also write the classes' wnid -> concept CSV (id, concept) here")
    args = parser.parse_args(argv)

    nouns = read_wordnet_nouns(args.wordnet_dir)
    classes = read_synsets(args.synsets)
    edges, names = build_hierarchy(nouns, classes)
    rows = sorted(((names[c], names[p], c, p) for c, p in edges), key=lambda r: (r[0], r[1]))
    _write_csv(Path(args.out), ("concept", "parent", "concept_wnid", "parent_wnid"), rows)
    if args.names_out:
        _write_csv(Path(args.names_out), ("id", "concept"), ((w, names[w]) for w in classes))

    s = summarise(edges, classes)
    print(f"wrote {args.out}" + (f" and {args.names_out}" if args.names_out else ""))
    print(f"classes: {s['classes']:,}")
    print(f"nodes: {s['nodes']:,}")
    print(f"edges: {s['edges']:,}")
    print(f"leaves: {s['leaves']:,}")
    print(f"roots: {s['roots']:,} ({names[ROOT_WNID] if ROOT_WNID in names else '?'})")
    print(f"max depth: {s['max_depth']} (longest path from the root)")
    print(f"nodes with two or more parents: {s['multi_parent_nodes']:,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
