"""Bring-your-own data files as people write them: each mistake refused with one sentence
that names the file, the row and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedpeft.data.sources import read_table
from fedpeft.errors import FedpeftError


def test_a_folder_is_named_as_a_folder(tmp_path: Path) -> None:
    with pytest.raises(FedpeftError, match="is a folder; point `data.train_file`"):
        read_table(tmp_path, "text", "label")
