"""Factorising a matrix of activations into concept coefficients and a concept dictionary: ``A ≈ U · W + m``.

``A`` is ``(n, C)`` (crops or positions × channels), ``U`` ``(n, K)`` the coefficients of K concepts, ``W``
``(K, C)`` the dictionary (one concept direction per row) and ``m`` a constant offset (zero except for PCA and
ICA, which centre the data). Every method is scikit-learn's:

| method | estimator | U | W | m |
| --- | --- | --- | --- | --- |
| ``nmf`` (CRAFT's) | ``NMF(init="nndsvda", solver="cd")`` | ``transform`` (≥ 0) | ``components_`` (≥ 0) | 0 |
| ``pca`` | ``PCA`` | ``transform`` | ``components_`` | ``mean_`` |
| ``ica`` | ``FastICA(whiten="unit-variance")`` | ``transform`` | ``mixing_ᵀ`` | ``mean_`` |
| ``kmeans`` | ``KMeans(n_init=4)`` | one-hot of ``predict`` | ``cluster_centers_`` | 0 |
| ``sparse_coding`` | ``MiniBatchDictionaryLearning`` (positive, lasso) | ``s · transform(A/s)`` | ``components_`` | 0 |

For sparse coding the rows are divided by ``s``, their mean L2 norm, before fitting, so that ``alpha`` means
the same at any activation scale. scikit-learn is imported on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from neuronscan.errors import InputError

__all__ = ["METHODS", "NONNEGATIVE_METHODS", "Factorisation", "fit_factorisation"]

METHODS = ("nmf", "pca", "ica", "kmeans", "sparse_coding")
NONNEGATIVE_METHODS = ("nmf", "sparse_coding")
"""Methods whose input must be non-negative (a post-ReLU layer)."""


def _sklearn():
    try:
        import sklearn  # noqa: F401
    except ImportError as exc:  # pragma: no cover - scikit-learn is installed with the dev extras
        raise InputError("concept discovery needs scikit-learn: pip install scikit-learn") from exc


@dataclass
class Factorisation:
    """A fitted factorisation ``A ≈ U · W + m``.

    Attributes:
        method: one of `METHODS`.
        components: ``W``, ``(K, C)`` float64.
        offset: ``m``, ``(C,)`` float64 (zeros for methods that do not centre).
        estimator: the fitted scikit-learn object (for ``transform``).
        scale: the input scale the estimator saw (sparse coding's ``s``; 1 otherwise).
        n_iter: the iterations the fit took (``n_iter_``; −1 for PCA, which has none). A fit that stops at
            ``max_iter`` has not met its tolerance (scikit-learn's ConvergenceWarning is silenced: this says it).
    """

    method: str
    components: np.ndarray
    offset: np.ndarray
    estimator: object = field(repr=False)
    scale: float = 1.0
    n_iter: int = -1
    _torch_key: object = field(default=None, repr=False, compare=False)
    _torch_w: object = field(default=None, repr=False, compare=False)
    _torch_m: object = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict:  # pickled (a Ray result) without the cached tensors
        return {**self.__dict__, "_torch_key": None, "_torch_w": None, "_torch_m": None}

    @property
    def n_concepts(self) -> int:
        return int(self.components.shape[0])

    def transform(self, a: np.ndarray) -> np.ndarray:
        """Coefficients ``U`` ``(n, K)`` of rows ``a`` ``(n, C)`` with the dictionary held fixed."""
        a = np.asarray(a, dtype=np.float64)
        if len(a) == 0:
            return np.zeros((0, self.n_concepts))
        if self.method == "kmeans":
            labels = self.estimator.predict(a)
            return np.eye(self.n_concepts)[labels]
        if self.method == "sparse_coding":
            return np.asarray(self.estimator.transform(a / self.scale), dtype=np.float64) * self.scale
        return np.asarray(self.estimator.transform(a), dtype=np.float64)

    def decode(self, u: np.ndarray) -> np.ndarray:
        """``U · W + m``: the rows the coefficients ``u`` ``(n, K)`` stand for."""
        return np.asarray(u, dtype=np.float64) @ self.components + self.offset

    def decode_torch(self, u):
        """`decode` for a torch tensor ``(…, K)`` (differentiable), in ``u``'s dtype and device."""
        import torch

        key = (u.dtype, u.device)
        if self._torch_key != key:
            self._torch_key = key
            self._torch_w = torch.as_tensor(self.components, dtype=u.dtype, device=u.device)
            self._torch_m = (torch.as_tensor(self.offset, dtype=u.dtype, device=u.device)
                             if np.any(self.offset) else None)
        w, m = self._torch_w, self._torch_m
        # One 2-D product (a batched matmul over (…, K) with a small K is many times slower); the offset, when
        # there is one, added in the same call.
        flat = u.reshape(-1, u.shape[-1])
        out = flat @ w if m is None else torch.addmm(m, flat, w)
        return out.reshape(*u.shape[:-1], w.shape[1])


def fit_factorisation(a: np.ndarray, method: str, n_concepts: int, *, seed: int = 0, max_iter: int = 500,
                      sparse_alpha: float = 0.1) -> tuple[Factorisation, np.ndarray]:
    """Fit ``method`` with ``n_concepts`` concepts to rows ``a`` ``(n, C)``; return it and ``U`` of ``a``.

    Raises:
        InputError: an unknown method, fewer rows than concepts, or negative values for NMF / sparse coding.
    """
    import warnings

    _sklearn()
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fact, u = _fit(a, method, n_concepts, seed=seed, max_iter=max_iter, sparse_alpha=sparse_alpha)
    fact.n_iter = int(getattr(fact.estimator, "n_iter_", -1))
    return fact, u


def _fit(a: np.ndarray, method: str, n_concepts: int, *, seed: int, max_iter: int,
         sparse_alpha: float) -> tuple[Factorisation, np.ndarray]:
    if method not in METHODS:
        raise InputError(f"discover.method {method!r} is not one of {', '.join(METHODS)}")
    a = np.asarray(a, dtype=np.float64)
    n, c = a.shape
    if n < n_concepts:
        raise InputError(f"{n} rows to factorise is fewer than n_concepts={n_concepts}")
    if method in NONNEGATIVE_METHODS and float(a.min(initial=0.0)) < 0:
        raise InputError(f"method {method} needs non-negative activations; the layer's smallest value is "
                         f"{float(a.min()):.4g}. Choose a layer after a ReLU, or method pca/ica/kmeans")
    zeros = np.zeros(c)
    if method == "nmf":
        from sklearn.decomposition import NMF

        est = NMF(n_components=n_concepts, init="nndsvda", solver="cd", max_iter=max_iter, random_state=seed)
        u = est.fit_transform(a)
        return Factorisation(method, np.asarray(est.components_, np.float64), zeros, est), np.asarray(u, np.float64)
    if method == "pca":
        from sklearn.decomposition import PCA

        est = PCA(n_components=n_concepts, random_state=seed)
        u = est.fit_transform(a)
        return Factorisation(method, np.asarray(est.components_, np.float64), est.mean_.astype(np.float64), est), u
    if method == "ica":
        from sklearn.decomposition import FastICA

        est = FastICA(n_components=n_concepts, whiten="unit-variance", max_iter=max_iter, random_state=seed)
        u = est.fit_transform(a)
        return Factorisation(method, np.asarray(est.mixing_.T, np.float64), est.mean_.astype(np.float64), est), u
    if method == "kmeans":
        from sklearn.cluster import KMeans

        est = KMeans(n_clusters=n_concepts, n_init=4, random_state=seed)
        labels = est.fit_predict(a)
        fact = Factorisation(method, np.asarray(est.cluster_centers_, np.float64), zeros, est)
        return fact, np.eye(n_concepts)[labels]
    from sklearn.decomposition import MiniBatchDictionaryLearning

    scale = float(np.linalg.norm(a, axis=1).mean()) or 1.0
    est = MiniBatchDictionaryLearning(
        n_components=n_concepts, alpha=sparse_alpha, max_iter=max_iter, fit_algorithm="cd",
        transform_algorithm="lasso_cd", transform_alpha=sparse_alpha, positive_code=True, positive_dict=True,
        batch_size=256, random_state=seed)
    est.fit(a / scale)
    fact = Factorisation(method, np.asarray(est.components_, np.float64), zeros, est, scale=scale)
    return fact, fact.transform(a)
