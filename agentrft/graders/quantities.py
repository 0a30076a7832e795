"""Find the numbers in a piece of text, with their units, the way a reader of a filing would.

``13.4%``, ``13.4 percent``, ``$842M``, ``USD 842 million``, ``$842 million dollars``, ``€1.2bn``,
``1,430``, ``−3.2`` and the accounting negative ``(3.2)`` all parse to a ``Quantity`` whose
``value`` is an exact ``Decimal`` in base units (percent as a fraction: 13.4% → 0.134; magnitudes
applied: $1.43B → 1430000000). Decimal keeps the precision the writer used (``$842M`` is
8.42E+8 with exponent 6), which is what the rounding credit in ``numeric.py`` needs.

Period context is not an answer: quarter and half-year labels (``Q3``, ``FY2025``, ``H1``), form
names (``10-Q``), dates (``September 30, 2025``, ``2025-09-30``) are never parsed, and a bare
four-digit year (1900–2099, no unit, no separator) is marked ``context``. Not supported: decimal
commas (``13,4%``), numbers written in words, thousands separated by plain spaces.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation

_MONTH = (
    r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
    r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)\.?"
)
# Spans that hold digits but never an answer; blanked out before numbers are looked for.
_NOT_A_NUMBER = re.compile(
    rf"\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?\b(?:,?\s+\d{{4}})?"  # September 30, 2025
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)?\s+{_MONTH}(?:\s+\d{{4}})?\b"  # 30 September 2025
    r"|\b\d{4}-\d{2}-\d{2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b"  # 2025-09-30, 9/30/2025
    r"|\b(?:10|20|40)-?[QKF]\b|\b8-K\b",  # form names: 10-Q, 10-K, 20-F, 8-K
    re.IGNORECASE,
)
# The digits themselves. Not glued to a word or a dot on the left (Q3, FY2025, v1.2 are labels).
_DIGITS = re.compile(
    r"(?<![\w.])([0-9]{1,3}(?:[,\u202f\u00a0][0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?![0-9]|\.[0-9]|(?:st|nd|rd|th)\b)"
)
_CURRENCY_SIGNS = r"US\$|\$|€|£|\b(?:USD|EUR|GBP)\s?"
# What may stand before the digits: "(", a sign, a currency, "(" again ("$(3.2)"), a sign again.
_LEFT = re.compile(
    rf"(?P<open>\(\s*)?(?P<sign>(?<![\w.%)])[-−–+]\s*)?(?P<cur>(?:{_CURRENCY_SIGNS})\s*)?"
    r"(?P<open2>\(\s*)?(?P<sign2>(?<![\w.%)])[-−–+])?\s*\Z"
)
_MAGNITUDE_WORD = r"(?i:thousand|million|billion|trillion)"
_RIGHT = re.compile(
    r"(?P<close0>\s*\))?"
    rf"(?:\s*(?P<mag>{_MAGNITUDE_WORD}|MM|mm|mn|mln|bn|Bn|BN|tn|[KkMmBbT])(?![A-Za-z]))?"
    r"(?:\s*(?P<pct>%|(?i:percent(?:age points?)?|per\s?cent|pct)(?![A-Za-z])))?"
    r"(?:\s*(?P<cur>(?i:US\s?dollars?|dollars?|euros?|pounds?(?:\s+sterling)?)|USD|EUR|GBP)(?![A-Za-z]))?"
    r"(?P<close>\s*\))?"
)
_SCALE = {"thousand": 3, "k": 3, "million": 6, "m": 6, "mm": 6, "mn": 6, "mln": 6,
          "billion": 9, "b": 9, "bn": 9, "trillion": 12, "t": 12, "tn": 12}  # fmt: skip
_CURRENCY = {"$": "USD", "us$": "USD", "usd": "USD", "€": "EUR", "eur": "EUR", "£": "GBP", "gbp": "GBP"}
_DIRECTION = re.compile(
    r"\b(?:loss(?:es)?|declin(?:e|ed|es|ing)|decreas(?:e|ed|es|ing)|down|fell|fall(?:ing)?|"
    r"drop(?:ped|s)?|negative|contract(?:ed|ion)|shr[au]nk|deficit)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Quantity:
    """One number found in text, with what its writer said about it."""

    value: Decimal
    """Exact value in base units: 13.4% → 0.134, $1.43B → 1.43E+9, (3.2) → -3.2."""
    text: str
    """The number as written, units included (for reasons shown to a user)."""
    percent: bool = False
    currency: str | None = None
    """ISO code (USD, EUR, GBP) when a symbol, code or word named one."""
    magnitude: int = 0
    """Power of ten a suffix applied (6 for M / million); 0 when none."""
    parenthesized: bool = False
    context: bool = False
    """A bare year: period context, not a candidate answer."""

    @property
    def bare(self) -> bool:
        """A plain number: no percent sign, currency or magnitude."""
        return not (self.percent or self.currency or self.magnitude)

    @property
    def is_integer(self) -> bool:
        return self.value == self.value.to_integral_value()


def _currency(token: str | None) -> str | None:
    if not token:
        return None
    key = token.strip().lower()
    if key in _CURRENCY:
        return _CURRENCY[key]
    if "dollar" in key:
        return "USD"
    if "euro" in key:
        return "EUR"
    if "pound" in key:
        return "GBP"
    return None


def _quantity(text: str, match: re.Match[str]) -> Quantity | None:
    start, end = match.span(1)
    left = _LEFT.search(text, max(0, start - 16), start)
    right = _RIGHT.match(text, end, min(len(text), end + 40))
    digits = re.sub(r"[,\u202f\u00a0]", "", match.group(1))
    try:
        value = Decimal(digits)
    except InvalidOperation:  # pragma: no cover - the regex only admits digits
        return None
    lg = left.groupdict() if left else {}
    rg = right.groupdict() if right else {}
    magnitude = _SCALE[rg["mag"].lower()] if rg.get("mag") else 0
    percent = bool(rg.get("pct"))
    value = value.scaleb(magnitude - (2 if percent else 0))
    sign = (lg.get("sign") or "").strip() or (lg.get("sign2") or "")
    if sign in ("-", "−", "–"):
        value = -value
    currency = _currency(lg.get("cur")) or _currency(rg.get("cur"))
    opened = bool(lg.get("open") or lg.get("open2"))
    closed = bool(rg.get("close") or rg.get("close0"))
    first = left.start() if left and left.group(0).strip() else start
    last = right.end() if right else end
    shown = text[first:last].strip()
    if opened and not closed:
        shown = shown.lstrip("( ")
    if closed and not opened:
        shown = shown.rstrip(") ")
    context = (
        not (percent or currency or magnitude)
        and "." not in digits
        and digits == match.group(1)
        and len(digits) == 4
        and 1900 <= int(digits) <= 2099
    )
    return Quantity(value, shown, percent, currency, magnitude, opened and closed, context)


def parse_quantities(text: str) -> list[Quantity]:
    """Every number in ``text``, in order. A parenthesised number is an accounting negative only
    when it is the text's one number; beside others it is an aside (``13.4% (0.134)``)."""
    cleaned = _NOT_A_NUMBER.sub(lambda m: " " * len(m.group(0)), text)
    found = [q for m in _DIGITS.finditer(cleaned) if (q := _quantity(cleaned, m)) is not None]
    answers = [q for q in found if not q.context]
    if len(answers) == 1 and answers[0].parenthesized and answers[0].value > 0:
        only = answers[0]
        found = [replace(q, value=-q.value) if q is only else q for q in found]
    return found


def states_direction(text: str) -> bool:
    """True when the text says in words that a value went down (loss, decline, fell, ...)."""
    return _DIRECTION.search(text) is not None


__all__ = ["Quantity", "parse_quantities", "states_direction"]
