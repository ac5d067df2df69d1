"""Selection rules and saliency against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from spin_cache.errors import InputError
from spin_cache.loop.probe import rank_neurons, saliency_from_coef
from spin_cache.loop.select import random_like, select, select_eta, select_top_k, select_top_percent


def test_eta_keeps_the_shortest_prefix_reaching_the_share():
    s = np.array([1.0, 4.0, 0.0, 3.0, 2.0])  # total 10; order 1, 3, 4, 0, 2
    assert select_eta(s, 0.4).tolist() == [1]  # 4/10 reaches 0.4 exactly
    assert select_eta(s, 0.41).tolist() == [1, 3]  # 7/10
    assert select_eta(s, 0.7).tolist() == [1, 3]
    assert select_eta(s, 0.9).tolist() == [1, 3, 4]  # 9/10 reaches 0.9
    assert select_eta(s, 0.95).tolist() == [1, 3, 4, 0]
    assert select_eta(s, 1.0).tolist() == [1, 3, 4, 0]  # the zero-saliency neuron adds nothing


def test_eta_zero_and_all_zero_keep_one_neuron():
    assert select_eta(np.array([0.5, 2.0, 1.0]), 0.0).tolist() == [1]
    assert select_eta(np.zeros(4), 0.8).tolist() == [0]
    assert select_top_k(np.zeros(4), 2).tolist() == [0, 1]


def test_ties_go_to_the_lower_index():
    s = np.array([2.0, 5.0, 2.0, 5.0, 2.0])
    assert select_top_k(s, 3).tolist() == [1, 3, 0]
    assert rank_neurons(s).tolist() == [2, 0, 3, 1, 4]
    assert select_eta(s, 0.5).tolist() == [1, 3]  # 10/16 >= 0.5 after two


def test_eta_one_with_float_rounding_keeps_every_salient_neuron():
    s = np.full(10, 0.1)  # cumulative sums of 0.1 stop at 0.9999999999999999
    assert len(select_eta(s, 1.0)) == 10


def test_top_k_and_top_percent_bounds():
    s = np.arange(10, dtype=float)
    assert select_top_k(s, 3).tolist() == [9, 8, 7]
    assert len(select_top_k(s, 50)) == 10
    assert select_top_percent(s, 25).tolist() == [9, 8, 7]  # ceil(2.5)
    assert select_top_percent(s, 0.01).tolist() == [9]
    assert len(select_top_percent(s, 100)) == 10
    assert select(s, "top-k", 2).tolist() == [9, 8]
    for bad in (lambda: select_eta(s, 1.5), lambda: select_top_k(s, 0), lambda: select_top_percent(s, 0),
                lambda: select(s, "median", 1)):  # fmt: skip
        with pytest.raises(InputError):
            bad()


def test_multiclass_saliency_sums_squared_weights_over_classes():
    coef = np.array([[1.0, 0.0, -2.0], [0.5, 0.0, 1.0], [-1.0, 3.0, 0.0]])
    np.testing.assert_allclose(saliency_from_coef(coef), [2.25, 9.0, 5.0])
    np.testing.assert_allclose(saliency_from_coef(np.array([[0.5, -2.0]])), [0.25, 4.0])


def test_random_control_is_seeded_and_keeps_counts():
    a = random_like({1: 3, 2: 5}, {1: 100, 2: 100}, seed=7)
    b = random_like({1: 3, 2: 5}, {1: 100, 2: 100}, seed=7)
    c = random_like({1: 3, 2: 5}, {1: 100, 2: 100}, seed=8)
    assert [len(a[1]), len(a[2])] == [3, 5]
    assert all((a[k] == b[k]).all() for k in a)
    assert any((a[k] != c[k]).any() for k in a)
