"""Retrieval quality against relevance judgements: recall@k and nDCG@k.

``ranking`` is what a search returned, best first (document ids, repeats
already removed); ``relevant`` maps each judged document to its grade
(greater than 0: relevant). Both measures follow trec_eval's conventions:
the gain of a document is its grade, discounted by log2(rank + 1), and the
ideal ordering puts every judged document in grade order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence


def distinct(ids: Iterable[str]) -> list[str]:
    """``ids`` in order without repeats (a document's later chunks drop out)."""
    return list(dict.fromkeys(ids))


def recall_at(k: int, ranking: Sequence[str], relevant: Mapping[str, int]) -> float:
    """The share of the relevant documents found in the first ``k``; 0 with none relevant."""
    wanted = {doc for doc, grade in relevant.items() if grade > 0}
    if not wanted:
        return 0.0
    return len(wanted.intersection(ranking[:k])) / len(wanted)


def _dcg(grades: Iterable[int]) -> float:
    return sum(grade / math.log2(rank + 2) for rank, grade in enumerate(grades))


def ndcg_at(k: int, ranking: Sequence[str], relevant: Mapping[str, int]) -> float:
    """Normalised discounted cumulative gain of the first ``k``; 0 with none relevant."""
    ideal = _dcg(sorted((g for g in relevant.values() if g > 0), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return _dcg(max(relevant.get(doc, 0), 0) for doc in ranking[:k]) / ideal


def mean(values: Sequence[float]) -> float:
    """The average; 0 for none."""
    return sum(values) / len(values) if values else 0.0
