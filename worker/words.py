"""A customer's words, normalised: what routing and a config's keywords compare.

Unicode NFKD, accents and other combining marks dropped, casefolded,
apostrophes removed, every other character that is not a letter or digit
turned into a space (`worker.router` tells why).
"""

from __future__ import annotations

import unicodedata

__all__ = ["MAX_TEXT_CHARS", "fold", "normalise"]

#: a customer's message is read up to this many characters
MAX_TEXT_CHARS = 4096

_APOSTROPHES = frozenset("'’`´ʼ")


def normalise(text: str) -> str:
    """Lower-case words and digits only, accents dropped, one space between them."""
    out = [c if c.isalnum() else " " for c in fold(text) if c not in _APOSTROPHES]
    return " ".join("".join(out).split())


def fold(text: str) -> str:
    """Compatibility forms decomposed (``１２`` → ``12``), accents dropped, casefolded."""
    decomposed = unicodedata.normalize("NFKD", text[:MAX_TEXT_CHARS])
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
