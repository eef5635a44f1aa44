"""SMS segment counting: how many parts (and so how many charges) a body costs.

The pipeline estimates cost with it and the sandbox reports `num_segments` with it, so both agree.
Rules (Twilio's "what is the SMS character limit" glossary, GSM 03.38):

- A body made only of GSM-7 characters is sent in GSM-7: 160 septets in one segment, 153 per
  segment when concatenated (7 septets go to the concatenation header). Characters of the GSM
  extension table (``^{}[]~\\|€`` and form feed) are sent as escape + character: 2 septets.
- One character outside GSM-7 switches the whole body to UCS-2: 70 UTF-16 code units in one
  segment, 67 per segment when concatenated. Characters outside the BMP (most emoji) take 2 units.
- Handsets cannot join a part that splits an escape pair or a surrogate pair, so such a character
  moves whole to the next segment; that is why the count packs characters instead of dividing.
- An empty body is 0 segments (Twilio counts an MMS with no text as 1; callers decide that).
"""

from __future__ import annotations

from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("\f^{}\\[~]|€")
GSM7_ALL = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE = 160
GSM7_MULTI = 153
UCS2_SINGLE = 70
UCS2_MULTI = 67

# Look-alike characters that Twilio's Smart Encoding replaces with GSM-7 ones (the common subset).
SMART_ENCODING = {
    "\u00ab": '"', "\u00bb": '"', "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2033": '"', "\u02ba": '"', "\u02dd": '"', "\u02ee": '"', "\u301d": '"', "\u301e": '"',
    "\uff02": '"',
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'", "\u02b9": "'",
    "\u02bc": "'", "\u02c8": "'", "\u2035": "'", "\uff07": "'", "\u0060": "'", "\u00b4": "'",
    "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2212": "-", "\u2043": "-", "\ufe63": "-", "\uff0d": "-",
    "\u2026": "...", "\u2039": "<", "\u203a": ">", "\u2022": "-", "\u00b7": "-",
    "\u00a0": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ", "\u2003": " ", "\u2004": " ",
    "\u2005": " ", "\u2006": " ", "\u2007": " ", "\u2008": " ", "\u2009": " ", "\u200a": " ",
    "\u202f": " ", "\u205f": " ", "\u3000": " ", "\u200b": "", "\ufeff": "",
    "\u2044": "/", "\uff0f": "/", "\u2215": "/", "\uff3c": "\\", "\u2216": "\\",
    "\uff1a": ":", "\uff1b": ";", "\uff0c": ",", "\uff0e": ".", "\uff01": "!", "\uff1f": "?",
    "\u02c6": "^", "\u02dc": "~", "\uff5e": "~",
}
_SMART_TABLE = str.maketrans(SMART_ENCODING)


@dataclass(frozen=True)
class SegmentCount:
    encoding: str  # "GSM-7" or "UCS-2"
    segments: int
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    first_non_gsm: str | None  # the character that forced UCS-2, None for GSM-7


def first_non_gsm7(body: str) -> str | None:
    """The first character that GSM-7 cannot carry, or None when the body is pure GSM-7."""
    if set(body) <= GSM7_ALL:
        return None
    for ch in body:
        if ch not in GSM7_ALL:
            return ch
    return None


def is_gsm7(body: str) -> bool:
    """Whether the whole body can be sent in GSM-7 (else the message goes out in UCS-2)."""
    return first_non_gsm7(body) is None


def smart_encode(body: str) -> str:
    """Replace look-alike Unicode (smart quotes, long dashes, odd spaces) with GSM-7 characters.

    What Twilio does for `SmartEncoded=true`, so a pasted curly quote does not triple the cost.
    """
    return body.translate(_SMART_TABLE)


def _pack(sizes: list[int], per_segment: int) -> int:
    """Segments needed when no character (of 1 or 2 units) may straddle a segment boundary."""
    segments, room = 1, per_segment
    for size in sizes:
        if size > room:
            segments += 1
            room = per_segment
        room -= size
    return segments


def count_segments(body: str) -> SegmentCount:
    """Encoding, segment count and unit count of an SMS body, as Twilio bills it."""
    if not body:
        return SegmentCount("GSM-7", 0, 0, None)
    chars = set(body)
    if chars <= GSM7_ALL:
        extended = chars & GSM7_EXTENSION
        units = len(body) + sum(body.count(ch) for ch in extended)
        if units <= GSM7_SINGLE:
            return SegmentCount("GSM-7", 1, units, None)
        sizes = [2 if ch in GSM7_EXTENSION else 1 for ch in body]
        return SegmentCount("GSM-7", _pack(sizes, GSM7_MULTI), units, None)
    non_gsm = first_non_gsm7(body)
    astral = sum(1 for ch in chars if ord(ch) > 0xFFFF)
    units = len(body) + (sum(1 for ch in body if ord(ch) > 0xFFFF) if astral else 0)
    if units <= UCS2_SINGLE:
        return SegmentCount("UCS-2", 1, units, non_gsm)
    sizes = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
    return SegmentCount("UCS-2", _pack(sizes, UCS2_MULTI), units, non_gsm)
