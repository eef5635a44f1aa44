"""Body rendering: `{{Field}}` merge fields, the opt-out line, the 1,600-character limit."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

MERGE_FIELD = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_ .-]*?)\s*\}\}")
MAX_BODY = 1600
_OPT_OUT_WORDING = re.compile(r"\b(stop|opt[\s-]?out|unsubscribe)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Rendered:
    body: str | None
    reason: str | None  # why the body could not be rendered (NotRendered); None when fine


def merge_fields(template: str) -> list[str]:
    return list(dict.fromkeys(m.group(1) for m in MERGE_FIELD.finditer(template or "")))


def parse_attributes(text: str | None) -> tuple[dict, str | None]:
    """OfferHistorySG.Attributes (JSON text or NULL) -> dict, or the reason it is unusable."""
    if text is None or str(text).strip() == "":
        return {}, None
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return {}, "Attributes is not valid JSON"
    if not isinstance(value, dict):
        return {}, "Attributes is not a JSON object"
    return value, None


def has_opt_out_wording(body: str) -> bool:
    return bool(_OPT_OUT_WORDING.search(body))


def render_body(
    template: str,
    attributes: dict,
    append_opt_out: str | None = None,
    missing_as_placeholder: bool = False,
) -> Rendered:
    """Fill merge fields from `attributes`.

    A missing or NULL field makes the recipient NotRendered (a half-filled text is worse than none);
    seeds render missing fields as `[Field]` instead (CONTRACT.md seed_attributes).
    """
    problem: list[str] = []

    def fill(m: re.Match) -> str:
        name = m.group(1)
        value = attributes.get(name)
        if value is None:
            if missing_as_placeholder:
                return f"[{name}]"
            problem.append(f"merge field {name} is {'NULL' if name in attributes else 'missing'}")
            return ""
        return str(value)

    body = MERGE_FIELD.sub(fill, template or "")
    if problem:
        return Rendered(None, problem[0])
    if append_opt_out and not has_opt_out_wording(body):
        body = f"{body.rstrip()} {append_opt_out}" if body.strip() else body
    if not body.strip():
        return Rendered(None, "body is empty")
    if len(body) > MAX_BODY:
        return Rendered(None, f"body is {len(body)} characters, over Twilio's {MAX_BODY}")
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:
        return Rendered(None, "body contains invalid characters (lone surrogates)")
    return Rendered(body, None)
