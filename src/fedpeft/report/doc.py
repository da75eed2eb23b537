"""A small document model rendered twice: Markdown (for the repository) and one
self-contained HTML page (its plots embedded as data URIs, its style inline, no script).

Inline text may use ``**bold**`` and ``code`` in backticks; everything else is escaped."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: Sequence[str]


@dataclass(frozen=True)
class Code:
    text: str


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    right: Sequence[bool] = ()  # per column: right-aligned (numbers)


@dataclass(frozen=True)
class Image:
    path: Path  # relative to the document's folder
    alt: str


Block = Heading | Para | Bullets | Code | Table | Image


def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Bullets):
            out += [*(f"- {item}" for item in b.items), ""]
        elif isinstance(b, Code):
            out += ["```", b.text.rstrip("\n"), "```", ""]
        elif isinstance(b, Table):
            out += [*_md_table(b), ""]
        else:
            out += [f"![{b.alt}]({b.path.as_posix()})", ""]
    return "\n".join(out).rstrip("\n") + "\n"


def _md_table(t: Table) -> list[str]:
    right = list(t.right) + [False] * (len(t.header) - len(t.right))
    cells = lambda row: "| " + " | ".join(c.replace("|", "\\|") for c in row) + " |"  # noqa: E731
    rule = "| " + " | ".join("---:" if r else "---" for r in right) + " |"
    return [cells(t.header), rule, *(cells(r) for r in t.rows)]


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #1b1b1b; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #ddd; }
code, pre { background: #f5f5f5; }
pre { padding: 0.6em; overflow-x: auto; }
"""


def to_html(blocks: Sequence[Block], title: str, folder: Path) -> str:
    """The page; each image is read from ``folder / path`` and embedded."""
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            body.append(f"<pre><code>{html.escape(b.text)}</code></pre>")
        elif isinstance(b, Table):
            body.append(_html_table(b))
        else:
            data = base64.b64encode((folder / b.path).read_bytes()).decode("ascii")
            alt = html.escape(b.alt, quote=True)
            body.append(f'<p><img src="data:image/png;base64,{data}" alt="{alt}"></p>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _html_table(t: Table) -> str:
    right = list(t.right) + [False] * (len(t.header) - len(t.right))
    head = "".join(f"<th>{_inline(h)}</th>" for h in t.header)
    rows = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_inline(c)}</td>' if r else f"<td>{_inline(c)}</td>"
            for c, r in zip(row, right, strict=False)
        )
        + "</tr>"
        for row in t.rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_BOLD = re.compile(r"\*\*(.+?)\*\*")
_CODE = re.compile(r"`([^`]+)`")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = _CODE.sub(r"<code>\1</code>", escaped)
    return _BOLD.sub(r"<strong>\1</strong>", escaped)
