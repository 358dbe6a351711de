"""Concept labels: read them, propagate them up a hierarchy, and lay them out as a sparse matrix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from neuronscan.errors import InputError

__all__ = [
    "LabelMatrix",
    "read_labels",
    "read_hierarchy",
    "read_concept_names",
    "build_label_matrix",
    "concept_depths",
    "ancestors_map",
]


def _read_table(path: str, *, csv: bool = False) -> pd.DataFrame:
    """A Parquet file as a DataFrame; with ``csv``, a ``.csv`` file too, every cell text ("NA" stays "NA")."""
    from neuronscan.io import get_fs

    fs, p = get_fs(path)
    if not fs.exists(p):
        raise InputError(f"file {path!r} does not exist")
    import pyarrow.parquet as pq

    with fs.open(p, "rb") as fh:
        if csv and str(path).lower().endswith(".csv"):
            try:
                return pd.read_csv(fh, dtype=str, keep_default_na=False, na_values=[""])
            except (ValueError, UnicodeDecodeError) as exc:
                raise InputError(f"{path!r} is not a readable CSV file: {exc}") from exc
        try:
            return pq.read_table(fh).to_pandas()
        except pa.ArrowInvalid as exc:
            raise InputError(f"{path!r} is not a readable Parquet file: {exc}") from exc


def read_labels(path: str) -> pd.DataFrame:
    """Read ``labels.parquet``: one row per positive ``(image_id int64, concept string)``.

    Raises:
        InputError: missing file, missing columns, no rows, or null values.
    """
    df = _read_table(path)
    missing = {"image_id", "concept"} - set(df.columns)
    if missing:
        raise InputError(
            f"labels file {path!r} lacks column(s) {sorted(missing)}; found {list(df.columns)}. "
            "Expected one row per positive: image_id (int64), concept (string)."
        )
    if len(df) == 0:
        raise InputError(f"labels file {path!r} has no rows: nothing to score against. Add (image_id, concept) rows.")
    if df["image_id"].isna().any() or df["concept"].isna().any():
        raise InputError(f"labels file {path!r} has null image_id or concept values")
    return pd.DataFrame({"image_id": _integer_ids(df["image_id"], path), "concept": df["concept"].astype(str)})


def _integer_ids(ids: pd.Series, path: str) -> np.ndarray:
    """``image_id`` as int64, refusing values that are not whole numbers (``img_0``, ``0.5``) instead of casting."""
    numeric = pd.to_numeric(ids, errors="coerce")
    values = numeric.to_numpy(dtype=np.float64, na_value=np.nan) if numeric.dtype.kind != "i" else None
    if values is not None:
        bad = ~np.isfinite(values) | (values != np.round(values)) | (np.abs(values) > 2**53)
        if bad.any():
            shown = [repr(v) for v in ids[bad].head(3).tolist()]
            raise InputError(
                f"labels file {path!r}: image_id must be whole numbers (the probe's image ids); "
                f"{int(bad.sum()):,} row(s) are not, e.g. {', '.join(shown)}"
            )
        return values.astype(np.int64)
    return numeric.to_numpy(dtype=np.int64)


def read_hierarchy(path: str) -> list[tuple[str, str]]:
    """Read ``(concept, parent)`` edges from Parquet or CSV (columns ``concept``, ``parent``; other columns, such
    as ``configs/imagenet_hierarchy.csv``'s wnids, are ignored), or YAML (``{parent: [child, ...]}`` or a list of
    pairs)."""
    if str(path).endswith((".yaml", ".yml")):
        import yaml

        if not Path(path).is_file():
            raise InputError(f"hierarchy file {path!r} does not exist")
        raw = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(raw, dict):
            edges = [(str(c), str(p)) for p, children in raw.items() for c in (children or [])]
        elif isinstance(raw, list):
            edges = [(str(c), str(p)) for c, p in raw]
        else:
            raise InputError(f"hierarchy {path!r}: expected a mapping parent: [children] or a list of [child, parent]")
    else:
        df = _read_table(path, csv=True)
        if not {"concept", "parent"} <= set(df.columns):
            raise InputError(f"hierarchy {path!r} needs columns concept, parent; found {list(df.columns)}")
        if df["concept"].isna().any() or df["parent"].isna().any():
            raise InputError(f"hierarchy {path!r} has empty concept or parent values")
        edges = list(zip(df["concept"].astype(str), df["parent"].astype(str)))
    ancestors_map(edges)  # raises on cycles
    return edges


def read_concept_names(path: str) -> dict[str, str]:
    """Read a renaming of concepts, ``id -> concept``, from Parquet or CSV with columns ``id``, ``concept``.

    ``id`` is a concept as the labels name it (an ImageNet class folder, ``n01440764``), ``concept`` the name to
    use instead (``tench``); ``configs/imagenet_concept_names.csv`` maps the 1,000 ImageNet-1k wnids to the
    leaves of ``configs/imagenet_hierarchy.csv``. Other columns are ignored.

    Raises:
        InputError: missing file or columns, no rows, empty values, or an id given twice.
    """
    df = _read_table(path, csv=True)
    missing = {"id", "concept"} - set(df.columns)
    if missing:
        raise InputError(f"concept names {path!r} lack column(s) {sorted(missing)}; found {list(df.columns)}")
    if len(df) == 0:
        raise InputError(f"concept names {path!r} have no rows")
    ids, names = df["id"], df["concept"]
    if ids.isna().any() or names.isna().any() or (names.astype(str).str.strip() == "").any():
        raise InputError(f"concept names {path!r} have empty id or concept values")
    ids = ids.astype(str)
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise InputError(f"concept names {path!r} give {len(repeated):,} id(s) twice, e.g. {repeated[:3]}")
    return dict(zip(ids, names.astype(str)))


def ancestors_map(edges: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Every concept's ancestors in a DAG of (child, parent) edges; raises InputError on a cycle."""
    parents: dict[str, set[str]] = {}
    for child, parent in edges:
        parents.setdefault(child, set()).add(parent)
        parents.setdefault(parent, set())
    memo: dict[str, set[str]] = {}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> set[str]:
        if state.get(node) == 2:
            return memo[node]
        if state.get(node) == 1:
            raise InputError(f"concept hierarchy has a cycle: {' -> '.join(path + [node])}")
        state[node] = 1
        acc: set[str] = set()
        for p in parents[node]:
            acc |= {p} | visit(p, path + [node])
        state[node] = 2
        memo[node] = acc
        return acc

    for node in parents:
        visit(node, [])
    return memo


