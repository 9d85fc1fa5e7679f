"""Text rules shared by the services: a question's normalized form, and personal data masked.

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


# Personal data: the gateway masks it in the events it publishes (FLYWHEEL_GATEWAY_MASK_PII), the pair builder
# in every DPO pair, so neither the store nor training data holds e-mail addresses or phone numbers.
EMAIL_MASK = "[EMAIL]"
PHONE_MASK = "[PHONE]"
_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}(?![\w-])")
# A phone number: optional +country code, then 2-4 digit groups separated by space, dot, dash or
# parentheses; or a bare run of 10-15 digits. 7 to 15 digits in all (E.164). Dates are not phones.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){1,5}(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
    r"|(?<![\w+])\d{10,15}(?!\w)"
)
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")


def _phone(match: re.Match[str]) -> str:
    found = match.group(0)
    digits = sum(ch.isdigit() for ch in found)
    if not 7 <= digits <= 15 or _DATE.fullmatch(found.strip()):
        return found
    return PHONE_MASK


def mask_pii(text: str) -> str:
    """Replace e-mail addresses and phone numbers with placeholders."""
    return _PHONE.sub(_phone, _EMAIL.sub(EMAIL_MASK, text))
