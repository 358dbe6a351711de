"""Resolve a config's data section into the probe's input listing and concept labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from neuronscan.concepts import read_hierarchy, read_labels
from neuronscan.concepts._labels import read_concept_names
from neuronscan.config import RunConfig
from neuronscan.data import labels_from_listing, list_image_folder, read_manifest
from neuronscan.errors import InputError

__all__ = ["ProbeInputs", "plan_inputs"]


@dataclass
class ProbeInputs:
    """What to probe (``listing``: image_id, uri, concepts) and the labels to score against."""

    listing: pd.DataFrame
    labels: pd.DataFrame
    hierarchy: list[tuple[str, str]] = field(default_factory=list)
    source: dict = field(default_factory=dict)


def plan_inputs(cfg: RunConfig) -> ProbeInputs:
    """List the inputs named by ``cfg.data`` and gather their labels.

    ``data.concept_names`` renames the gathered labels' concepts (from the source and from ``data.labels``), so that
    class folders named by wnid label images with the readable leaves of a hierarchy; the listing keeps the
    folder names.

    Raises:
        InputError: a missing folder or manifest, an empty labels file, an unreadable hierarchy.
    """
    data = cfg.data
    hierarchy: list[tuple[str, str]] = []
    if data.shapes_world is not None:
        from neuronscan.demo.shapes import generate_shapes_world

        sw = data.shapes_world
        generate_shapes_world(sw.root, n_images=sw.n_images, seed=sw.seed, size=sw.size)
        listing = read_manifest(str(Path(sw.root) / "manifest.parquet"))
        hierarchy = read_hierarchy(str(Path(sw.root) / "hierarchy.parquet"))
        source = {"kind": "shapes_world", **sw.model_dump()}
    elif data.folder is not None:
        try:
            listing = list_image_folder(data.folder)
        except (ValueError, FileNotFoundError) as exc:
            raise InputError(f"data.folder: {exc}") from exc
        source = {"kind": "folder", "folder": data.folder}
    else:
        try:
            listing = read_manifest(data.manifest)
        except (ValueError, FileNotFoundError) as exc:
            raise InputError(f"data.manifest: {exc}") from exc
        source = {"kind": "manifest", "manifest": data.manifest}
    if data.limit is not None:
        listing = listing.iloc[: data.limit].reset_index(drop=True)
    labels = labels_from_listing(listing)
    if data.labels:
        extra = read_labels(data.labels)
        labels = pd.concat([labels, extra], ignore_index=True).drop_duplicates(ignore_index=True)
    if data.concept_names:
        names = read_concept_names(data.concept_names)
        renamed = labels["concept"].map(lambda c: names.get(c, c)).astype(labels["concept"].dtype)
        labels = labels.assign(concept=renamed).drop_duplicates(ignore_index=True)
        source["concept_names"] = data.concept_names
    if data.hierarchy:
        hierarchy = read_hierarchy(data.hierarchy)
    if len(labels) == 0:
        raise InputError(
            "no concept labels: the inputs carry no concepts (class folders or a manifest 'concepts' column) "
            "and data.labels is not set. Point data.labels at a labels.parquet of (image_id, concept) rows."
        )
    source["n_inputs"] = int(len(listing))
    return ProbeInputs(listing.reset_index(drop=True), labels, hierarchy, source)
