"""What Twilio decides about a message, written from Twilio's documentation and nothing else.

The sandbox must not borrow the pipeline's rules (`twilio_pipeline.rules`): a test that sends a
STOP or a long body through the sandbox would otherwise compare the pipeline with itself. Where
the two disagree, the sandbox follows Twilio's text literally and the pipeline is the one that
has to cope.

Keywords (Twilio "Support for opt-out keywords (SMS STOP filtering)" and the Advanced Opt-Out
tutorial, which lists REVOKE and OPTOUT among the defaults since April 2025): only a message that
is exactly one keyword acts - the whole body, surrounding whitespace trimmed, case ignored.
"STOP PLEASE", "please cancel" and "stop." are ordinary messages here (Twilio documents no
punctuation stripping; the pipeline is stricter on purpose, treating "stop." as a STOP).

Segments (Twilio's "What the heck is a segment?" and the GSM 03.38 alphabet): a body made only of
GSM-7 basic and extension-table characters is encoded in GSM-7, where an extension character
(form feed ^ { } \\ [ ~ ] | €) costs two septets (escape + character); 160 septets fit one
segment, 153 per segment once the message is split (a 6-byte user data header takes the rest).
Any other character makes the whole body UCS-2: 70 UTF-16 code units in one segment, 67 per
segment once split; a character outside the BMP is a surrogate pair (2 units). An escape pair or
a surrogate pair is never cut between two segments.

Numbers (Twilio's E.164 page and the error pages 21211/21212): E.164 is '+', a non-zero digit and
at most 15 digits in all (at least 7 here: no shorter number is in service); a short code is 5 or 6 digits; an alphanumeric sender ID is 1 to 11
letters, digits or spaces with at least one letter.
"""

from __future__ import annotations

import re

# -- keywords ------------------------------------------------------------------------------------
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})


def keyword_action(body: str | None) -> str | None:
    """"opt_out", "opt_in" or "help" when the whole trimmed body is one of Twilio's keywords."""
    if not body:
        return None
    word = body.strip().upper()
    if word in OPT_OUT:
        return "opt_out"
    if word in OPT_IN:
        return "opt_in"
    if word in HELP:
        return "help"
    return None


# -- segments ------------------------------------------------------------------------------------
# GSM 03.38 default alphabet, in code-point order of the 7-bit table (0x00-0x7F, escape 0x1B left out).
_GSM_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_BASIC = frozenset(_GSM_TABLE) - {"\x1b"}
GSM_EXTENSION = frozenset({"\x0c", "^", "{", "}", "\\", "[", "~", "]", "|", "€"})


def _septets(ch: str) -> int:
    """Septets of one character in GSM-7, 0 when GSM-7 cannot carry it."""
    if ch in GSM_BASIC:
        return 1
    if ch in GSM_EXTENSION:
        return 2
    return 0


def _split(units: list[int], single: int, multi: int) -> int:
    total = sum(units)
    if total <= single:
        return 1
    count, used = 1, 0
    for size in units:
        if used + size > multi:
            count, used = count + 1, 0
        used += size
    return count


def segment_count(body: str) -> int:
    """How many SMS segments Twilio bills for a text body (0 for an empty body)."""
    if not body:
        return 0
    septets = [_septets(ch) for ch in body]
    if all(septets):
        return _split(septets, 160, 153)
    code_units = [2 if ord(ch) > 0xFFFF else 1 for ch in body]
    return _split(code_units, 70, 67)


