"""Text keys shared by the services: a question's normalized form.

The pair builder (streams) indexes thumbs-up answers by it; the retrain job (retrain) matches corrected
questions against earlier training rows and the regression set with it. One definition, so that both
agree on when two questions are the same.
"""

from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"\s+")


def normalize_question(text: str) -> str:
    """Lowercase, punctuation and symbols removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _SPACES.sub(" ", text).strip()
