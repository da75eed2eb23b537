"""The ``[data]`` section's rules across its keys: which dataset a file of one's own means,
and the combinations a loader would silently ignore. Kept apart from ``schema.py`` so that
each file holds one idea."""

from __future__ import annotations

from typing import Any, Protocol


class _DataKeys(Protocol):
    """The ``[data]`` keys these rules read (``schema.DataConfig``, which imports this)."""

    @property
    def dataset(self) -> str: ...
    @property
    def train_file(self) -> str | None: ...
    @property
    def eval_file(self) -> str | None: ...
    @property
    def text_column(self) -> str: ...
    @property
    def label_column(self) -> str: ...
    @property
    def label_names(self) -> list[str] | None: ...


OWN_FILES = ("custom", "squad")  # the datasets that read data.train_file / eval_file


def own_file_means_custom(raw: Any) -> Any:
    """``data.train_file`` given without ``data.dataset``: the user's own data, so the
    dataset is ``custom`` (not the default SST-2, which would ignore the file)."""
    if isinstance(raw, dict) and raw.get("train_file") is not None and "dataset" not in raw:
        return {**raw, "dataset": "custom"}
    return raw


def check_data_keys(data: _DataKeys) -> None:
    """Refuses key combinations that cannot mean what they say (``ValueError``)."""
    if data.dataset == "custom" and data.train_file is None:
        raise ValueError(
            "`data.train_file` is required when `data.dataset` is 'custom' "
            "(a CSV, TSV, JSONL, JSON or Parquet file with text and label columns, or for "
            "an image model a folder of class subfolders)"
        )
    if data.dataset == "custom" and data.text_column == data.label_column:
        raise ValueError(
            f"`data.text_column` and `data.label_column` are both {data.text_column!r}; "
            "the model would read each row's label as its text"
        )
    if data.eval_file is not None and data.train_file is None:
        raise ValueError(
            "`data.eval_file` is read only beside `data.train_file`; give both, or drop "
            "`data.eval_file` to use the dataset's own evaluation split"
        )
    if (data.train_file or data.eval_file) and data.dataset not in OWN_FILES:
        raise ValueError(
            "`data.train_file` and `data.eval_file` apply to `data.dataset = 'custom'` "
            f"(or 'squad': your own SQuAD-format JSON) only; {data.dataset!r} reads its "
            "own files, so yours would be ignored: set `data.dataset = 'custom'` or drop them"
        )
    if data.label_names is not None and data.dataset != "custom":
        raise ValueError(
            "`data.label_names` applies to `data.dataset = 'custom'` only; "
            f"{data.dataset!r} has its own classes"
        )
