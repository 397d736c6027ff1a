"""Fenced blocks of the guide's pages, for tests that run the docs' examples."""

from __future__ import annotations

from tests.support import REPO


def guide_block(page: str, language: str, contains: str) -> str:
    """The one fenced block in ``language`` of ``docs/guide/<page>`` that holds ``contains``."""
    text = (REPO / "docs" / "guide" / page).read_text(encoding="utf-8")
    blocks = [b.split("```")[0] for b in text.split(f"```{language}\n")[1:]]
    (block,) = [b for b in blocks if contains in b]
    return block
