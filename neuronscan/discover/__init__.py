"""Concept discovery and importance: CRAFT and its holistic framework (Fel et al., CVPR 2023 and NeurIPS 2023).

The model is cut at a layer into ``g`` (input → non-negative latent) and ``h`` (latent → logits); the latents
of a class's images — of crops of them (CRAFT) or of every feature-map position (holistic CRAFT) — are
factorised ``A ≈ U · W`` (NMF by default), and each discovered concept (a row of W) gets an importance for the
class logit (Sobol total indices, gradient × input, occlusion), concept-level fidelity metrics (C-Deletion,
C-Insertion, C-µFidelity), and the class's strategies (images grouped by their dominant concept, with
prevalence and reliability).

Modules: `_extraction` (the split and the crops), `_factorise` (the dictionary), `_importance`, `_metrics`,
`_strategies`, `_craft` (the whole method for one class, `discover_class`) and `_schemas` (the files under
``RUN/discover/``). The stage that runs it over a probed run's classes on Ray is ``pipelines/discover.py``.
"""

import importlib

_LAZY = {
    "competing_outputs": "neuronscan.discover._classes",
    "output_names": "neuronscan.discover._classes",
    "ClassResult": "neuronscan.discover._craft",
    "CraftSettings": "neuronscan.discover._craft",
    "IMPORTANCE_METHODS": "neuronscan.discover._craft",
    "Rows": "neuronscan.discover._craft",
    "activation_rows": "neuronscan.discover._craft",
    "discover_class": "neuronscan.discover._craft",
    "image_statistic": "neuronscan.discover._craft",
    "CropGrid": "neuronscan.discover._extraction",
    "ModelSplit": "neuronscan.discover._extraction",
    "STRIDE_FRACTION": "neuronscan.discover._extraction",
    "crop_activations": "neuronscan.discover._extraction",
    "crop_grid": "neuronscan.discover._extraction",
    "extract_crops": "neuronscan.discover._extraction",
    "position_boxes": "neuronscan.discover._extraction",
    "Factorisation": "neuronscan.discover._factorise",
    "METHODS": "neuronscan.discover._factorise",
    "NONNEGATIVE_METHODS": "neuronscan.discover._factorise",
    "fit_factorisation": "neuronscan.discover._factorise",
    "concept_logit_fn": "neuronscan.discover._importance",
    "gradient_input_importance": "neuronscan.discover._importance",
    "jansen_total_indices": "neuronscan.discover._importance",
    "masked_logits": "neuronscan.discover._importance",
    "occlusion_importance": "neuronscan.discover._importance",
    "sobol_design": "neuronscan.discover._importance",
    "sobol_importance": "neuronscan.discover._importance",
    "concept_curves": "neuronscan.discover._metrics",
    "curve_auc": "neuronscan.discover._metrics",
    "hoyer_sparsity": "neuronscan.discover._metrics",
    "matched_cosine": "neuronscan.discover._metrics",
    "mu_fidelity": "neuronscan.discover._metrics",
    "mu_fidelity_from_drops": "neuronscan.discover._metrics",
    "mu_fidelity_subsets": "neuronscan.discover._metrics",
    "reconstruction_error": "neuronscan.discover._metrics",
    "subset_drops": "neuronscan.discover._metrics",
    "zero_fraction": "neuronscan.discover._metrics",
    "dominant_concepts": "neuronscan.discover._strategies",
    "prevalence": "neuronscan.discover._strategies",
    "reliability": "neuronscan.discover._strategies",
    "strategy_frame": "neuronscan.discover._strategies",
}
"""Public name → the module that defines it: imported on first use, so that reading the stage's file names
(`_schemas`) or the config loads no torch."""

__all__ = [
    "IMPORTANCE_METHODS", "METHODS", "NONNEGATIVE_METHODS", "STRIDE_FRACTION", "ClassResult", "CraftSettings",
    "CropGrid", "Factorisation", "ModelSplit", "Rows", "activation_rows", "competing_outputs", "concept_curves",
    "concept_logit_fn", "crop_activations", "crop_grid", "curve_auc", "discover_class", "dominant_concepts",
    "extract_crops", "fit_factorisation", "gradient_input_importance", "hoyer_sparsity", "image_statistic",
    "jansen_total_indices", "masked_logits", "matched_cosine", "mu_fidelity", "mu_fidelity_from_drops",
    "mu_fidelity_subsets", "occlusion_importance", "output_names", "position_boxes", "prevalence",
    "reconstruction_error", "reliability", "sobol_design", "sobol_importance", "strategy_frame", "subset_drops",
    "zero_fraction",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'neuronscan.discover' has no attribute {name!r}")
