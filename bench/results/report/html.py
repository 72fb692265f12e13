"""Blocks to a self-contained report.html (every image embedded as a data URI)."""
from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from bench.results.report.blocks import Block


CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1400px;margin:1.5em auto;padding:0 1em;
color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #ccc;padding-bottom:.2em}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:.6em 0;font-size:.84em}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}td{white-space:nowrap}
td:last-child{white-space:normal;min-width:16em}th{background:#f2f4f7}tr:nth-child(even) td{background:#fafafa}
ul{font-size:.92em;color:#444}figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#555;max-width:560px}
.grids figure img{width:224px;image-rendering:pixelated}code{background:#f2f2f2;padding:0 .2em}
"""


def to_html(blocks: list[Block], folder: Path, title: str) -> str:
    body = [_html_block(b, folder) for b in blocks]
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _html_block(b: Block, folder: Path) -> str:
    if b.kind in ("h1", "h2", "h3"):
        return f"<{b.kind}>{html.escape(b.text)}</{b.kind}>"
    if b.kind == "p":
        return f"<p>{_inline(b.text)}</p>"
    if b.kind == "list":
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in b.items) + "</ul>"
    if b.kind == "table":
        return "<div class='scroll'>" + b.table.to_html(index=False, border=0, escape=True) + "</div>"
    css = " class='grids'" if all(p.startswith("samples/") for p, _ in b.items) else ""
    return f"<div{css}>" + "".join(_figure(folder / p, c) for p, c in b.items) + "</div>"


def _inline(text: str) -> str:
    """Escape, then render `code` spans as in the markdown."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
