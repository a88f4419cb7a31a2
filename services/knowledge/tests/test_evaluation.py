"""recall@k and nDCG@k on rankings small enough to work out by hand."""

from __future__ import annotations

import math

import pytest

from aion.knowledge import evaluation


def test_distinct_keeps_the_first_place_of_each_document() -> None:
    assert evaluation.distinct(["a", "b", "a", "c", "b"]) == ["a", "b", "c"]


def test_recall_counts_the_relevant_found_in_the_first_k() -> None:
    relevant = {"a": 1, "b": 1, "c": 1, "d": 1}
    ranking = ["x", "a", "y", "b", "z", "c"]
    assert evaluation.recall_at(5, ranking, relevant) == 0.5  # a and b; c is 6th
    assert evaluation.recall_at(6, ranking, relevant) == 0.75
    assert evaluation.recall_at(1, ranking, relevant) == 0.0
    # Judged but not relevant (grade 0) does not count as wanted.
    assert evaluation.recall_at(5, ["a"], {"a": 1, "b": 0}) == 1.0
    assert evaluation.recall_at(5, ["a"], {}) == 0.0


def test_ndcg_by_hand() -> None:
    # Binary: relevant at ranks 1 and 3 of two relevant: (1 + 1/log2 4) / (1 + 1/log2 3).
    got = evaluation.ndcg_at(10, ["a", "x", "b"], {"a": 1, "b": 1})
    assert got == pytest.approx((1 + 1 / 2) / (1 + 1 / math.log2(3)))
    assert got == pytest.approx(0.9197, abs=1e-4)
    # Graded: the grade-2 document second, the grade-1 first; ideal is the other way round.
    graded = evaluation.ndcg_at(10, ["c", "d"], {"c": 1, "d": 2})
    assert graded == pytest.approx((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)))
    # Perfect, empty, nothing relevant, and a cut that leaves the relevant one out.
    assert evaluation.ndcg_at(10, ["a", "b"], {"a": 1, "b": 1}) == pytest.approx(1.0)
    assert evaluation.ndcg_at(10, [], {"a": 1}) == 0.0
    assert evaluation.ndcg_at(10, ["a"], {"a": 0}) == 0.0
    assert evaluation.ndcg_at(1, ["x", "a"], {"a": 1}) == 0.0


def test_mean() -> None:
    assert evaluation.mean([0.5, 1.0, 0.0]) == pytest.approx(0.5)
    assert evaluation.mean([]) == 0.0
