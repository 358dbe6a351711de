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

from neuronscan.discover._classes import competing_outputs, output_names
from neuronscan.discover._craft import (
    IMPORTANCE_METHODS,
    ClassResult,
    CraftSettings,
    Rows,
    activation_rows,
    discover_class,
    image_statistic,
)
from neuronscan.discover._extraction import (
    STRIDE_FRACTION,
    CropGrid,
    ModelSplit,
    crop_activations,
    crop_grid,
    extract_crops,
    position_boxes,
)
from neuronscan.discover._factorise import METHODS, NONNEGATIVE_METHODS, Factorisation, fit_factorisation
from neuronscan.discover._importance import (
    concept_logit_fn,
    gradient_input_importance,
    jansen_total_indices,
    masked_logits,
    occlusion_importance,
    sobol_design,
    sobol_importance,
)
from neuronscan.discover._metrics import (
    concept_curves,
    curve_auc,
    hoyer_sparsity,
    matched_cosine,
    mu_fidelity,
    mu_fidelity_from_drops,
    mu_fidelity_subsets,
    reconstruction_error,
    subset_drops,
    zero_fraction,
)
from neuronscan.discover._strategies import dominant_concepts, prevalence, reliability, strategy_frame

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
