"""SQuAD's exact match and F1, as the official v1.1 evaluation script defines them.

Written from the script's definition (``evaluate-v1.1.py``, Rajpurkar et al., 2016), which
is not a library we can import: both strings are normalised — lowercased, every
ASCII punctuation character (``string.punctuation``) removed, the articles "a", "an",
"the" removed as words, whitespace collapsed — then

    EM = 1[norm(pred) = norm(gold)]
    F1 = 2·P·R / (P + R),  P = |common| / |pred tokens|,  R = |common| / |gold tokens|

with ``common`` the multiset intersection of the whitespace tokens (F1 = 0 when nothing
is shared). A question scores the maximum over its reference answers; a set of
predictions scores the mean over questions (reported in [0, 1], the script prints ×100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, punctuation removed, articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1(prediction: str, gold: str) -> float:
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean over questions of the best EM and F1 against each question's references."""
    if len(predictions) != len(golds) or not golds:
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} questions")
    em = sum(max(exact_match(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True))
    f = sum(max(f1(p, g) for g in gs) for p, gs in zip(predictions, golds, strict=True))
    return {"exact_match": em / len(golds), "f1": f / len(golds)}
