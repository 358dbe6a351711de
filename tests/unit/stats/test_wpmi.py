"""soft-WPMI and top-mean cosine against a naive per-unit oracle and planted truth."""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pytest

import neuronscan.stats._wpmi as _wpmi_module
from neuronscan.stats._wpmi import (
    soft_wpmi,
    soft_wpmi_log_conditional,
    soft_wpmi_log_conditional_from_top,
    top_image_indices,
    top_mean_cosine,
)


def _naive_top(acts_col: np.ndarray, k: int) -> list[int]:
    """Top-k image indices of one unit by a full stable sort (ties: lower index first)."""
    return [int(i) for i in np.argsort(-acts_col, kind="stable")[:k]]


def _naive_soft_wpmi(acts, emb, txt, top_k, alpha, lam, w0, w1):
    """CLIP-Dissect soft-WPMI written unit by unit, image by image, concept by concept."""
    emb, txt = np.asarray(emb, dtype=np.float64), np.asarray(txt, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    n_images, n_units = acts.shape
    n_concepts = txt.shape[0]
    weights = np.linspace(w0, w1, top_k)
    log_cond = np.zeros((n_units, n_concepts))
    for u in range(n_units):
        for j, i in enumerate(_naive_top(acts[:, u], top_k)):
            sims = [alpha * float(emb[i] @ txt[c]) for c in range(n_concepts)]
            denom = sum(math.exp(s) for s in sims)
            for c in range(n_concepts):
                p = math.exp(sims[c]) / denom
                log_cond[u, c] += math.log(1.0 + weights[j] * (p - 1.0))
    log_prior = [
        math.log(sum(math.exp(log_cond[u, c]) for u in range(n_units)) / n_units)
        for c in range(n_concepts)
    ]
    return log_cond - lam * np.array(log_prior)[None, :]


def _naive_top_mean_cosine(acts, emb, txt, top_k):
    emb, txt = np.asarray(emb, dtype=np.float64), np.asarray(txt, dtype=np.float64)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    out = np.zeros((acts.shape[1], txt.shape[0]))
    for u in range(acts.shape[1]):
        mean = emb[_naive_top(acts[:, u], top_k)].mean(axis=0)
        mean /= np.linalg.norm(mean)
        for c in range(txt.shape[0]):
            out[u, c] = float(mean @ txt[c])
    return out


def _random_inputs(seed, n_images=60, n_units=7, n_concepts=5, dim=8, tie_levels=4):
    rng = np.random.default_rng(seed)
    # Few distinct levels and a dead (constant) unit: ties straddle every top-k cut.
    acts = rng.integers(0, tie_levels, size=(n_images, n_units)).astype(np.float32)
    acts[:, 0] = 0.0
    acts[:, 1] = rng.normal(size=n_images)
    emb = rng.normal(size=(n_images, dim)).astype(np.float32)
    txt = rng.normal(size=(n_concepts, dim))
    return acts, emb, txt


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("top_k", [1, 5, 23, 60])
def test_soft_wpmi_matches_naive_oracle(seed, top_k):
    acts, emb, txt = _random_inputs(seed)
    got = soft_wpmi(acts, emb, txt, top_k=top_k, alpha=7.0, lam=0.7, weight_start=0.99,
                    weight_end=0.9)
    want = _naive_soft_wpmi(acts, emb, txt, top_k, 7.0, 0.7, 0.99, 0.9)
    assert got.shape == (7, 5) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_soft_wpmi_defaults_match_naive_oracle():
    acts, emb, txt = _random_inputs(5, n_images=150, n_units=4, n_concepts=3)
    got = soft_wpmi(acts, emb, txt)
    want = _naive_soft_wpmi(acts, emb, txt, 100, 10.0, 1.0, 0.998, 0.97)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


def test_soft_wpmi_blocked_equals_unblocked(monkeypatch):
    acts, emb, txt = _random_inputs(3, n_units=11)
    whole = soft_wpmi(acts, emb, txt, top_k=9)
    # A tiny block budget processes one unit at a time.
    monkeypatch.setattr(sys.modules["neuronscan.stats._wpmi"], "_BLOCK_ELEMENTS", 1)
    np.testing.assert_allclose(soft_wpmi(acts, emb, txt, top_k=9), whole, rtol=0, atol=1e-12)


@pytest.mark.parametrize("precision, atol", [("float64", 1e-10), ("float32", 1e-4)])
def test_numpy_fallback_equals_the_torch_kernels_and_torch_threads_are_restored(monkeypatch, precision, atol):
    torch = pytest.importorskip("torch")
    acts, emb, txt = _random_inputs(7, n_images=80, n_units=9, n_concepts=6)
    want = _naive_soft_wpmi(acts, emb, txt, 20, 10.0, 1.0, 0.998, 0.97)
    before = torch.get_num_threads()
    fast = soft_wpmi(acts, emb, txt, top_k=20, precision=precision)
    assert torch.get_num_threads() == before  # set to 1 only while the pool calls it
    monkeypatch.setattr(_wpmi_module, "_TORCH", [None])  # as without torch: numpy's take and log1p
    plain = soft_wpmi(acts, emb, txt, top_k=20, precision=precision)
    np.testing.assert_allclose(fast, want, rtol=0, atol=atol)
    np.testing.assert_allclose(plain, want, rtol=0, atol=atol)
    np.testing.assert_allclose(fast, plain, rtol=0, atol=1e-12 if precision == "float64" else 1e-5)


@pytest.mark.parametrize("top_k", [1, 10, 60])
def test_top_mean_cosine_matches_naive_oracle(top_k):
    acts, emb, txt = _random_inputs(11)
    got = top_mean_cosine(acts, emb, txt, top_k=top_k)
    np.testing.assert_allclose(got, _naive_top_mean_cosine(acts, emb, txt, top_k), atol=1e-12)


def test_hand_worked_two_units():
    # Image 0 is concept 0, image 1 concept 1; unit 0 fires on image 0, unit 1 on image 1.
    emb = np.eye(2)
    acts = np.array([[2.0, 0.0], [1.0, 3.0]])
    p_hi = math.exp(10) / (math.exp(10) + 1)  # softmax(10 * [1, 0])[0]
    w = 0.5
    hi, lo = math.log1p(w * (p_hi - 1)), math.log1p(w * ((1 - p_hi) - 1))
    log_cond = soft_wpmi_log_conditional(acts, emb, emb, top_k=1, weight_start=w, weight_end=0.1)
    np.testing.assert_allclose(log_cond, [[hi, lo], [lo, hi]], rtol=1e-13)
    prior = math.log((math.exp(hi) + math.exp(lo)) / 2)
    score = soft_wpmi(acts, emb, emb, top_k=1, weight_start=w, weight_end=0.1, lam=1.0)
    np.testing.assert_allclose(score, [[hi - prior, lo - prior], [lo - prior, hi - prior]],
                               rtol=1e-13)


def test_single_unit_scores_zero_and_lam_zero_is_conditional():
    acts, emb, txt = _random_inputs(4, n_units=3)
    # With one unit, p(c) = p(c | B_k): the score is identically 0 at lam = 1.
    np.testing.assert_allclose(soft_wpmi(acts[:, 2:], emb, txt, top_k=10), 0.0, atol=1e-12)
    np.testing.assert_array_equal(
        soft_wpmi(acts, emb, txt, top_k=10, lam=0.0),
        soft_wpmi_log_conditional(acts, emb, txt, top_k=10),
    )


def test_unnormalised_embeddings_equal_normalised():
    acts, emb, txt = _random_inputs(6)
    emb = emb.astype(np.float64)
    scale = np.arange(1, emb.shape[0] + 1)[:, None]
    np.testing.assert_allclose(
        soft_wpmi(acts, emb * scale, txt * 3.0, top_k=8),
        soft_wpmi(acts, emb / np.linalg.norm(emb, axis=1, keepdims=True), txt, top_k=8),
        atol=1e-12,
    )


def _planted_world(seed=0, n_concepts=6, per_concept=40, dim=16, noise=0.15):
    """Images of concept c embed near e_c; unit u fires on images of concept planted[u]."""
    rng = np.random.default_rng(seed)
    concept_of_image = np.repeat(np.arange(n_concepts), per_concept)
    rng.shuffle(concept_of_image)
    n_images = concept_of_image.size
    basis = np.eye(dim)
    emb = basis[concept_of_image] + noise * rng.normal(size=(n_images, dim))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    txt = basis[:n_concepts]
    planted = np.array([0, 1, 2, 3, 4, 5, 3, 0, 5, 2])
    acts = rng.normal(scale=0.3, size=(n_images, planted.size + 4))  # 4 null units at the end
    acts[:, : planted.size] += 2.0 * (concept_of_image[:, None] == planted[None, :])
    acts = np.maximum(acts, 0.0)  # ReLU: many tied zeros
    return acts, emb.astype(np.float32), txt, planted


@pytest.mark.parametrize("top_k", [10, 30])
def test_planted_units_get_their_concept(top_k):
    acts, emb, txt, planted = _planted_world()
    wpmi = soft_wpmi(acts, emb, txt, top_k=top_k)
    cos = top_mean_cosine(acts, emb, txt, top_k=top_k)
    n = planted.size
    np.testing.assert_array_equal(wpmi[:n].argmax(axis=1), planted)
    np.testing.assert_array_equal(cos[:n].argmax(axis=1), planted)
    # The planted concept stands out: its cosine is far above every other concept's.
    best = cos[np.arange(n), planted]
    other = np.where(np.eye(txt.shape[0], dtype=bool)[planted], -np.inf, cos[:n]).max(axis=1)
    assert (best - other > 0.5).all()


def test_planted_truth_survives_shuffled_image_order():
    acts, emb, txt, planted = _planted_world(seed=3)
    perm = np.random.default_rng(0).permutation(acts.shape[0])
    np.testing.assert_allclose(
        soft_wpmi(acts[perm], emb[perm], txt, top_k=20), soft_wpmi(acts, emb, txt, top_k=20),
        atol=1e-10,
    )


def test_ties_broken_by_image_index():
    # A dead unit: every image ties, so its top-2 are images 0 and 1.
    acts = np.zeros((4, 1))
    emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    cos = top_mean_cosine(acts, emb, np.eye(2), top_k=2)
    np.testing.assert_allclose(cos, [[1.0, 0.0]], atol=1e-15)


def test_top_k_larger_than_n_images_clamps_with_warning():
    acts, emb, txt = _random_inputs(8, n_images=12)
    with pytest.warns(UserWarning, match=r"top_k=50 exceeds n_images=12") as record:
        got = soft_wpmi_log_conditional(acts, emb, txt, top_k=50)
    assert record[0].filename == __file__  # points at the caller, not the kernel
    with pytest.warns(UserWarning, match=r"top_k=50 exceeds n_images=12") as record:
        soft_wpmi(acts, emb, txt, top_k=50)
    assert record[0].filename == __file__
    # Rank j keeps its weight from the top_k=50 schedule: oracle over all 12 images with it.
    weights = np.linspace(0.998, 0.97, 50)[:12]
    want = np.zeros_like(got)
    embn = emb.astype(np.float64) / np.linalg.norm(emb.astype(np.float64), axis=1, keepdims=True)
    txtn = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    for u in range(acts.shape[1]):
        for j, i in enumerate(_naive_top(acts[:, u], 12)):
            s = 10.0 * (txtn @ embn[i])
            p = np.exp(s) / np.exp(s).sum()
            want[u] += np.log(1.0 + weights[j] * (p - 1.0))
    np.testing.assert_allclose(got, want, atol=1e-10)
    with pytest.warns(UserWarning, match="exceeds n_images") as record:
        cos = top_mean_cosine(acts, emb, txt, top_k=13)
    assert record[0].filename == __file__
    np.testing.assert_allclose(cos, _naive_top_mean_cosine(acts, emb, txt, 12), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        soft_wpmi(acts, emb, txt, top_k=12)  # exactly n_images: no warning


def test_zero_units_gives_empty_table():
    _, emb, txt = _random_inputs(0)
    assert soft_wpmi(np.zeros((emb.shape[0], 0)), emb, txt, top_k=3).shape == (0, txt.shape[0])
    assert top_mean_cosine(np.zeros((emb.shape[0], 0)), emb, txt, top_k=3).shape == (0, 5)


@pytest.mark.parametrize(
    ("acts_shape", "emb_shape", "txt_shape", "match"),
    [
        ((10, 3), (9, 8), (5, 8), r"image_embeddings has 9 rows but activations has 10 images "
                                  r"\(shapes \(9, 8\) and \(10, 3\)\)"),
        ((10, 3), (10, 8), (5, 7), r"text_embeddings has dimension 7 but image_embeddings has 8 "
                                   r"\(shapes \(5, 7\) and \(10, 8\)\)"),
        ((10,), (10, 8), (5, 8), r"activations must be 2-D \(n_images, n_units\), got shape "
                                 r"\(10,\)"),
        ((10, 3), (10, 8), (0, 8), r"text_embeddings has no concepts"),
        ((0, 3), (0, 8), (5, 8), r"activations has no images"),
    ],
)
def test_shape_errors_quote_shapes(acts_shape, emb_shape, txt_shape, match):
    args = (np.ones(acts_shape), np.ones(emb_shape), np.ones(txt_shape))
    for fn in (soft_wpmi, top_mean_cosine):
        with pytest.raises(ValueError, match=match):
            fn(*args, top_k=2)


def test_value_errors():
    acts, emb, txt = _random_inputs(9, n_images=120)
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        soft_wpmi(acts, emb, txt, top_k=0)
    with pytest.raises(ValueError, match="top_k must be an integer"):
        top_mean_cosine(acts, emb, txt, top_k=2.5)
    with pytest.raises(ValueError, match=r"weight_start must lie in \[0, 1\), got 1.0"):
        soft_wpmi(acts, emb, txt, weight_start=1.0)
    with pytest.raises(ValueError, match=r"weight_end must lie in \[0, 1\)"):
        soft_wpmi(acts, emb, txt, weight_end=-0.1)
    with pytest.raises(ValueError, match="alpha must be finite"):
        soft_wpmi(acts, emb, txt, alpha=np.inf)
    with pytest.raises(ValueError, match="lam must be finite"):
        soft_wpmi(acts, emb, txt, lam=np.nan)
    bad = acts.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="activations has 1 non-finite values"):
        soft_wpmi(bad, emb, txt)
    zero = emb.copy()
    zero[7] = 0.0
    with pytest.raises(ValueError, match=r"image_embeddings has 1 all-zero rows \(first: row 7\)"):
        top_mean_cosine(acts, zero, txt)


def test_stats_module_imports_no_ray_or_torch():
    import subprocess

    code = (
        "import sys, neuronscan.stats._wpmi; "
        "bad = [m for m in ('ray', 'torch') if m in sys.modules]; "
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --- precision="float32": the fast path, against the float64 path and the naive oracle ----------


def _normalised_inputs(seed, n_images, n_units, n_concepts, dim):
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_images, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    txt = rng.normal(size=(n_concepts, dim)).astype(np.float32)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    acts = np.maximum(rng.normal(size=(n_images, n_units)), 0.0).astype(np.float32)
    return acts, emb, txt


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("top_k", [1, 5, 23, 60])
def test_float32_matches_naive_oracle(seed, top_k):
    acts, emb, txt = _random_inputs(seed)
    got = soft_wpmi(acts, emb, txt, top_k=top_k, alpha=7.0, lam=0.7, weight_start=0.99,
                    weight_end=0.9, precision="float32")
    want = _naive_soft_wpmi(acts, emb, txt, top_k, 7.0, 0.7, 0.99, 0.9)
    assert got.shape == (7, 5) and got.dtype == np.float64
    # A few 1e-7 per term (float32 cosines and log1p), summed over top_k terms.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * top_k)
    np.testing.assert_array_equal(got.argmax(axis=1), want.argmax(axis=1))


def test_float32_within_stated_bound_of_float64_at_100_top_images():
    # CLIP-like sizes scaled down: 100 top images per unit, alpha 10, default weights.
    acts, emb, txt = _normalised_inputs(3, n_images=4000, n_units=48, n_concepts=1500, dim=64)
    exact = soft_wpmi_log_conditional(acts, emb, txt)
    fast = soft_wpmi_log_conditional(acts, emb, txt, precision="float32")
    assert fast.dtype == np.float64 and (fast <= 0).all()
    # The module docstring's bound: 1e-4 at 100 top images (typically ~1e-6).
    assert np.abs(fast - exact).max() < 1e-4
    scores = soft_wpmi(acts, emb, txt), soft_wpmi(acts, emb, txt, precision="float32")
    assert np.abs(scores[1] - scores[0]).max() < 2e-4
    # Labels agree wherever float64's top two concepts are further apart than the error bound.
    top2 = np.sort(scores[0], axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 4e-4
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(scores[1][clear].argmax(axis=1), scores[0][clear].argmax(axis=1))


@pytest.mark.parametrize("top_k", [10, 30, 100])
def test_float32_planted_labels_equal_float64(top_k):
    acts, emb, txt, planted = _planted_world(seed=1, per_concept=60)
    exact = soft_wpmi(acts, emb, txt, top_k=top_k)
    fast = soft_wpmi(acts, emb, txt, top_k=top_k, precision="float32")
    np.testing.assert_array_equal(fast[: planted.size].argmax(axis=1), planted)
    np.testing.assert_array_equal(fast.argmax(axis=1), exact.argmax(axis=1))  # null units too
    np.testing.assert_allclose(fast, exact, rtol=0, atol=1e-4)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_exact_ties_go_to_the_lower_concept_index(precision):
    # Concept 6 is a copy of concept 3 (and 7 of 0): their columns are equal to the last bit, so
    # the argmax (first maximum) is the lower index in both precisions, for every unit.
    acts, emb, txt, planted = _planted_world(seed=2)
    txt = np.concatenate([txt, txt[[3, 0]]])
    got = soft_wpmi(acts, emb, txt, top_k=20, precision=precision)
    np.testing.assert_array_equal(got[:, 6], got[:, 3])
    np.testing.assert_array_equal(got[:, 7], got[:, 0])
    labels = got.argmax(axis=1)
    np.testing.assert_array_equal(labels[: planted.size], planted)
    assert not np.isin(labels, [6, 7]).any()


@pytest.mark.parametrize(("precision", "atol"), [("float64", 1e-12), ("float32", 2e-5)])
def test_shards_agree_with_the_whole_layer_and_repeats_are_bitwise(precision, atol):
    # Image ranges are fixed by image index, so a shard meets the same ranges as the whole layer;
    # only the BLAS's rounding of a row may depend on how many rows it multiplies at once.
    acts, emb, txt = _normalised_inputs(4, n_images=3000, n_units=40, n_concepts=300, dim=32)
    whole = soft_wpmi_log_conditional(acts, emb, txt, top_k=50, precision=precision)
    np.testing.assert_array_equal(
        soft_wpmi_log_conditional(acts, emb, txt, top_k=50, precision=precision), whole
    )
    parts = [
        soft_wpmi_log_conditional(acts[:, cols], emb, txt, top_k=50, precision=precision)
        for cols in (slice(0, 7), slice(7, 8), slice(8, 40))
    ]
    np.testing.assert_allclose(np.concatenate(parts), whole, rtol=0, atol=atol)


def test_float32_blocked_equals_unblocked(monkeypatch):
    acts, emb, txt = _random_inputs(3, n_units=11)
    whole = soft_wpmi(acts, emb, txt, top_k=9, precision="float32")
    # One image per range and one pair per gathered chunk: a different float32 summation order.
    monkeypatch.setattr(_wpmi_module, "_BLOCK_ELEMENTS", 1)
    monkeypatch.setattr(_wpmi_module, "_GATHER_ELEMENTS", 1)
    np.testing.assert_allclose(soft_wpmi(acts, emb, txt, top_k=9, precision="float32"), whole,
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_read_only_inputs_are_fine(precision):
    acts, emb, txt = _random_inputs(7)
    want = soft_wpmi(acts, emb, txt, top_k=6, precision=precision)
    for arr in (acts, emb, txt):
        arr.setflags(write=False)  # as Ray hands batches over
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = soft_wpmi(acts, emb, txt, top_k=6, precision=precision)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64])
@pytest.mark.parametrize("n_images", [500, 6000])
def test_top_indices_equal_a_stable_sort(dtype, n_images):
    # 6,000 images: small k take the sampled-threshold path (stride >= 2), large k the full one.
    rng = np.random.default_rng(5)
    acts = rng.integers(0, 3, size=(n_images, 10)).astype(dtype)  # heavy ties at every cut
    acts[:, 0] = 0  # dead
    acts[:, 1] = np.arange(n_images)[::-1]  # strictly decreasing
    acts[:, 2] = rng.permutation(n_images)
    acts[:, 3] = rng.integers(0, 1000, size=n_images)  # ties inside and at the top k
    acts[:, 4] = 0
    acts[rng.choice(n_images, 3, replace=False), 4] = 5  # fewer positives than k
    acts[:, 5] = 0
    acts[1::7, 5] = rng.permutation(acts[1::7, 5].size) + 1  # the top images off a stride-7 grid
    for k in (1, 7, 23, 100, n_images - 1, n_images):
        # _validate keeps float32/float64 activations and turns other dtypes into float64.
        ranked = acts if acts.dtype != np.int64 else acts.astype(np.float64)
        got = _wpmi_module._top_indices(ranked, k)
        want = np.stack([_naive_top(acts[:, u], k) for u in range(acts.shape[1])])
        np.testing.assert_array_equal(got, want)


def test_unknown_precision_is_refused():
    acts, emb, txt = _random_inputs(9)
    with pytest.raises(ValueError, match=r"precision must be 'float64' or 'float32', got 'half'"):
        soft_wpmi(acts, emb, txt, top_k=3, precision="half")
    with pytest.raises(ValueError, match="precision must be"):
        soft_wpmi_log_conditional(acts, emb, txt, top_k=3, precision=np.float32)


# --- top images chosen once, soft-WPMI of many shards and layers in one call --------------------


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_from_top_equals_the_activation_entry(precision):
    acts, emb, txt = _random_inputs(12, n_units=9)
    for top_k in (1, 13, 60):
        top = top_image_indices(acts, top_k=top_k)
        assert top.shape == (9, top_k) and top.dtype == np.int64
        np.testing.assert_array_equal(
            soft_wpmi_log_conditional_from_top(top.astype(np.int32), emb, txt, precision=precision),
            soft_wpmi_log_conditional(acts, emb, txt, top_k=top_k, precision=precision),
        )


def test_from_top_stacks_layers_into_one_call():
    # Two "layers" over the same images: one call on their stacked top rows, split afterwards,
    # equals the per-layer calls (float64 to 1e-12; the BLAS may round a row differently).
    a1, emb, txt = _random_inputs(13, n_units=5)
    a2 = np.random.default_rng(1).normal(size=(a1.shape[0], 8))
    stacked = np.concatenate([top_image_indices(a1, top_k=10), top_image_indices(a2, top_k=10)])
    both = soft_wpmi_log_conditional_from_top(stacked, emb, txt)
    np.testing.assert_allclose(both[:5], soft_wpmi_log_conditional(a1, emb, txt, top_k=10),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(both[5:], soft_wpmi_log_conditional(a2, emb, txt, top_k=10),
                               rtol=0, atol=1e-12)


def test_from_top_keeps_a_clamped_schedule():
    acts, emb, txt = _random_inputs(8, n_images=12)
    with pytest.warns(UserWarning, match="top_k=50 exceeds n_images=12") as record:
        top = top_image_indices(acts, top_k=50)
    assert record[0].filename == __file__ and top.shape == (7, 12)
    with pytest.warns(UserWarning, match="exceeds n_images"):
        want = soft_wpmi_log_conditional(acts, emb, txt, top_k=50)
    np.testing.assert_array_equal(soft_wpmi_log_conditional_from_top(top, emb, txt, top_k=50), want)


def test_from_top_errors():
    acts, emb, txt = _random_inputs(9)
    top = top_image_indices(acts, top_k=4)
    with pytest.raises(ValueError, match="top must hold integer image indices, got dtype float64"):
        soft_wpmi_log_conditional_from_top(top.astype(float), emb, txt)
    with pytest.raises(ValueError, match="top holds image index 60, outside the 60 rows"):
        soft_wpmi_log_conditional_from_top(top + 60 - top.max(), emb, txt)
    with pytest.raises(ValueError, match="top holds image index -1"):
        soft_wpmi_log_conditional_from_top(top - 1 - top.min(), emb, txt)
    with pytest.raises(ValueError, match=r"top_k must be an integer >= k = 4 \(top's width\), got 3"):
        soft_wpmi_log_conditional_from_top(top, emb, txt, top_k=3)
    with pytest.raises(ValueError, match=r"top has 7 units but no images per unit"):
        soft_wpmi_log_conditional_from_top(top[:, :0], emb, txt)
    with pytest.raises(ValueError, match=r"top must be 2-D"):
        soft_wpmi_log_conditional_from_top(top[0], emb, txt)
    with pytest.raises(ValueError, match="text_embeddings has dimension 7 but image_embeddings has 8"):
        soft_wpmi_log_conditional_from_top(top, emb, txt[:, :7])
    with pytest.raises(ValueError, match="precision must be"):
        soft_wpmi_log_conditional_from_top(top, emb, txt, precision="float16")
    assert soft_wpmi_log_conditional_from_top(top[:0], emb, txt).shape == (0, 5)
    with pytest.raises(ValueError, match="activations has 1 non-finite values"):
        bad = acts.copy()
        bad[0, 0] = np.inf
        top_image_indices(bad)
    assert top_image_indices(np.zeros((5, 0)), top_k=2).shape == (0, 2)


def test_docstring_examples():
    import doctest

    import neuronscan.stats as stats

    namespace = {"np": np, **{k: getattr(stats, k) for k in stats.__all__}}
    result = doctest.testmod(_wpmi_module, extraglobs=namespace,
                             optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 5 and result.failed == 0


def test_log_prior_is_the_log_mean_exp_over_units():
    from scipy.special import logsumexp

    from neuronscan.stats import soft_wpmi_log_prior

    rng = np.random.default_rng(7)
    log_cond = -np.abs(rng.normal(scale=300.0, size=(50, 9)))  # far below 0: exp underflows without the shift
    want = logsumexp(log_cond, axis=0) - np.log(50)
    np.testing.assert_allclose(soft_wpmi_log_prior(log_cond), want, rtol=1e-12, atol=1e-9)
    with pytest.raises(ValueError, match="n_units >= 1"):
        soft_wpmi_log_prior(np.empty((0, 3)))
