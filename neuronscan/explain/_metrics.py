"""What an explainer is worth: reconstruction fidelity, sparsity, dead components, part stability, and
interpretability measured as neuronscan measures units. numpy/pandas only (the accumulators take numpy arrays),
so a worker can sum its share and the sums add up over workers.

- **Explained variance** ``EV = 1 - sum (x - x_hat)^2 / sum (x - mean x)^2`` over every image and feature (a map's
  every position and channel), the mean taken per feature over the images (`VarianceSums`).
- **Accuracy** of the model on the labels when the layer's features are replaced by the reconstruction, beside
  its accuracy on the real features and with the features replaced by their mean over the images (nothing
  explained): per head group of outputs, an image counts when exactly one of its labels names an output of the
  group, and it is right when the group's largest logit is that output (`AccuracyCounts`).
- **Sparsity** ``mean L0``: components above 0 per image; **dead**: components that are 0 on every image.
- **Location instability** (Zhang, Wu, Zhu 2018): per component, over the images where it fires, the standard
  deviation of the distance between its peak and the image's landmark (the object's centre), as fractions of the
  image diagonal; lower is a steadier part (`DistanceSums`).
- **Interpretability** (`interpretability`): from the score stage's ``neurons.parquet``, the fraction of a layer's
  live units with a significant concept (q ≤ α and AUC > ½, as ``n_significant`` counts them), their mean
  ``best_auprc``, ``best_auc``, ``best_correlation``, ``n_significant`` and depth of the best concept, and of their
  best compositional formula's AUC (exploratory) the mean and the fraction ≥ 0.9.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["VarianceSums", "AccuracyCounts", "DistanceSums", "interpretability", "head_groups", "peak_fractions"]


class VarianceSums:
    """Running sums for the explained variance of ``d`` features: n, Σx, Σx², Σ(x − x̂)² per feature (float64)."""

    def __init__(self, d: int):
        self.n = 0.0
        self.sx = np.zeros(d)
        self.sxx = np.zeros(d)
        self.sse = np.zeros(d)

    def add(self, x: np.ndarray, x_hat: np.ndarray) -> None:
        """Rows are samples, columns features (``(n, d)``)."""
        x = np.asarray(x, dtype=np.float64)
        x_hat = np.asarray(x_hat, dtype=np.float64)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        self.sxx += (x * x).sum(0)
        self.sse += ((x - x_hat) ** 2).sum(0)

    def vector(self) -> np.ndarray:
        return np.concatenate([[self.n], self.sx, self.sxx, self.sse])

    @classmethod
    def from_vector(cls, v: np.ndarray) -> VarianceSums:
        d = (len(v) - 1) // 3
        out = cls(d)
        out.n, out.sx, out.sxx, out.sse = float(v[0]), v[1 : 1 + d], v[1 + d : 1 + 2 * d], v[1 + 2 * d :]
        return out

    @property
    def sst(self) -> float:
        return float((self.sxx - self.sx ** 2 / max(self.n, 1.0)).sum())

    def explained_variance(self) -> float:
        sst = self.sst
        return float(1.0 - self.sse.sum() / sst) if sst > 0 else float("nan")

    def mse(self) -> float:
        return float(self.sse.sum() / max(self.n * len(self.sse), 1.0))


def head_groups(n_outputs: int, groups: dict[str, slice] | None) -> dict[str, slice]:
    """The output groups accuracy is counted over: ``groups`` as given, else one group of every output."""
    return dict(groups) if groups else {"all": slice(0, n_outputs)}


class AccuracyCounts:
    """Right and counted images per output group, for each variant of the features (original, reconstructed,
    mean-ablated)."""

    VARIANTS = ("original", "reconstructed", "mean_ablated")

    def __init__(self, groups: dict[str, slice]):
        self.groups = dict(groups)
        self.right = {v: {g: 0 for g in groups} for v in self.VARIANTS}
        self.counted = {g: 0 for g in groups}

    def targets(self, label_sets: list[set[int]]) -> dict[str, np.ndarray]:
        """Per group each image's target output (index within the group), −1 when not exactly one label there."""
        out = {}
        for g, sl in self.groups.items():
            lo, hi = sl.start or 0, sl.stop
            t = np.full(len(label_sets), -1, dtype=np.int64)
            for i, labels in enumerate(label_sets):
                inside = [k for k in labels if lo <= k < hi]
                if len(inside) == 1:
                    t[i] = inside[0] - lo
            out[g] = t
        return out

    def add(self, variant: str, logits: np.ndarray, targets: dict[str, np.ndarray], *, count: bool) -> None:
        for g, sl in self.groups.items():
            t = targets[g]
            keep = t >= 0
            if not keep.any():
                continue
            pred = np.asarray(logits)[:, sl].argmax(1)
            self.right[variant][g] += int((pred[keep] == t[keep]).sum())
            if count:
                self.counted[g] += int(keep.sum())

    def vector(self) -> np.ndarray:
        return np.asarray([self.right[v][g] for v in self.VARIANTS for g in self.groups]
                          + [self.counted[g] for g in self.groups], dtype=np.float64)

    def load_vector(self, v: np.ndarray) -> None:
        it = iter(np.asarray(v).tolist())
        for var in self.VARIANTS:
            for g in self.groups:
                self.right[var][g] = int(round(next(it)))
        for g in self.groups:
            self.counted[g] = int(round(next(it)))

    def summary(self) -> dict:
        """Per variant the mean of the groups' accuracies (each group alike) and per group its accuracy."""
        out: dict = {"images_counted": dict(self.counted)}
        for v in self.VARIANTS:
            per = {g: (self.right[v][g] / self.counted[g] if self.counted[g] else float("nan")) for g in self.groups}
            vals = [x for x in per.values() if not math.isnan(x)]
            out[v] = float(np.mean(vals)) if vals else float("nan")
            out[f"{v}_per_group"] = per
        o, r, m = out["original"], out["reconstructed"], out["mean_ablated"]
        # How much of the accuracy that the features carry above their mean the reconstruction keeps.
        out["recovered_fraction"] = float((r - m) / (o - m)) if o - m > 0 else float("nan")
        return out


