"""Body rendering: `{{Field}}` merge fields, the opt-out line, the 1,600-character limit.

A merge-field name is Unicode letters, digits and `_ . -` (spaces inside allowed, trimmed at both ends):
`{{Prénom}}`, `{{1st}}`, `{{first.name}}`, `{{first-name}}`. Values are rendered as the person wrote them
in the Attributes JSON: a number keeps its digits (`10.50` stays "10.50"), `true`/`false` stay lower case;
an object, an array or null cannot be texted and makes the recipient NotRendered.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass

_NAME = r"[\w\u0300-\u036f][\w .\-\u0300-\u036f]*?"  # \w is Unicode-aware; combining accents of a decomposed é
MERGE_FIELD = re.compile(r"\{\{\s*(" + _NAME + r")\s*\}\}")
MAX_BODY = 1600
MAX_ATTRIBUTES = 1_000_000  # characters of Attributes JSON text read per recipient
_OPT_OUT_WORDING = re.compile(r"\b(stop|opt[\s-]?out|unsubscribe)\b", re.IGNORECASE)
# NUL and the other C0 controls (tab, LF and CR are text) and DEL never reach a phone or the database.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_UNTEXTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_QUOTE_MAX = 40


@dataclass(frozen=True, slots=True)
class Rendered:
    body: str | None
    reason: str | None  # why the body could not be rendered (NotRendered); None when fine


class _Written(str):
    """A JSON number kept as written (`10.50`, `1.5E3`, `-0.0`): texted verbatim, never via float."""


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# One decoder for every recipient (json.loads with hooks would build one per call: 4 us each).
_DECODER = json.JSONDecoder(parse_float=_Written, parse_int=_Written, parse_constant=_no_constant)


def merge_fields(template: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in MERGE_FIELD.finditer(template or "")))


def quote(text: str, limit: int = _QUOTE_MAX) -> str:
    """A value quoted in a one-line message: repr (controls and lone surrogates escaped), at most `limit`."""
    text = text if len(text) <= limit else text[:limit] + "…"
    return repr(text)


def text_problem(text: str, what: str) -> str | None:
    """Why `text` cannot be stored or texted (NUL or another control character, a lone surrogate — what a
    driver makes of invalid UTF-8), or None."""
    if _UNTEXTABLE.search(text) is None:  # the usual case: one scan
        return None
    m = _CONTROL.search(text)
    if m:
        kind = "a NUL character" if m.group() == "\x00" else f"the control character U+{ord(m.group()):04X}"
        return f"{what} contains {kind}"
    return f"{what} contains invalid Unicode (lone surrogates: invalid UTF-8 or a broken escape)"


_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(text: str | None) -> str | None:
    """Text as a database can keep it: NUL (no PostgreSQL text holds one) and lone surrogates (no UTF-8
    encoder takes one) become U+FFFD. For values recorded as seen (a reply, a refused AddressKey)."""
    if text is None or _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub("\ufffd", text)


def template_problem(template: str | None) -> str | None:
    """Why a MessageBody cannot be used for anyone, or None: invalid characters, or `{{`/`}}` that is no
    merge field (`{{Name}`, `{{}}`, `{{Na@me}}`), which would otherwise be texted literally to everyone."""
    if template is None:
        return None
    problem = text_problem(template, "MessageBody")
    if problem:
        return problem
    rest = MERGE_FIELD.sub("", template)
    for mark in ("{{", "}}"):
        at = rest.find(mark)
        if at >= 0:
            return (f"MessageBody has {mark} that is not a merge field near {quote(rest[max(0, at - 10):at + 20])} "
                    "(a merge field is {{Name}}: letters, digits, _ . -)")
    return None


MAX_MEDIA_URL = 1000  # SMS_ChannelExecutions.MediaUrl is 1,000 characters; Twilio fetches it over HTTP(S)


def media_url_problem(url: str | None) -> str | None:
    """Why a MediaUrl cannot be sent (Twilio fetches a public http(s) URL), or None."""
    if url is None or url == "":
        return None
    problem = text_problem(url, "MediaUrl")
    if problem:
        return problem
    if len(url) > MAX_MEDIA_URL:
        return f"MediaUrl is {len(url)} characters, over {MAX_MEDIA_URL}"
    if not re.fullmatch(r"https?://[^\s/?#@]+(?:[/?#]\S*)?", url, re.IGNORECASE):
        return f"MediaUrl {quote(url)} is not an http(s) URL Twilio can fetch"
    return None


def parse_attributes(text: str | None) -> tuple[dict, str | None]:
    """OfferHistorySG.Attributes (JSON text or NULL) -> dict, or the reason it is unusable.

    Numbers keep their written form (`10.50`), NaN/Infinity are refused (not JSON)."""
    if text is None or str(text).strip() == "":
        return {}, None
    text = str(text)
    if len(text) > MAX_ATTRIBUTES:
        return {}, f"Attributes is {len(text)} characters, over {MAX_ATTRIBUTES}"
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        return {}, "Attributes is nested too deeply"
    except (ValueError, TypeError):  # a raw NUL or control character is invalid JSON: say which
        return {}, text_problem(text, "Attributes") or "Attributes is not valid JSON"
    if not isinstance(value, dict):
        return {}, "Attributes is not a JSON object"
    return value, None


def _lookup(attributes: dict, name: str):
    if name in attributes:
        return True, attributes[name]
    nfc = unicodedata.normalize("NFC", name)
    for key, value in attributes.items():
        if isinstance(key, str) and unicodedata.normalize("NFC", key) == nfc:
            return True, value
    return False, None


def render_value(value) -> tuple[str | None, str | None]:
    """One merge value as text, or why it cannot be texted."""
    if isinstance(value, bool):
        return ("true" if value else "false"), None
    if isinstance(value, str):
        return str(value), None
    if isinstance(value, (int, float)):  # seeds and code-built dicts; parsed JSON numbers are _Written
        return json.dumps(value), None
    if isinstance(value, dict):
        return None, "a JSON object"
    if isinstance(value, list):
        return None, "a JSON array"
    return None, f"a {type(value).__name__}"


def has_opt_out_wording(body: str) -> bool:
    return bool(_OPT_OUT_WORDING.search(body))


def render_body(
    template: str,
    attributes: dict,
    append_opt_out: str | None = None,
    missing_as_placeholder: bool = False,
) -> Rendered:
    """Fill merge fields from `attributes` in one pass (a value holding `{{Other}}` is texted as typed).

    A missing or NULL field makes the recipient NotRendered (a half-filled text is worse than none);
    seeds render missing fields as `[Field]` instead (docs/reference.md "Channel file", seed_attributes).
    """
    problem: list[str] = []

    def fill(m: re.Match) -> str:
        name = m.group(1)
        present, value = _lookup(attributes, name)
        if value is None:
            if missing_as_placeholder:
                return f"[{name}]"
            problem.append(f"merge field {name} is {'NULL' if present else 'missing'}")
            return ""
        text, why = render_value(value)
        if text is None:
            problem.append(f"merge field {name} is {why}, not text")
            return ""
        return text

    body = MERGE_FIELD.sub(fill, template or "")
    if problem:
        return Rendered(None, problem[0])
    bad = text_problem(body, "body")
    if bad:
        return Rendered(None, bad)
    if append_opt_out and not has_opt_out_wording(body):
        body = f"{body.rstrip()} {append_opt_out}" if body.strip() else body
    if not body.strip():
        return Rendered(None, "body is empty")
    if len(body) > MAX_BODY:
        return Rendered(None, f"body is {len(body)} characters, over Twilio's {MAX_BODY}")
    return Rendered(body, None)
