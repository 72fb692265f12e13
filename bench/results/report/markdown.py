"""Blocks to report.md."""
from __future__ import annotations

from bench.results.report.blocks import Block


def to_markdown(blocks: list[Block]) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text)
        elif b.kind == "p":
            out.append(b.text)
        elif b.kind == "list":
            out.append("\n".join(f"- {item}" for item in b.items))
        elif b.kind == "table":
            out.append(b.table.to_markdown(index=False, disable_numparse=True))
        elif b.kind == "images":
            out.append("\n\n".join(f"![{caption}]({path})" for path, caption in b.items))
    return "\n\n".join(out) + "\n"
