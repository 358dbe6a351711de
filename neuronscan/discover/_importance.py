"""How much each discovered concept matters to a class logit: Sobol total indices, gradient × input, occlusion.

Everything here works on a *concept logit function* ``φ(U) -> (b,)``: coefficients ``U`` of shape
``(b, *grid, K)`` (K concepts at every feature-map position, or ``(b, K)`` for a vector layer) decoded through
the dictionary and the rest of the network, ``φ(U) = h(U · W + m)[:, class]`` (see `concept_logit_fn`). One
image's coefficients ``u`` have shape ``(*grid, K)``.

- **Sobol total indices** (CRAFT): the concepts' coefficients are scaled by masks ``M ∈ [0, 1]^K`` — one
  factor per concept, the same at every position — in two designs A and B of ``n_designs`` rows: the first and
  last K coordinates of a scrambled Sobol' sequence of dimension 2K (``scipy.stats.qmc.Sobol``), B's rows in a
  random order (see `sobol_design`); φ is evaluated on A, B and the K matrices ``C_i`` (A with column i taken
  from B): ``n_designs · (K + 2)`` evaluations per image, each image with its own seeded design. Jansen's
  estimator gives ``S_Ti = mean((φ(A) − φ(C_i))²) / (2 Var[φ(A), φ(B)])``. A class's importance is the mean of
  its images' indices.
- **Gradient × input** in concept space: ``Σ_positions U ⊙ ∂φ/∂U``, per image. For a head that is linear in
  the latent (global average pooling then a linear layer) it is exactly each concept's additive share of the
  logit (above the offset's), so it is the optimal attribution there (Fel et al. 2023, holistic).
- **Occlusion**: ``φ(U) − φ(U with concept i set to 0)``, per image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

__all__ = ["concept_logit_fn", "sobol_design", "jansen_total_indices", "sobol_importance",
           "gradient_input_importance", "occlusion_importance", "evaluate", "masked_logits"]

LogitFn = Callable[[torch.Tensor], torch.Tensor]


def concept_logit_fn(split, factorisation, class_index: int) -> LogitFn:
    """``φ(U) = h(U · W + m)[:, class_index]`` for coefficients ``(b, *grid, K)`` (``(b, K)`` at a vector layer):
    the decoded latent is moved to the layer's ``(b, C, *grid)`` layout before ``h``."""

    def fn(u: torch.Tensor) -> torch.Tensor:
        a = factorisation.decode_torch(u)  # (b, *grid, C)
        if a.dim() > 2:
            a = a.movedim(-1, 1)
        return split.h(a.contiguous())[:, class_index]

    return fn


