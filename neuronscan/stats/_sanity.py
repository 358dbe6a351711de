"""NeuronEval's sanity checks of explanation metrics, run on neuronscan's own kernels.

The two tests (Oikarinen et al., "Evaluating Neuron Explanations: A Unified Framework with Sanity
Checks", ICML 2025; the theoretical setting of their ``theoretical_sanity_check.ipynb``): a simulated
unit fires (value 1, else 0) on exactly the images of a concept of frequency ``gamma``; its true
explanation is that concept. A good metric must score it lower when the explanation is

* **missing labels**: the concept with each positive dropped with probability 1/2;
* **extra labels**: the concept plus each negative image with probability ``n / (N - n)`` (twice the
  positives in expectation).

For each metric, frequency and seed the score difference is normalised by the metric's range (1, or 2
for correlation); the check counts a seed as a *decrease* when the difference is below ``-epsilon``
(NeuronEval's default 0.001). A metric **passes** a test when it decreases in at least ``min_pass`` of
the seeds at every frequency.

Metrics: the ones the score stage reports, computed by the same functions (``auc`` and ``auprc`` from
:func:`score_block`, ``f1``, ``iou``, ``correlation`` and ``cosine`` from :func:`label_metrics`), and two
controls that are known to fail one test each (``recall`` = |T ∩ C| / |C| fails missing labels,
``precision`` = |T ∩ C| / |T| fails extra labels), which check the check. F1, IoU, recall and precision
need a top set T: with ``top_quantile=None`` it is the unit's active images (``top_quantile = gamma``,
NeuronEval's unbinarised setting), else the fixed fraction the score stage uses — a unit whose concept
is rarer than that fraction then has every image in its top set (ties at 0), and those metrics lose
their sensitivity there, which the table shows.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from ._metrics import label_metrics, top_set_threshold
from ._score import score_block

__all__ = ["SANITY_METRICS", "SanityResult", "sanity_checks"]

SANITY_METRICS = ("auc", "auprc", "f1", "iou", "correlation", "cosine", "recall", "precision")
_RANGE = {"correlation": 2.0}
_CONTROLS = ("recall", "precision")


@dataclass
class SanityResult:
    """Per metric, test and frequency: the mean normalised difference and the fraction of seeds that
    decreased; ``passed[metric][test]``."""

    frequencies: list[float]
    n_images: int
    n_seeds: int
    epsilon: float
    min_pass: float
    top_quantile: float | None
    mean_diff: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    decrease: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    passed: dict[str, dict[str, bool]] = field(default_factory=dict)

    def table(self) -> str:
        """The pass/fail table, one row per metric, with the worst frequency's decrease fraction."""
        lines = [f"{'metric':<12} {'missing labels':<28} {'extra labels':<28}"]
        for m in self.passed:
            cells = []
            for test in ("missing", "extra"):
                worst = int(np.argmin(self.decrease[m][test]))
                word = "pass" if self.passed[m][test] else "FAIL"
                cells.append(f"{word} (min {100 * self.decrease[m][test][worst]:5.1f} % at "
                             f"γ={self.frequencies[worst]:g})")
            tag = "  (control)" if m in _CONTROLS else ""
            lines.append(f"{m:<12} {cells[0]:<28} {cells[1]:<28}{tag}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "frequencies": self.frequencies, "n_images": self.n_images, "n_seeds": self.n_seeds,
            "epsilon": self.epsilon, "min_pass": self.min_pass, "top_quantile": self.top_quantile,
            "passed": self.passed, "decrease_fraction": self.decrease, "mean_normalised_diff": self.mean_diff,
        }


def _scores(unit: np.ndarray, labels: sp.csc_matrix, top_quantile: float) -> dict[str, np.ndarray]:
    """Every metric of one unit against every column of ``labels``: ``(n_columns,)`` each."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = score_block(unit[:, None], labels)
    m = label_metrics(unit[:, None], labels, top_quantile=top_quantile)
    top = unit >= top_set_threshold(unit, top_quantile)
    inter = np.asarray(labels[top].sum(axis=0)).ravel().astype(np.float64)
    n_pos = np.asarray(labels.sum(axis=0)).ravel().astype(np.float64)
    return {
        "auc": res["auc"][0], "auprc": res["auprc"][0],
        **{k: m[k][0] for k in ("f1", "iou", "correlation", "cosine")},
        "recall": inter / np.maximum(n_pos, 1), "precision": inter / max(int(top.sum()), 1),
    }


def sanity_checks(
    *,
    n_images: int = 100_000,
    frequencies: tuple[float, ...] = (0.499, 0.1, 0.01, 0.001, 0.0001),
    n_seeds: int = 100,
    epsilon: float = 0.001,
    min_pass: float = 0.9,
    top_quantile: float | None = None,
    seed: int = 0,
) -> SanityResult:
    """Run the missing- and extra-labels tests for every metric (see the module docstring).

    Raises:
        ValueError: a frequency leaves no positive or no negative image, or an argument is out of range.
    """
    if n_seeds < 1 or not 0 < min_pass <= 1 or epsilon < 0:
        raise ValueError(f"need n_seeds >= 1, 0 < min_pass <= 1, epsilon >= 0; got {n_seeds}, {min_pass}, {epsilon}")
    rng = np.random.default_rng(seed)
    result = SanityResult([float(f) for f in frequencies], int(n_images), int(n_seeds), float(epsilon),
                          float(min_pass), top_quantile)
    diffs = {m: {"missing": [], "extra": []} for m in SANITY_METRICS}
    for gamma in frequencies:
        n = int(gamma * n_images)
        if not 0 < n < n_images:
            raise ValueError(f"frequency {gamma} gives {n} positives of {n_images}: need at least one of each")
        unit = np.zeros(n_images)
        unit[:n] = 1.0
        truth = unit.astype(bool)
        columns = [truth]
        for _ in range(n_seeds):
            columns.append(truth & (rng.random(n_images) > 0.5))
        cutoff = n / (n_images - n)
        for _ in range(n_seeds):
            columns.append(truth | (rng.random(n_images) < cutoff))
        labels = sp.csc_matrix(np.column_stack(columns))
        # Unbinarised: k = ceil(q N) = n exactly (the active images, not one tied zero more).
        q = (n - 0.5) / n_images if top_quantile is None else top_quantile
        scores = _scores(unit, labels, q)
        for m in SANITY_METRICS:
            s = scores[m]
            span = _RANGE.get(m, 1.0)
            diffs[m]["missing"].append((s[1 : 1 + n_seeds] - s[0]) / span)
            diffs[m]["extra"].append((s[1 + n_seeds :] - s[0]) / span)
    for m in SANITY_METRICS:
        result.mean_diff[m], result.decrease[m], result.passed[m] = {}, {}, {}
        for test in ("missing", "extra"):
            d = diffs[m][test]
            result.mean_diff[m][test] = [float(np.nanmean(x)) for x in d]
            frac = [float(np.mean(np.nan_to_num(x, nan=0.0) < -epsilon)) for x in d]
            result.decrease[m][test] = frac
            result.passed[m][test] = bool(min(frac) >= min_pass)
    return result
