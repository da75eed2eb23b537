import json
from pathlib import Path

import numpy as np
import pytest

from fedpeft.config import load_config
from fedpeft.data import load_dataset, tokenize_split
from fedpeft.errors import FedpeftError
from fedpeft.models import get_model_spec, load_tokenizer


def test_sst2_full_sizes_from_shared_data() -> None:
    ds = load_dataset(load_config(overrides=["data.train_size=100000"]).data, 0)
    assert (len(ds.train.texts), len(ds.eval.texts)) == (67349, 872)
    assert ds.label_names == ["negative", "positive"]
    assert set(np.unique(ds.train.labels)) == {0, 1}


def test_ag_news_labels_and_seeded_subsets() -> None:
    cfg = load_config(
        overrides=["data.dataset='ag_news'", "data.train_size=500", "data.eval_size=300"]
    ).data
    a, b = load_dataset(cfg, 1), load_dataset(cfg, 1)
    assert (len(a.train.texts), len(a.eval.texts)) == (500, 300)
    assert a.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert a.train.texts == b.train.texts
    assert np.bincount(a.eval.labels, minlength=4).min() > 40
    assert load_dataset(cfg, 2).train.texts != a.train.texts


def _write(path: Path, kind: str) -> None:
    rows = [("good film", "pos"), ("bad film", "neg"), ("great", "pos"), ("awful", "neg")] * 5
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"txt": t, "y": y}) + "\n" for t, y in rows))
    else:
        sep = "\t" if kind == "tsv" else ","
        path.write_text(f"txt{sep}y\n" + "".join(f"{t}{sep}{y}\n" for t, y in rows))


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl"])
def test_bring_your_own_files(tmp_path: Path, kind: str) -> None:
    train = tmp_path / f"train.{kind}"
    _write(train, kind)
    cfg = load_config(
        overrides=[
            "data.dataset='custom'",
            f"data.train_file={str(train)!r}",
            f"data.eval_file={str(train)!r}",
            "data.text_column='txt'",
            "data.label_column='y'",
        ]
    ).data
    ds = load_dataset(cfg, 0)
    assert ds.label_names == ["neg", "pos"]
    assert len(ds.train.texts) == len(ds.eval.texts) == 20
    assert ds.train.labels[:2].tolist() == [1, 0]


def test_missing_column_is_a_user_error(tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    _write(train, "csv")
    cfg = load_config(overrides=["data.dataset='custom'", f"data.train_file={str(train)!r}"]).data
    with pytest.raises(FedpeftError, match="no column `text`"):
        load_dataset(cfg, 0)


def test_tokenise_once_dynamic_padding_and_length_buckets() -> None:
    ds = load_dataset(load_config(overrides=["data.train_size=200"]).data, 0)
    split = tokenize_split(ds.train, load_tokenizer(get_model_spec("minilm-l6")), max_length=64)
    idx = np.arange(8)
    batch = split.collate(idx)
    assert batch.input_ids.shape == (8, max(len(split.input_ids[i]) for i in idx))
    assert batch.attention_mask.sum(1).tolist() == [len(split.input_ids[i]) for i in idx]
    seen, widths = [], []
    for ids, b in split.eval_batches(32):
        seen.extend(ids.tolist())
        widths.append(b.input_ids.shape[1])
    assert sorted(seen) == list(range(200)) and widths == sorted(widths)
    assert split.lengths.max() <= 64


def test_left_padding_puts_every_sequence_at_the_end() -> None:
    from fedpeft.data import RawSplit

    split = RawSplit(["a b c d e", "a"], np.asarray([0, 1]))
    tok = load_tokenizer(get_model_spec("minilm-l6"))
    right = tokenize_split(split, tok, 16).collate(np.arange(2))
    left = tokenize_split(split, tok, 16, pad_left=True).collate(np.arange(2))
    assert right.attention_mask[1].tolist()[:3] == [1, 1, 1] and right.attention_mask[1, -1] == 0
    assert left.attention_mask[:, -1].tolist() == [1, 1] and left.attention_mask[1, 0] == 0
    n = int(left.attention_mask[1].sum())
    assert left.input_ids[1, -n:].tolist() == right.input_ids[1, :n].tolist()


def test_texts_cut_at_max_length_and_unknown_tokens_are_said() -> None:
    """Most texts longer than `model.max_length`, or a script the tokenizer does not cover,
    are said in one line each; ordinary short English texts say nothing."""
    from fedpeft.data import RawSplit, reading_warnings

    tok = load_tokenizer(get_model_spec("minilm-l6"))
    labels = np.zeros(10, dtype=np.int64)
    short = tokenize_split(RawSplit(["a fine film"] * 10, labels), tok, 16)
    assert reading_warnings(short, tok, 16, "MiniLM") == []
    some = tokenize_split(RawSplit(["word " * 40] * 2 + ["a film"] * 8, labels), tok, 16)
    assert reading_warnings(some, tok, 16, "MiniLM") == []  # 2 of 10 cut: not most
    most = tokenize_split(RawSplit(["word " * 40] * 6 + ["a film"] * 4, labels), tok, 16)
    (cut,) = reading_warnings(most, tok, 16, "MiniLM")
    assert cut.startswith("6 of 10 training texts (60%) reach `model.max_length`=16 tokens")
    chinese = tokenize_split(RawSplit(["这部电影非常好看，我很喜欢"] * 10, labels), tok, 64)
    (unknown,) = reading_warnings(chinese, tok, 64, "MiniLM")
    assert "% of the training tokens are unknown to MiniLM's tokenizer" in unknown
