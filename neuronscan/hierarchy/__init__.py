"""Hierarchical concepts as HINT (Wang et al. 2022) studies them: which units work together for a concept at
every level of the hierarchy, and which units mix concepts that only meet near the root.

Numbers in, numbers out (numpy; no Ray, no I/O): the hierarchy stage (``pipelines/hierarchy.py``,
``neuronscan hierarchy RUN``) reads a run and calls these.

- `collaborative_units` (``_collab.py``): greedy forward selection of a layer's units for a joint linear
  probe of a concept, until its held-out AUC reaches a target; each unit's exact Shapley share.
- `fit_logistic`, `auc_score` (``_probe.py``): the batched L2 logistic regression and the AUC it is judged by.
- `ConceptDag`, `multimodal_pairs` (``_dag.py``): lowest common ancestors on the concept DAG; units aligned
  with two concepts that meet only at or above a chosen depth.
- ``_schemas.py``: the files the stage writes and their Arrow schemas.
- `analyse_concept`, `saliency_maps`, `box_iou` (``_spatial.py``): HINT's spatial method — saliency-defined
  responsible regions, a position-level concept classifier, Shapley channel ranking and localisation IoU
  (run by ``pipelines/hierarchy_spatial.py``, ``run_spatial``, with the settings of the run config's
  ``hierarchy.spatial``, `SpatialSection`); the files it writes and their schemas.

The report imports the file names and schemas from here to find the tables in a run directory.
"""

from neuronscan.hierarchy._collab import (
    CollaborativeSet,
    CollabParams,
    Split,
    collaborative_units,
    concept_split,
    linear_shapley,
    shapley_shares,
)
from neuronscan.hierarchy._dag import NO_PAIR, ConceptDag, UnitPairs, multimodal_pairs
from neuronscan.hierarchy._probe import LogisticFit, auc_score, balanced_weights, fit_logistic, unit_aucs
from neuronscan.hierarchy._schemas import (
    CONCEPT_UNITS_FILE,
    CONCEPT_UNITS_SCHEMA,
    HIERARCHY_SUMMARY_FILE,
    HIERARCHY_UNITS_FILE,
    HIERARCHY_UNITS_SCHEMA,
    MULTIMODAL_UNITS_FILE,
    MULTIMODAL_UNITS_SCHEMA,
)
from neuronscan.hierarchy._spatial import (
    CONCEPT_SPATIAL_FILE,
    CONCEPT_SPATIAL_SCHEMA,
    LOCALISATION_FILE,
    LOCALISATION_SCHEMA,
    SPATIAL_SUMMARY_FILE,
    SpatialSection,
    analyse_concept,
    box_iou,
    saliency_maps,
)

__all__ = [
    "CollabParams",
    "CollaborativeSet",
    "Split",
    "collaborative_units",
    "concept_split",
    "linear_shapley",
    "shapley_shares",
    "ConceptDag",
    "UnitPairs",
    "multimodal_pairs",
    "NO_PAIR",
    "LogisticFit",
    "auc_score",
    "balanced_weights",
    "fit_logistic",
    "unit_aucs",
    "CONCEPT_UNITS_FILE",
    "CONCEPT_UNITS_SCHEMA",
    "HIERARCHY_SUMMARY_FILE",
    "HIERARCHY_UNITS_FILE",
    "HIERARCHY_UNITS_SCHEMA",
    "MULTIMODAL_UNITS_FILE",
    "MULTIMODAL_UNITS_SCHEMA",
    "CONCEPT_SPATIAL_FILE",
    "CONCEPT_SPATIAL_SCHEMA",
    "LOCALISATION_FILE",
    "LOCALISATION_SCHEMA",
    "SPATIAL_SUMMARY_FILE",
    "SpatialSection",
    "analyse_concept",
    "box_iou",
    "saliency_maps",
]
