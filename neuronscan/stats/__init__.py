"""Score kernels: numbers in, numbers out (numpy/scipy only; no Ray, no I/O, no config).

Rank each unit once (:func:`rank_units`), then every (unit, concept) score follows from the ranks:
AUC and Mann-Whitney U from rank sums, p-values from U and the unit's ties, average precision from
each concept's positives in rank order (:func:`score_block` does all of them), Benjamini-Hochberg
q-values over a run (:func:`bh_qvalues`) and permutation p-values for chosen pairs
(:func:`permutation_pvalues`). :func:`prepare_labels` lays a label matrix out once for many
blocks of units.
"""

from ._auc import auc_from_ranks, rank_sums
from ._auprc import ConceptLayout, average_precision, prepare_labels
from ._clipcorr import clip_correlation, clip_correlation_from_moments, clip_moments, embedding_covariance
from ._compositional import Formula, compositional_search, compositional_search_units
from ._fdr import bh_qvalues
from ._mannwhitney import mannwhitney_pvalues
from ._metrics import METRIC_KEYS, label_metrics
from ._permutation import PermutationDraws, permutation_draws, permutation_pvalues
from ._ranking import UnitRanks, rank_units
from ._sanity import SANITY_METRICS, SanityResult, sanity_checks
from ._score import score_block
from ._significance import aligned_mask, best_concepts, multimodal_units, significant_mask, summarize_units
from ._simulation import holdout_mask, simulation_scores
from ._wpmi import (
    soft_wpmi,
    soft_wpmi_log_conditional,
    soft_wpmi_log_conditional_from_top,
    soft_wpmi_log_prior,
    top_image_indices,
    top_mean_cosine,
)

__all__ = [
    "Formula",
    "compositional_search",
    "compositional_search_units",
    "clip_correlation",
    "clip_correlation_from_moments",
    "clip_moments",
    "embedding_covariance",
    "soft_wpmi",
    "soft_wpmi_log_conditional",
    "soft_wpmi_log_conditional_from_top",
    "soft_wpmi_log_prior",
    "top_image_indices",
    "top_mean_cosine",
    "ConceptLayout",
    "UnitRanks",
    "auc_from_ranks",
    "average_precision",
    "bh_qvalues",
    "mannwhitney_pvalues",
    "METRIC_KEYS",
    "PermutationDraws",
    "SANITY_METRICS",
    "SanityResult",
    "holdout_mask",
    "label_metrics",
    "permutation_draws",
    "permutation_pvalues",
    "prepare_labels",
    "rank_sums",
    "rank_units",
    "sanity_checks",
    "score_block",
    "simulation_scores",
    "aligned_mask",
    "best_concepts",
    "multimodal_units",
    "significant_mask",
    "summarize_units",
]
