"""The joint linear probe of a set of units: L2 logistic regression by Newton's method, batched, and its AUC.

Numbers in, numbers out (numpy only). The objective of one problem, with features ``Z (n, p)`` (standardised
by the caller), labels ``y`` in {0, 1}, sample weights ``s`` (the caller balances the classes so they sum
to 1) and the intercept ``b`` unpenalised::

    L(w, b) = sum_i s_i [log(1 + exp(eta_i)) - y_i eta_i] + l2 / 2 * ||w||^2,    eta = Z w + b

It is strictly convex for ``l2 > 0``; Newton steps with backtracking (Armijo) reach its minimum to
``tol`` in a handful of iterations, the same minimum scikit-learn's ``LogisticRegression(C=1 / l2)`` finds
with ``sample_weight = s`` (tested). ``fit_logistic`` solves ``B`` problems of the same shape at once:
the greedy selection fits every candidate extension of the current set in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from neuronscan.stats import auc_from_ranks, rank_units

__all__ = ["LogisticFit", "fit_logistic", "auc_score", "unit_aucs", "balanced_weights"]


@dataclass
class LogisticFit:
    """Fitted probes of a batch: ``coef (B, p)``, ``intercept (B,)``, penalised ``loss (B,)``, ``n_iter``."""

    coef: np.ndarray
    intercept: np.ndarray
    loss: np.ndarray
    n_iter: int

    def logit(self, z: np.ndarray) -> np.ndarray:
        """Logits of ``z``: ``(n, p)`` for every probe of the batch → ``(B, n)``; ``(B, n, p)`` → ``(B, n)``."""
        z = np.asarray(z, dtype=np.float64)
        if z.ndim == 2:
            return self.coef @ z.T + self.intercept[:, None]
        return np.einsum("bnp,bp->bn", z, self.coef) + self.intercept[:, None]


def balanced_weights(y: np.ndarray) -> np.ndarray:
    """Sample weights that give each class half the total weight: ``1 / (2 n_pos)`` and ``1 / (2 n_neg)``."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("balanced weights need positives and negatives")
    return np.where(y, 0.5 / n_pos, 0.5 / n_neg)


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


def fit_logistic(
    z: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    *,
    l2: float,
    start: np.ndarray | None = None,
    max_iter: int = 100,
    tol: float = 1e-20,
) -> LogisticFit:
    """Minimise the L2-penalised weighted logistic loss of each problem of a batch (module docstring).

    Args:
        z: ``(B, n, p)`` features of B problems over the same n rows (or ``(n, p)``: one problem).
        y: ``(n,)`` labels (bool or 0/1), shared by the batch.
        weights: ``(n,)`` non-negative sample weights.
        l2: penalty on the coefficients (> 0); the intercept is not penalised.
        start: ``(B, p + 1)`` starting ``[intercept, coef…]`` (warm start), default zeros.
        max_iter: Newton iterations at most.
        tol: stop when every problem's Newton decrement ``g^T H^-1 g`` is below it (or, rounding, when a step
            no longer lowers the loss or moves the coefficients).

    Returns:
        `LogisticFit` with ``coef (B, p)``, ``intercept (B,)`` and the penalised loss at the optimum.
    """
    z = np.asarray(z, dtype=np.float64)
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3:
        raise ValueError(f"z must be (B, n, p) or (n, p), got shape {z.shape}")
    if not l2 > 0:
        raise ValueError(f"l2 must be > 0, got {l2!r}")
    b, n, p = z.shape
    y = np.asarray(y, dtype=np.float64)
    s = np.asarray(weights, dtype=np.float64)
    if y.shape != (n,) or s.shape != (n,):
        raise ValueError(f"y and weights must be ({n},), got {y.shape} and {s.shape}")
    if not np.isfinite(z).all():
        raise ValueError("features must be finite")
    a = np.concatenate([np.ones((b, n, 1)), z], axis=2)  # (B, n, p + 1): the intercept first
    penalty = np.full(p + 1, float(l2))
    penalty[0] = 0.0
    theta = np.zeros((b, p + 1)) if start is None else np.array(start, dtype=np.float64, copy=True)
    if theta.shape != (b, p + 1):
        raise ValueError(f"start must be ({b}, {p + 1}), got {theta.shape}")

    loss, eta = _objective_rows(a, theta, y, s, penalty)
    ridge = 1e-12 * np.eye(p + 1)
    # Converged in all but the last bits: no step lowers the loss any more, or the step no longer moves theta.
    stuck = np.zeros(b, dtype=bool)
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - the count is returned
        mu = _sigmoid(eta)
        at = np.swapaxes(a, 1, 2)
        grad = np.matmul(at, ((mu - y) * s)[..., None])[..., 0] + theta * penalty
        curv = s * mu * (1.0 - mu)
        hess = np.matmul(at * curv[:, None, :], a) + np.diag(penalty) + ridge
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        decrement = np.einsum("bq,bq->b", grad, step)
        todo = (decrement > tol) & ~stuck
        if not todo.any():
            break
        t = np.ones(b)
        for _ in range(40):  # backtracking: halve the step until the loss falls enough
            idx = np.flatnonzero(todo)
            if not len(idx):
                break
            cand = theta[idx] - t[idx, None] * step[idx]
            cand_loss, cand_eta = _objective_rows(a[idx], cand, y, s, penalty)
            # Armijo, with room for rounding: near the optimum the full Newton step changes the loss by less
            # than its last bits, and is taken.
            slack = 1e-14 * np.maximum(1.0, np.abs(loss[idx]))
            ok = cand_loss <= loss[idx] - 1e-4 * t[idx] * decrement[idx] + slack
            done = idx[ok]
            moved = np.abs(cand[ok] - theta[done]).max(1, initial=0.0)
            stuck[done[moved <= 1e-13 * (1.0 + np.abs(theta[done]).max(1, initial=0.0))]] = True
            theta[done], loss[done], eta[done] = cand[ok], cand_loss[ok], cand_eta[ok]
            todo[done] = False
            t[todo] *= 0.5
        stuck |= todo
    return LogisticFit(coef=theta[:, 1:], intercept=theta[:, 0], loss=loss, n_iter=n_iter)


def _objective_rows(a: np.ndarray, th: np.ndarray, y: np.ndarray, s: np.ndarray,
                    penalty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    eta = np.matmul(a, th[..., None])[..., 0]
    return (_softplus(eta) - y * eta) @ s + 0.5 * (th * th) @ penalty, eta


def unit_aucs(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """AUC of every column of ``x (n, K)`` for the positives ``y`` (ties count ½; equals ``roc_auc_score``)."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    ranks = rank_units(np.asarray(x), n_threads=1).ranks
    rank_sum = ranks[y].sum(0)
    return auc_from_ranks(rank_sum[:, None], np.array([n_pos]), len(y))[0][:, 0]


def auc_score(scores: np.ndarray, y: np.ndarray) -> float:
    """AUC of one score vector (NaN without positives or negatives)."""
    return float(unit_aucs(np.asarray(scores, dtype=np.float64)[:, None], y)[0])
