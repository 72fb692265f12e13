"""The report as data: headings, paragraphs, tables and images, rendered twice (Markdown and HTML)."""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Block:
    kind: str  # "h2" | "h3" | "p" | "list" | "table" | "images"
    text: str = ""
    items: list = field(default_factory=list)  # list: strings; images: (relative path, caption) pairs
    table: pd.DataFrame | None = None


def h2(text):
    return Block("h2", text)


def h3(text):
    return Block("h3", text)


def para(text):
    return Block("p", text)


def bullets(items):
    return Block("list", items=list(items))


def table(frame):
    return Block("table", table=frame)


def images(pairs):
    return Block("images", items=list(pairs))
