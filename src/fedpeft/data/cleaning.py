"""Each built-in text dataset's cleaning of its texts, under the dataset's name: what its
loader does to every text of its local files before a run sees it (SST-2, Banking77 and
TREC strip them, AG News turns its ``\\`` line breaks into spaces, 20 Newsgroups drops the
headers and collapses whitespace: ``text_sets.newsgroup_text``), and so what
``fedpeft predict`` does to new texts for a run on that dataset. One definition serves
both; a dataset without one (custom data, texts from the hub) is used as it is read.
"""

from __future__ import annotations

from collections.abc import Callable

TextCleaning = Callable[[str], str]

_CLEANING: dict[str, TextCleaning] = {}


def register_text_cleaning(dataset: str, clean: TextCleaning) -> TextCleaning:
    """Names ``clean`` as ``dataset``'s cleaning (next to its loader); returns it, for the
    loader to call."""
    if dataset in _CLEANING:
        raise ValueError(f"dataset {dataset!r} already has a text cleaning")
    _CLEANING[dataset] = clean
    return clean


def text_cleaning(dataset: str) -> TextCleaning:
    """``dataset``'s cleaning of a text (unchanged where it has none)."""
    return _CLEANING.get(dataset, _unchanged)


def _unchanged(text: str) -> str:
    return text