def peak_fractions(maps: np.ndarray) -> np.ndarray:
    """``(B, F, h, w)`` maps → ``(B, F, 2)`` argmax (y, x) as fractions of the map (cell centres)."""
    b, f, h, w = maps.shape
    idx = maps.reshape(b, f, h * w).argmax(-1)
    return np.stack([(idx // w + 0.5) / h, (idx % w + 0.5) / w], -1)


class DistanceSums:
    """Per component Σd, Σd², n of the peak-to-landmark distance d (fractions of the image diagonal)."""

    def __init__(self, f: int):
        self.n = np.zeros(f)
        self.s = np.zeros(f)
        self.ss = np.zeros(f)

    def add(self, peaks: np.ndarray, active: np.ndarray, landmarks: np.ndarray) -> None:
        """``peaks`` ``(B, F, 2)`` and ``landmarks`` ``(B, 2)`` as (y, x) fractions of the side; ``active``
        ``(B, F)`` marks where a component fires; images with a NaN landmark are left out."""
        ok = np.isfinite(landmarks).all(1)
        if not ok.any():
            return
        d = np.linalg.norm(peaks[ok] - landmarks[ok][:, None, :], axis=-1) / math.sqrt(2.0)
        a = active[ok].astype(np.float64)
        self.n += a.sum(0)
        self.s += (d * a).sum(0)
        self.ss += (d * d * a).sum(0)

    def vector(self) -> np.ndarray:
        return np.concatenate([self.n, self.s, self.ss])

    @classmethod
    def from_vector(cls, v: np.ndarray) -> DistanceSums:
        f = len(v) // 3
        out = cls(f)
        out.n, out.s, out.ss = v[:f], v[f : 2 * f], v[2 * f :]
        return out

    def instability(self, min_images: int = 10) -> np.ndarray:
        """Per component the standard deviation of d (population), NaN with fewer than ``min_images`` images."""
        n = np.maximum(self.n, 1.0)
        var = np.maximum(self.ss / n - (self.s / n) ** 2, 0.0)
        return np.where(self.n >= min_images, np.sqrt(var), np.nan)


def interpretability(neurons: pd.DataFrame, layer: str, concepts: pd.DataFrame | None = None) -> dict:
    """How interpretable a layer's units are, as the score stage measured them (``neurons.parquet`` rows).

    Counts live units (``dead`` false). ``concepts`` (``neuron_concepts.parquet`` rows of the layer with
    ``unit, concept, depth``) adds the mean depth of the best concept.
    """
    rows = neurons[neurons["layer"] == layer]
    if not len(rows):
        return {"layer": layer, "units": 0}
    live = rows[~rows["dead"].fillna(False).astype(bool)] if "dead" in rows else rows
    sig = live["n_significant"].fillna(0) > 0
    out = {
        "layer": layer,
        "units": int(len(rows)),
        "live_units": int(len(live)),
        "frac_significant": float(sig.mean()) if len(live) else float("nan"),
        "n_with_significant": int(sig.sum()),
        "mean_best_auprc": _mean(live.get("best_auprc")),
        "mean_best_auc": _mean(live.get("best_auc")),
        "mean_best_correlation": _mean(live.get("best_correlation")),
        "mean_n_significant": _mean(live.get("n_significant")),
        "median_n_significant": float(live["n_significant"].fillna(0).median()) if len(live) else float("nan"),
    }
    if "formula_auc" in live:
        # The best compositional formula (exploratory): a component may be a conjunction of concepts.
        formula = pd.to_numeric(live["formula_auc"], errors="coerce")
        out["mean_formula_auc"] = _mean(formula)
        out["frac_formula_auc_90"] = float((formula >= 0.9).mean()) if len(live) else float("nan")
    if concepts is not None and len(concepts) and "depth" in concepts:
        depth = concepts.drop_duplicates("concept").set_index("concept")["depth"]
        best = live["best_concept"].dropna().map(depth)
        out["mean_best_depth"] = _mean(best[best >= 0])
    return out


def _mean(values) -> float:
    if values is None:
        return float("nan")
    v = pd.to_numeric(pd.Series(values), errors="coerce").astype("float64")
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("nan")
