"""How the sandbox pages lists, as Twilio does: the 2010-04-01 envelope (`next_page_uri`, relative) and
the v1 envelope (`meta.next_page_url`, absolute); small lists are paged by position (`PT<offset>`)."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from twilio_pipeline.sandbox.errors import bad_request
from twilio_pipeline.sandbox.http import Request


def host_url(request: Request) -> str:
    """The base URL the caller used (the sandbox serves every Twilio host on one port)."""
    return "http://" + request.headers.get("host", "127.0.0.1")


def int_param(params: dict, name: str, default: int, low: int, high: int) -> int:
    raw = params.get(name)
    if not raw or raw[0] == "":
        return default
    try:
        value = int(raw[0])
    except ValueError:
        raise bad_request(20001, f"{name} must be an integer") from None
    if not low <= value <= high:
        raise bad_request(20001, f"{name} must be between {low} and {high}")
    return value


def page_2010(path, base, page_size, page, token, key, items, next_token, prev_token) -> dict:
    def uri(page_no: int, page_token: str | None) -> str:
        query = base + [("PageSize", str(page_size)), ("Page", str(page_no))]
        if page_token:
            query.append(("PageToken", page_token))
        return path + "?" + urlencode(query, quote_via=quote, safe="")

    start = page * page_size
    return {
        "end": start + len(items) - 1 if items else start,
        "first_page_uri": uri(0, None),
        key: items,
        "next_page_uri": uri(page + 1, next_token) if next_token else None,
        "page": page,
        "page_size": page_size,
        "previous_page_uri": uri(page - 1, prev_token) if prev_token else None,
        "start": start,
        "uri": uri(page, token),
    }


def offset_page(params: dict, max_size: int, default: int = 50) -> tuple[int, int, int]:
    """(page_size, page, offset) for the small lists paged by position (PageToken `PT<offset>`)."""
    page_size = int_param(params, "PageSize", default, 1, max_size)
    page = int_param(params, "Page", 0, 0, 10**9)
    token = params["PageToken"][0] if params.get("PageToken") else ""
    offset = page * page_size
    if token.startswith("PT") and token[2:].isdigit():
        offset = int(token[2:])
    return page_size, page, offset


def v1_page(request: Request, path: str, key: str, items: list, max_size: int) -> dict:
    params = request.params
    page_size, page, offset = offset_page(params, max_size)
    host = host_url(request)
    chunk = items[offset:offset + page_size]

    def url(page_no: int, page_token: str | None) -> str:
        query = [("PageSize", str(page_size)), ("Page", str(page_no))]
        if page_token:
            query.append(("PageToken", page_token))
        return f"{host}{path}?" + urlencode(query, quote_via=quote, safe="")

    token = params.get("PageToken", [None])[0]
    return {
        key: chunk,
        "meta": {
            "page": page, "page_size": page_size, "first_page_url": url(0, None),
            "previous_page_url": url(page - 1, f"PT{max(offset - page_size, 0)}") if offset > 0 else None,
            "url": url(page, token),
            "next_page_url": url(page + 1, f"PT{offset + page_size}") if offset + page_size < len(items) else None,
            "key": key,
        },
    }
