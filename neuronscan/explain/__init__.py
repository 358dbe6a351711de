"""Explainers of a layer: components learnt where single units are not interpretable, audited like units.

- `SparseAutoencoder` (``_sae.py``): TopK (with AuxK for dead components) or JumpReLU (straight-through estimator,
  L0 penalty) over a layer's per-image statistic, e.g. ``conv4:mean``;
- `PartExplainer` (``_part.py``): Zhang et al. (2019)'s explainer network on a conv layer's feature maps —
  interpretable encoder filters held to one part each by the part-template loss, a decoder that reconstructs
  the features, trained by distillation;
- ``_metrics.py``: explained variance, the model's accuracy with the reconstruction substituted, sparsity, dead
  components, location instability, and interpretability from the score stage's tables;
- ``_hooks.py``: reading and replacing a layer's output in the model.

The training dataflow (Ray Train) is ``pipelines/explain.py``; ``neuronscan explain-train CONFIG`` runs it.
"""

from neuronscan.explain._hooks import LayerTap, pooled, shift_to_statistic, split_layer_name
from neuronscan.explain._metrics import (
    AccuracyCounts,
    DistanceSums,
    VarianceSums,
    head_groups,
    interpretability,
    peak_fractions,
)
from neuronscan.explain._part import PartExplainer, part_template_loss, positive_templates, template_mask
from neuronscan.explain._sae import (
    SparseAutoencoder,
    fit_normaliser,
    normalise_decoder,
    remove_parallel_grad,
    sae_loss,
)

__all__ = [
    "AccuracyCounts",
    "DistanceSums",
    "LayerTap",
    "PartExplainer",
    "SparseAutoencoder",
    "VarianceSums",
    "fit_normaliser",
    "head_groups",
    "interpretability",
    "normalise_decoder",
    "part_template_loss",
    "peak_fractions",
    "pooled",
    "positive_templates",
    "remove_parallel_grad",
    "sae_loss",
    "shift_to_statistic",
    "split_layer_name",
    "template_mask",
]
