"""Banking77, TREC and 20 Newsgroups loaders against the official sizes."""

import numpy as np
import pytest

from fedpeft.config import load_config
from fedpeft.data import load_dataset
from fedpeft.data.text_sets import TREC_COARSE, newsgroup_text


def _full(name: str):  # type: ignore[no-untyped-def]
    cfg = load_config(overrides=[f"data.dataset='{name}'", "data.train_size=100000"]).data
    return load_dataset(cfg, 0)


@pytest.mark.parametrize(
    ("name", "train", "test", "classes"),
    [
        ("banking77", 10003, 3080, 77),
        ("trec", 5452, 500, 6),
        ("trec_fine", 5452, 500, 50),
        ("20newsgroups", 11314, 7532, 20),
    ],
)
def test_official_sizes(name: str, train: int, test: int, classes: int) -> None:
    ds = _full(name)
    assert (len(ds.train), len(ds.eval), ds.num_labels) == (train, test, classes)
    assert set(np.unique(ds.train.labels)) == set(range(classes))  # every class in train
    assert all(isinstance(t, str) and t for t in ds.train.texts[:50])


def test_label_names_and_orders() -> None:
    assert _full("trec").label_names == TREC_COARSE
    b = _full("banking77")
    assert b.label_names[:2] == ["card_arrival", "card_linking"]
    assert b.train.texts[0] == "I am still waiting on my card?"
    assert b.label_names[b.train.labels[0]] == "card_arrival"
    # TREC's test set: 500 questions, NUM and DESC are its two largest coarse classes
    t = _full("trec")
    counts = np.bincount(t.eval.labels, minlength=6)
    assert counts.sum() == 500 and counts.argmax() in (1, 5)
    assert len(np.unique(_full("trec_fine").eval.labels)) == 42


def test_newsgroups_drop_the_header_that_names_the_label() -> None:
    raw = (
        "From: a@b.c\nSubject: Re: Jupiter moons\nNewsgroups: sci.space\nLines: 3\n\n"
        "The moons are\n  many.\n\nBye"
    )
    assert newsgroup_text(raw) == "Re: Jupiter moons The moons are many. Bye"
    assert newsgroup_text("Newsgroups: sci.space\n\nBody only") == "Body only"
    ds = _full("20newsgroups")
    assert ds.label_names[0] == "alt.atheism" and ds.label_names[-1] == "talk.religion.misc"
    assert not any("Newsgroups:" in t[:200] for t in ds.train.texts[:500])
    assert np.bincount(ds.eval.labels).sum() == 7532
