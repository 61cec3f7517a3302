"""Wording shared by the commands' tables and summaries."""

from __future__ import annotations


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """`1 outcome`, `2 outcomes` (`nouns` when the plural is not `noun` + s)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def clip(text: str, width: int) -> str:
    """`text` in at most `width` characters, cut at a word boundary with an ellipsis."""
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    if space > width // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:") + "…"