def evaluate(fn: LogitFn, u: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """``fn`` on a batch of coefficient tensors ``(b, *grid, K)``, ``batch_size`` at a time, without gradient."""
    out = []
    with torch.no_grad():
        for start in range(0, len(u), batch_size):
            out.append(fn(u[start : start + batch_size]).detach().cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros(0)


def masked_logits(fn: LogitFn, u: torch.Tensor, keep: np.ndarray | torch.Tensor, *,
                  batch_size: int = 256) -> np.ndarray:
    """``φ(u_i ⊙ keep_j)`` for every image i of ``u`` ``(n, *grid, K)`` and every mask j of ``keep`` — ``(M, K)``
    shared by the images, or ``(n, M, K)`` one set per image — (one factor per concept, the same at every
    position): ``(n, M)``. The ``n · M`` inputs are built and evaluated ``batch_size`` at a time."""
    keep = torch.as_tensor(keep, dtype=u.dtype, device=u.device)
    n, m = len(u), keep.shape[-2]
    per_image = keep.dim() == 3
    keep = keep.reshape(-1, keep.shape[-1])
    view = (-1,) + (1,) * (u.dim() - 2) + (u.shape[-1],)
    out = np.zeros(n * m)
    with torch.no_grad():
        for start in range(0, n * m, batch_size):
            idx = torch.arange(start, min(start + batch_size, n * m), device=u.device)
            chunk = u[idx // m] * keep[idx if per_image else idx % m].view(view)
            out[start : start + len(idx)] = fn(chunk).detach().cpu().numpy()
    return out.reshape(n, m)


def sobol_design(n_concepts: int, n_designs: int, *, seed=0) -> np.ndarray:
    """The masks ``(n_designs · (K + 2), K)`` float32, rows ``[A; B; C_0; …; C_{K−1}]`` (each ``n_designs``
    rows; ``C_i`` is A with column i from B).

    A and B are the first and the last K coordinates of ``n_designs`` points (a power of two) of a scrambled
    Sobol' sequence of dimension 2K (``seed``: an int or anything `numpy.random.default_rng` takes), and B's rows
    are put in a random order (the same seed). Each is a low-discrepancy design of its own; the random pairing
    matters for Jansen's estimator, whose numerator for concept i is driven by ``mean((a_i − b_i)²)``: over the
    first 32 points of a 20-dimensional Sobol' sequence some coordinate pairs (i, K + i) are far from balanced
    (``6 · mean((a_4 − b_4)²) = 1.74`` instead of 1 at K = 10, whatever the scramble), which would inflate that
    concept's index by as much on every image; paired at random the expectation is exact (1/6) and the error is
    a random one that the mean over a class's images (each with its own seed) averages out.
    """
    from scipy.stats import qmc

    if n_designs < 2 or n_designs & (n_designs - 1):
        raise ValueError(f"n_designs must be a power of two ≥ 2, got {n_designs}")
    k = int(n_concepts)
    rng = np.random.default_rng(seed)
    ab = qmc.Sobol(d=2 * k, scramble=True, seed=rng).random_base2(int(np.log2(n_designs)))
    a, b = ab[:, :k], ab[rng.permutation(n_designs), k:]
    c = np.repeat(a[None], k, axis=0)
    for i in range(k):
        c[i, :, i] = b[:, i]
    return np.concatenate([a, b, c.reshape(-1, k)]).astype(np.float32)


def jansen_total_indices(y: np.ndarray, n_designs: int, n_concepts: int) -> np.ndarray:
    """Jansen's total Sobol index of each concept from the outputs ``y`` of `sobol_design`'s rows.

    ``S_Ti = mean((y_A − y_Ci)²) / (2 Var[y_A ∪ y_B])``; all zeros when the output does not vary."""
    y = np.asarray(y, dtype=np.float64)
    n, k = int(n_designs), int(n_concepts)
    if y.shape != (n * (k + 2),):
        raise ValueError(f"expected {n * (k + 2)} outputs, got {y.shape}")
    y_a, y_b, y_c = y[:n], y[n : 2 * n], y[2 * n :].reshape(k, n)
    var = float(np.var(np.concatenate([y_a, y_b])))
    if not var > 0:
        return np.zeros(k)
    return ((y_a[None] - y_c) ** 2).mean(axis=1) / (2.0 * var)


def sobol_importance(fn: LogitFn, u: torch.Tensor, n_designs: int, *, seed: int = 0,
                     batch_size: int = 256) -> np.ndarray:
    """Total Sobol indices ``(n, K)`` of the concepts of each image's coefficients ``u`` ``(n, *grid, K)``; image
    i's design is ``sobol_design(K, n_designs, seed=[seed, i])``."""
    k = u.shape[-1]
    if not len(u):
        return np.zeros((0, k))
    masks = np.stack([sobol_design(k, n_designs, seed=[seed, i]) for i in range(len(u))])
    y = masked_logits(fn, u, masks, batch_size=batch_size)
    return np.stack([jansen_total_indices(row, n_designs, k) for row in y])


def gradient_input_importance(fn: LogitFn, u: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """``Σ_positions U ⊙ ∂φ/∂U`` per image and concept, ``(n, K)``."""
    out = []
    dims = tuple(range(1, u.dim() - 1))
    for start in range(0, len(u), batch_size):
        chunk = u[start : start + batch_size].detach().clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(fn(chunk).sum(), chunk)
        gi = grad * chunk.detach()
        out.append((gi.sum(dim=dims) if dims else gi).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, u.shape[-1]))


def occlusion_importance(fn: LogitFn, u: torch.Tensor, *, batch_size: int = 256) -> np.ndarray:
    """``φ(U) − φ(U without concept i)`` per image and concept, ``(n, K)``."""
    k = u.shape[-1]
    keep = np.concatenate([np.ones((1, k)), 1.0 - np.eye(k)])  # row 0: all concepts; row 1 + i: all but i
    y = masked_logits(fn, u, keep, batch_size=batch_size)
    return y[:, :1] - y[:, 1:]