def concept_depths(edges: list[tuple[str, str]]) -> dict[str, int]:
    """Depth of each concept: 0 for roots, 1 + max depth of its parents otherwise."""
    parents: dict[str, set[str]] = {}
    for child, parent in edges:
        parents.setdefault(child, set()).add(parent)
        parents.setdefault(parent, set())
    depth: dict[str, int] = {}

    def d(node: str) -> int:
        if node not in depth:
            depth[node] = 0 if not parents[node] else 1 + max(d(p) for p in parents[node])
        return depth[node]

    for node in parents:
        d(node)
    return depth


@dataclass
class LabelMatrix:
    """Binary labels aligned to a fixed image order.

    Attributes:
        matrix: (n_images, n_concepts) CSC bool matrix.
        image_ids: (n_images,) int64 — row order.
        concepts: concept names, column order.
        depth: (n_concepts,) int16 depth in the hierarchy, or None without one.
        report: counts of what was dropped or added, for run.json.
    """

    matrix: sp.csc_matrix
    image_ids: np.ndarray
    concepts: list[str]
    depth: np.ndarray | None
    report: dict = field(default_factory=dict)


def build_label_matrix(
    labels: pd.DataFrame,
    image_ids: np.ndarray,
    *,
    hierarchy: list[tuple[str, str]] | None = None,
) -> LabelMatrix:
    """Lay out long-format labels as a sparse matrix over ``image_ids``, propagating to ancestors.

    Labels naming images outside ``image_ids`` (failed or never probed) are counted in the report, not
    silently dropped; duplicate rows are counted and merged.
    """
    image_ids = np.asarray(image_ids, dtype=np.int64)
    if len(np.unique(image_ids)) != len(image_ids):
        raise InputError("image ids of the activations are not unique")
    report: dict = {"label_rows": int(len(labels))}
    df = labels[["image_id", "concept"]]
    dup = df.duplicated()
    report["duplicate_label_rows"] = int(dup.sum())
    df = df[~dup]
    if hierarchy:
        anc = ancestors_map(hierarchy)
        extra = [(i, a) for i, c in zip(df["image_id"], df["concept"]) for a in anc.get(c, ())]
        if extra:
            df = pd.concat([df, pd.DataFrame(extra, columns=["image_id", "concept"])], ignore_index=True)
            df = df.drop_duplicates()
        report["propagated_label_rows"] = len(extra)
    order = np.argsort(image_ids, kind="stable")
    sorted_ids = image_ids[order]
    ids = df["image_id"].to_numpy(np.int64)
    pos = np.searchsorted(sorted_ids, ids)
    pos_clipped = np.minimum(pos, len(sorted_ids) - 1)
    known = (len(sorted_ids) > 0) & (sorted_ids[pos_clipped] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
    unknown_ids = np.unique(ids[~known])
    report["labels_for_unprobed_images"] = int((~known).sum())
    report["unprobed_labelled_images"] = int(len(unknown_ids))
    report["unprobed_labelled_images_sample"] = [int(x) for x in unknown_ids[:10]]
    concepts = sorted(set(df["concept"]))
    if hierarchy:
        concepts = sorted(set(concepts) | {c for e in hierarchy for c in e})
    col_of = {c: j for j, c in enumerate(concepts)}
    rows = order[pos_clipped[known]]
    cols = np.fromiter((col_of[c] for c in df["concept"].to_numpy()[known]), dtype=np.int64, count=int(known.sum()))
    mat = sp.csc_matrix(
        (np.ones(len(rows), dtype=bool), (rows, cols)), shape=(len(image_ids), len(concepts)), dtype=bool
    )
    mat.sum_duplicates()
    depth = None
    if hierarchy:
        dmap = concept_depths(hierarchy)
        depth = np.array([dmap.get(c, 0) for c in concepts], dtype=np.int16)
    return LabelMatrix(mat, image_ids, concepts, depth, report)