# Twilio's Smart Encoding: Unicode look-alikes replaced by a GSM-7 character (the documented table's
# common rows: quotes, apostrophes, dashes, ellipsis, odd spaces).
_SMART = {
    "\u00ab": '"', "\u00bb": '"', "\u201c": '"', "\u201d": '"', "\u02ba": '"', "\u02ee": '"',
    "\u201f": '"', "\u275d": '"', "\u275e": '"', "\u301d": '"', "\u301e": '"', "\uff02": '"',
    "\u2018": "'", "\u2019": "'", "\u02bb": "'", "\u02c8": "'", "\u02bc": "'", "\u02bd": "'",
    "\u02b9": "'", "\u201b": "'", "\uff07": "'", "\u00b4": "'", "\u02ca": "'", "\u0060": "'",
    "\u02cb": "'", "\u275b": "'", "\u275c": "'", "\u0313": "'", "\u0314": "'", "\ufe10": "'",
    "\ufe11": "'", "\u00f7": "/", "\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4",
    "\u29f8": "/", "\u0337": "/", "\u0338": "/", "\u2044": "/", "\u2215": "/", "\uff0f": "/",
    "\u29f9": "\\", "\u29f5": "\\", "\u20e5": "\\", "\ufe68": "\\", "\uff3c": "\\",
    "\u0332": "_", "\uff3f": "_", "\u20d2": "|", "\u20d3": "|", "\u2223": "|", "\uff5c": "|",
    "\u23b8": "|", "\u23b9": "|", "\u23d0": "|", "\u239c": "|", "\u239f": "|", "\u23bc": "-",
    "\u23bd": "-", "\u2015": "-", "\ufe63": "-", "\uff0d": "-", "\u2010": "-", "\u2043": "-",
    "\ufe6b": "@", "\uff20": "@", "\ufe69": "$", "\uff04": "$", "\u01c3": "!", "\ufe15": "!",
    "\ufe57": "!", "\uff01": "!", "\ufe5f": "#", "\uff03": "#", "\ufe6a": "%", "\uff05": "%",
    "\ufe60": "&", "\uff06": "&", "\u201a": ",", "\u0326": ",", "\ufe50": ",", "\u3001": ",",
    "\ufe51": ",", "\uff0c": ",", "\uff64": ",", "\u2768": "(", "\u276a": "(", "\ufe59": "(",
    "\uff08": "(", "\u27ee": "(", "\u2985": "(", "\u2769": ")", "\u276b": ")", "\ufe5a": ")",
    "\uff09": ")", "\u27ef": ")", "\u2986": ")", "\u204e": "*", "\u2217": "*", "\u229b": "*",
    "\u2722": "*", "\u2723": "*", "\u2724": "*", "\u2725": "*", "\u2731": "*", "\u2732": "*",
    "\u2733": "*", "\u273a": "*", "\u273b": "*", "\u273c": "*", "\u273d": "*", "\u2743": "*",
    "\u2749": "*", "\u274a": "*", "\u274b": "*", "\u29c6": "*", "\ufe61": "*", "\uff0a": "*",
    "\u02d6": "+", "\ufe62": "+", "\uff0b": "+", "\u3002": ".", "\ufe52": ".", "\uff0e": ".",
    "\uff61": ".", "\uff10": "0", "\uff11": "1", "\uff12": "2", "\uff13": "3", "\uff14": "4",
    "\uff15": "5", "\uff16": "6", "\uff17": "7", "\uff18": "8", "\uff19": "9", "\u02d0": ":",
    "\u02f8": ":", "\u2982": ":", "\ua789": ":", "\ufe13": ":", "\uff1a": ":", "\u204f": ";",
    "\ufe14": ";", "\ufe54": ";", "\uff1b": ";", "\ufe64": "<", "\uff1c": "<", "\u0347": "=",
    "\ua78a": "=", "\ufe66": "=", "\uff1d": "=", "\ufe65": ">", "\uff1e": ">", "\ufe16": "?",
    "\ufe56": "?", "\uff1f": "?", "\uff21": "A", "\u1d00": "A", "\u2026": "...", "\u2014": "-",
    "\u2013": "-", "\u2012": "-", "\u2011": "-", "\u2212": "-",
    "\u00a0": " ", "\u2000": " ", "\u2001": " ", "\u2002": " ", "\u2003": " ", "\u2004": " ",
    "\u2005": " ", "\u2006": " ", "\u2007": " ", "\u2008": " ", "\u2009": " ", "\u200a": " ",
    "\u200b": "", "\u202f": " ", "\u205f": " ", "\u3000": " ", "\ufeff": "",
}
_SMART_TABLE = str.maketrans(_SMART)


def smart_encoded(body: str) -> str:
    """The body as Twilio sends it with SmartEncoded=true."""
    return body.translate(_SMART_TABLE)


# -- numbers -------------------------------------------------------------------------------------
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")
SHORT_CODE = re.compile(r"^[0-9]{5,6}$")
ALPHA_SENDER = re.compile(r"^(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}$")


def is_e164(value: str) -> bool:
    return bool(E164.match(value))


def is_short_code(value: str) -> bool:
    return bool(SHORT_CODE.match(value))


def is_alpha_sender(value: str) -> bool:
    return bool(ALPHA_SENDER.match(value))
