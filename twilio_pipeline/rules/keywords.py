"""Reply keywords: which inbound bodies are opt-outs, opt-ins, help requests or channel keywords.

Twilio acts only on single-word messages ("STOP PLEASE" does not opt out). Twilio's text does not
say how it treats case and punctuation, so matching here is case-insensitive with surrounding
whitespace and trailing punctuation trimmed ("stop.", " Stop! "): when in doubt a number is
treated as opted out, since a lost STOP is a legal defect and an extra one is not.
"""

from __future__ import annotations

from collections.abc import Iterable

# Twilio's default keywords for long codes and toll-free numbers (REVOKE and OPTOUT since 2025-04-29).
OPT_OUT_KEYWORDS = ("STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")
OPT_IN_KEYWORDS = ("START", "YES", "UNSTOP")
HELP_KEYWORDS = ("HELP", "INFO")
TWILIO_KEYWORDS = OPT_OUT_KEYWORDS + OPT_IN_KEYWORDS + HELP_KEYWORDS

_OPT_OUT = frozenset(OPT_OUT_KEYWORDS)
_OPT_IN = frozenset(OPT_IN_KEYWORDS)
_HELP = frozenset(HELP_KEYWORDS)
_TRAILING_PUNCTUATION = ".!?,;:"


def _single_word(body: str | None) -> str | None:
    """The body as one upper-case word, or None when it is empty or has several words."""
    if body is None:
        return None
    word = body.strip().rstrip(_TRAILING_PUNCTUATION).strip()
    if not word or any(ch.isspace() for ch in word):
        return None
    return word.upper()


def normalise_keyword(body: str | None, channel_keywords: Iterable[str] = ()) -> str | None:
    """The upper-case keyword a reply stands for, or None for free text.

    A keyword is one of Twilio's (opt-out, opt-in, help) or one of the channel's own keywords.
    """
    word = _single_word(body)
    if word is None:
        return None
    if word in _OPT_OUT or word in _OPT_IN or word in _HELP:
        return word
    for keyword in channel_keywords:
        if _single_word(keyword) == word:
            return word
    return None


def keyword_class(keyword: str | None) -> str | None:
    """The class of a keyword: "opt_out", "opt_in", "help" or "custom"; None for no keyword."""
    word = _single_word(keyword)
    if word is None:
        return None
    if word in _OPT_OUT:
        return "opt_out"
    if word in _OPT_IN:
        return "opt_in"
    if word in _HELP:
        return "help"
    return "custom"


def is_opt_out(keyword: str | None) -> bool:
    """Whether the keyword blocks further messages from the sender (STOP family)."""
    return keyword_class(keyword) == "opt_out"


def is_opt_in(keyword: str | None) -> bool:
    """Whether the keyword lifts an earlier opt-out (START, YES, UNSTOP)."""
    return keyword_class(keyword) == "opt_in"
