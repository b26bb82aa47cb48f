"""The paper's metrics on hand-checked cases."""

import math

import numpy as np
import pytest

from sauce_jax.eval.metrics import Rate, clean_accuracy, mean_rate, mme_score, retain_accuracy, unlearning_accuracy, utility
from sauce_jax.errors import InputError


def test_unlearning_accuracy_counts_only_what_the_clean_model_knew():
    clean = np.array([True, True, True, False, False])
    edited = np.array([False, True, False, False, True])
    ua = unlearning_accuracy(clean, edited)
    assert ua.n == 3 and ua.value == pytest.approx(2 / 3)  # the two unknown cases are ignored


def test_retain_accuracy_is_the_share_still_shown():
    clean = np.array([True, True, True, True, False])
    edited = np.array([True, False, True, True, False])
    assert retain_accuracy(clean, edited) == Rate(0.75, 4)


def test_no_support_gives_nan_not_a_score():
    rate = unlearning_accuracy(np.zeros(3, bool), np.zeros(3, bool))
    assert rate.n == 0 and math.isnan(rate.value)
    assert rate.as_dict() == {"value": None, "n": 0}
    assert clean_accuracy(np.array([True, False, True, True])) == Rate(0.75, 4)


def test_mme_accuracy_plus_needs_both_questions_of_an_image():
    # image 0: both right; image 1: one right; image 2: none right.
    correct = np.array([True, True, True, False, False, False])
    score = mme_score(correct, [0, 0, 1, 1, 2, 2])
    assert score == {"acc": 50.0, "acc_plus": pytest.approx(33.33, abs=0.01), "score": pytest.approx(83.33, abs=0.01)}
    assert utility({"count": score, "position": mme_score(np.ones(4, bool), [0, 0, 1, 1])}) == pytest.approx(
        (83.33 / 2 + 100) / 2, abs=0.01)


def test_mean_rate_weighs_concepts_equally_and_skips_empty_ones():
    m = mean_rate([Rate(1.0, 10), Rate(0.5, 2), Rate(float("nan"), 0)])
    assert m.value == pytest.approx(0.75) and m.n == 12


def test_bad_inputs_are_named():
    with pytest.raises(InputError, match="differ in length"):
        unlearning_accuracy(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(InputError, match="booleans"):
        retain_accuracy(np.ones(3), np.ones(3))
    with pytest.raises(InputError, match="image_ids"):
        mme_score(np.ones(4, bool), [0, 0, 1])
    with pytest.raises(InputError, match="no answers"):
        mme_score(np.zeros(0, bool), [])
    with pytest.raises(InputError, match="no subtasks"):
        utility({})
