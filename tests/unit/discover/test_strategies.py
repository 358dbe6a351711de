"""Prevalence and reliability on hand-computed cases (the holistic paper's definitions)."""

from __future__ import annotations

import numpy as np
import pytest

from neuronscan.discover import dominant_concepts, prevalence, reliability, strategy_frame


def test_prevalence_and_reliability_by_hand():
    # image 0 → concept 0, image 1 → concept 1, image 2 → concept 0; concept 2 dominates none
    importance = np.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.5], [3.0, 1.0, 0.0]])
    dom = dominant_concepts(importance)
    assert dom.tolist() == [0, 1, 0]
    assert prevalence(dom, 3) == pytest.approx([2 / 3, 1 / 3, 0.0])
    rel = reliability(dom, np.array([1.0, 0.0, 1.0]), 3)
    assert rel[:2] == pytest.approx([1.0, 0.0]) and np.isnan(rel[2])
    assert reliability(dom, np.array([0.9, 0.5, 0.7]), 3)[:2] == pytest.approx([0.8, 0.5])
    assert dominant_concepts(np.array([[1.0, 1.0], [np.nan, 0.0]])).tolist() == [0, 1]  # ties low, NaN never
    assert prevalence(np.zeros(0, dtype=int), 2).tolist() == [0.0, 0.0]


def test_strategy_frame():
    importance = np.array([[1.0, 0.0, 0.5], [0.0, 2.0, 0.5], [3.0, 1.0, 0.0], [2.0, -1.0, 1.0]])
    frame = strategy_frame(importance, np.array([True, False, True, False]))
    assert frame["concept"].tolist() == [0, 1, 2]
    assert frame["n_images"].tolist() == [3, 1, 0] and frame["prevalence"].sum() == pytest.approx(1.0)
    assert frame.loc[0, "reliability"] == pytest.approx(2 / 3) and np.isnan(frame.loc[2, "reliability"])
    assert frame["runner_up"].tolist() == [2, 2, -1]  # images 0 and 3 have concept 2 second, image 2 concept 1
    # shares of the dominant concept in the positive importance: 1/1.5, 3/4, 2/3 → mean
    assert frame.loc[0, "mean_share"] == pytest.approx(np.mean([1 / 1.5, 3 / 4, 2 / 3]))
    assert frame.loc[1, "mean_share"] == pytest.approx(2 / 2.5)
