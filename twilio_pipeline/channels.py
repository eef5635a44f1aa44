"""The channel file (docs/reference.md "Channel file"): load, validate, explain.

Every key and default of the contract is here. Unknown keys and wrong values are rejected at load time
with one line per problem naming the channel, the key and what is wrong, so a typo never turns into a
silent default during a send.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Literal

import phonenumbers
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from twilio_pipeline.rules.keywords import HELP_KEYWORDS, OPT_IN_KEYWORDS, OPT_OUT_KEYWORDS
from twilio_pipeline.rules.phones import validate_sender
from twilio_pipeline.rules.render import media_url_problem, quote, template_problem, text_problem

_WORD = re.compile(r"^[A-Z0-9]{1,40}$")
# An account name becomes part of environment variable names (TWILIO_<NAME>_ACCOUNT_SID) and of the
# watermark key (sender@NAME, 64 characters at most): a short identifier.
_ACCOUNT = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,23}$")
MAX_FILE_BYTES = 1 << 20    # a channel file is a few KB; 1 MiB is far beyond any real one
MAX_YAML_VALUES = 100_000   # values after alias expansion: a "billion laughs" file is refused before it grows
MAX_ERROR = 300             # characters of a one-line error


class ChannelConfigError(ValueError):
    """The channel file is missing, unreadable or invalid; str() is the user-facing message."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


class RetryConfig(_Strict):
    max_attempts: int = Field(5, ge=1, le=100)
    min_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(20.0, ge=0)
    throttle_budget_s: float = Field(600.0, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> RetryConfig:
        if self.max_delay_s < self.min_delay_s:
            raise ValueError("max_delay_s must be >= min_delay_s")
        return self


class ReconcileConfig(_Strict):
    """How an ambiguous create (timeout/5xx: Twilio may have made the message) is checked: looked up once
    quiet `settle_s` (Twilio's listings lag); not found -> sent again, or kept Unresolved."""

    settle_s: float = Field(60.0, ge=0, le=3600)
    resend_unconfirmed: bool = True


class FollowUp(_Strict):
    body: str = Field(min_length=1, max_length=1600)
    media_url: str | None = None

    @field_validator("body")
    @classmethod
    def _template(cls, v):
        problem = template_problem(v)
        if problem:
            raise ValueError(problem.replace("MessageBody", "the body"))
        return v

    @field_validator("media_url")
    @classmethod
    def _media(cls, v):
        problem = media_url_problem(v)
        if problem:
            raise ValueError(problem)
        return v


class Channel(_Strict):
    name: str = Field(min_length=1, max_length=200)
    from_number: str | None = None
    messaging_service_sid: str | None = None
    keywords: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    seed_attributes: dict[str, str] = Field(default_factory=dict)
    default_region: str | None = None
    append_opt_out: str | None = None
    max_concurrency: int = Field(20, ge=1, le=500)
    requests_per_second: float | None = Field(None, gt=0)
    retry: RetryConfig = RetryConfig()
    validity_period_s: int = Field(36000, ge=1, le=36000)
    status_horizon_hours: int = Field(72, ge=1, le=24 * 30)  # statuses read this long after sending
    sender_error_limit: int = Field(5, ge=1, le=10000)  # sender/account refusals in a row, then the send stops
    reconcile: ReconcileConfig = ReconcileConfig()
    retrieval_period_days: int = Field(395, ge=1, le=3650)
    records_per_sync: int = Field(10000, ge=1)
    reply_attribution: Literal["latest", "all"] = "latest"
    status_sync: Literal["list", "bulk_export"] = "list"
    notification_email: str | None = None
    price_per_segment: float | None = Field(None, ge=0)
    sync_interval_minutes: int = Field(15, ge=1, le=1440)
    follow_ups: dict[str, FollowUp] = Field(default_factory=dict)
    connectivity_test: bool = True
    trace: bool = False
    account: str | None = None  # a named Twilio account or subaccount: credentials from TWILIO_<NAME>_*

    @field_validator("from_number", mode="before")
    @classmethod
    def _from_number(cls, v):
        if v is None:
            return v
        if isinstance(v, int):
            v = str(v)
        problem = validate_sender(str(v).strip())
        if problem:
            raise ValueError(problem)
        return str(v).strip()

    @field_validator("messaging_service_sid")
    @classmethod
    def _service(cls, v):
        if v is not None and not re.fullmatch(r"MG[0-9a-fA-F]{32}", v):
            raise ValueError("must be 'MG' followed by 32 hex characters")
        return v

    @field_validator("account")
    @classmethod
    def _account(cls, v):
        if v is not None and not _ACCOUNT.match(v):
            raise ValueError("must be a name of letters, digits and underscores (at most 24, starting with a "
                             "letter): it names the TWILIO_<NAME>_ACCOUNT_SID variables")
        return v

    @field_validator("keywords", mode="before")
    @classmethod
    def _keywords(cls, v):
        if v is None:
            return ()
        out = []
        for k in v:
            word = str(k).strip().upper()
            if not _WORD.match(word):
                raise ValueError(f"keyword {quote(str(k))} must be one word of letters or digits")
            if word in OPT_OUT_KEYWORDS or word in OPT_IN_KEYWORDS or word in HELP_KEYWORDS:
                raise ValueError(f"keyword {word} is one of Twilio's own keywords; it is captured without listing it")
            out.append(word)
        if len(set(out)) != len(out):
            raise ValueError("keywords are listed twice")
        return tuple(out)

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, v):
        return () if v is None else tuple(str(s).strip() for s in v)

    @field_validator("default_region")
    @classmethod
    def _region(cls, v):
        if v is None:
            return v
        region = v.upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{quote(v)} is not a known region code such as US, GB or DE")
        return region

    @field_validator("notification_email")
    @classmethod
    def _email(cls, v):
        if v is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", v):
            raise ValueError("is not an e-mail address")
        return v

    @field_validator("follow_ups", mode="before")
    @classmethod
    def _follow_up_keys(cls, v):
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise ValueError("must map a keyword to {body: ...}")
        out = {}
        for k, spec in v.items():
            word = str(k).strip().upper()
            if word in OPT_OUT_KEYWORDS:
                raise ValueError(f"{word} is an opt-out: nobody may be messaged after replying it")
            out[word] = spec
        return out

    @model_validator(mode="after")
    def _sender_and_follow_ups(self) -> Channel:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("exactly one of from_number and messaging_service_sid is required")
        allowed = set(self.keywords) | set(OPT_IN_KEYWORDS) | set(HELP_KEYWORDS)
        for word in self.follow_ups:
            if word not in allowed:
                raise ValueError(f"follow_ups key {word} is not one of this channel's keywords {sorted(self.keywords)}")
        return self

    @property
    def sender(self) -> str:
        """The sender key used for suppression, watermarks and leases: the number or the service SID."""
        return self.messaging_service_sid or self.from_number  # type: ignore[return-value]

    @property
    def account_key(self) -> str | None:
        """The account the channel's sender, opt-outs and watermark belong to: the upper-cased `account`
        name, None for the deployment's own account (TWILIO_ACCOUNT_SID, or the sandbox)."""
        return self.account.upper() if self.account else None

    @property
    def uses_service(self) -> bool:
        return self.messaging_service_sid is not None


class ChannelFile(_Strict):
    channels: tuple[Channel, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ChannelFile:
        """Names must differ by more than case or Unicode form ('Demo'/'demo', composed/decomposed 'Café'):
        an upstream writing one for the other would reach a channel it did not mean."""
        seen: dict[str, str] = {}
        for c in self.channels:
            folded = _folded(c.name)
            if folded in seen:
                if seen[folded] == c.name:
                    raise ValueError(f"channel name {quote(c.name)} is used twice")
                raise ValueError(f"channel names {quote(seen[folded])} and {quote(c.name)} differ only in case "
                                 "or Unicode form")
            seen[folded] = c.name
        return self

    def sharing_sender(self, channel: Channel) -> tuple[Channel, ...]:
        """The other channels that send from the same number or Messaging Service of the same account. A
        person replies to the sender, not to a channel: their reply belongs to whichever of these messaged
        them last (the same number on another account is another sender)."""
        return tuple(c for c in self.channels if c.name != channel.name and c.sender == channel.sender
                     and c.account_key == channel.account_key)

    def get(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        known = ", ".join(quote(c.name) for c in self.channels[:10])
        near = [c.name for c in self.channels if _folded(c.name) == _folded(str(name))]
        hint = f" (names are exact: did you mean {quote(near[0])}?)" if near else ""
        raise ChannelConfigError(_one_line(f"unknown channel {quote(str(name))}{hint}; the channel file defines {known}"))


def _folded(name: str) -> str:
    return unicodedata.normalize("NFKC", name).casefold()


def _one_line(message: str, limit: int = MAX_ERROR) -> str:
    """A user-facing error on one line of at most `limit` characters (whole problems kept while they fit)."""
    message = " ".join(message.split())
    if len(message) <= limit:
        return message
    parts = message.split("; ")
    kept = parts[0] if len(parts[0]) <= limit - 30 else parts[0][:limit - 30] + "…"
    shown = 1
    for part in parts[1:]:
        if len(kept) + 2 + len(part) > limit - 30:
            break
        kept += "; " + part
        shown += 1
    more = len(parts) - shown
    return kept + (f"; and {more} more problem(s)" if more else "")


def _describe(err: ValidationError, raw: dict) -> str:
    lines = []
    channels = raw.get("channels") if isinstance(raw, dict) else None
    errors = err.errors()
    item_errors = any(len(e["loc"]) >= 2 and e["loc"][0] == "channels" and isinstance(e["loc"][1], int)
                      for e in errors)
    for e in errors:
        loc = list(e["loc"])
        if item_errors and e["type"] == "too_short" and loc == ["channels"]:
            continue  # pydantic's echo of an invalid channel: the list is not empty, that channel is wrong
        where = "channel file"
        if len(loc) >= 2 and loc[0] == "channels" and isinstance(loc[1], int):
            idx = loc[1]
            name = None
            if isinstance(channels, list) and idx < len(channels) and isinstance(channels[idx], dict):
                name = channels[idx].get("name")
            where = f"channel {quote(str(name))}" if name else f"channel #{idx + 1}"
            loc = loc[2:]
        key = ".".join(str(p) for p in loc if not str(p).startswith("function-"))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key"
        elif e["type"] == "missing":
            msg = "is required"
        lines.append(f"{where}: key '{key}': {msg}" if key else f"{where}: {msg}")
    return "; ".join(dict.fromkeys(lines))


def _bad_text(value: object, path: str = "") -> str | None:
    """The first string (key or value) holding a NUL, another control character or invalid Unicode."""
    if isinstance(value, str):
        problem = text_problem(value.replace("\t", " ").replace("\n", " ").replace("\r", " "), f"key '{path}'")
        return problem
    if isinstance(value, dict):
        for k, v in value.items():
            where = f"{path}.{k}" if path else str(k)
            problem = _bad_text(k, where) if isinstance(k, str) else None
            problem = problem or _bad_text(v, where)
            if problem:
                return problem
    if isinstance(value, list):
        for i, v in enumerate(value):
            problem = _bad_text(v, f"{path}.{i + 1}" if path else str(i + 1))
            if problem:
                return problem
    return None


def parse_channels(raw: object, source: str = "channel file") -> ChannelFile:
    if not isinstance(raw, dict) or "channels" not in raw:
        raise ChannelConfigError(_one_line(f"{source}: needs a top-level key 'channels' holding a list of channels"))
    if not isinstance(raw["channels"], list):
        raise ChannelConfigError(_one_line(f"{source}: 'channels' must be a list"))
    problem = _bad_text(raw)
    if problem:
        raise ChannelConfigError(_one_line(f"{source}: {problem}"))
    try:
        return ChannelFile.model_validate(raw)
    except ValidationError as err:
        raise ChannelConfigError(_one_line(f"{source}: {_describe(err, raw)}")) from None


class _YamlRefused(ValueError):
    """The YAML is well-formed but refused (too many values once aliases are expanded, a repeated key)."""


def _check_nodes(root: yaml.Node) -> None:
    """Refuse a document that expands to more than MAX_YAML_VALUES values (aliases re-use a node, so
    sizes are counted once per node: linear in the file, whatever the expansion) or repeats a key."""
    sizes: dict[int, int] = {}

    def size(node: yaml.Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        sizes[id(node)] = MAX_YAML_VALUES + 1  # a node reached again while being counted: a cycle
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for child in node.value:
                total += size(child)
                if total > MAX_YAML_VALUES:
                    break
        elif isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, child in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        raise _YamlRefused(f"key {quote(key.value)} is repeated at line {key.start_mark.line + 1}")
                    keys.add(key.value)
                total += size(key) + size(child)
                if total > MAX_YAML_VALUES:
                    break
        sizes[id(node)] = total
        return total

    if size(root) > MAX_YAML_VALUES:
        raise _YamlRefused(f"expands to more than {MAX_YAML_VALUES} values (YAML aliases); refused")


def _load_yaml(text: str) -> object:
    """yaml.safe_load with the expansion bound and repeated keys refused before anything is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_channels(path: Path | str) -> ChannelFile:
    path = Path(path)
    source = f"channel file {quote(str(path), 120)[1:-1]}"
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ChannelConfigError(_one_line(f"{source} does not exist (set TWILIO_PIPELINE_CHANNELS)")) from None
    except OSError as exc:
        raise ChannelConfigError(_one_line(f"{source} cannot be read: {exc.strerror}")) from None
    if len(data) > MAX_FILE_BYTES:
        raise ChannelConfigError(_one_line(f"{source} is over {MAX_FILE_BYTES // 1024} KiB; refused"))
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark from a Windows editor is fine
    except UnicodeDecodeError as exc:
        raise ChannelConfigError(_one_line(
            f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})")) from None
    try:
        raw = _load_yaml(text)
    except _YamlRefused as exc:
        raise ChannelConfigError(_one_line(f"{source}: {exc}")) from None
    except RecursionError:
        raise ChannelConfigError(_one_line(f"{source} is nested too deeply")) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None)
        detail = f": {problem[:80]}" if problem else ""
        raise ChannelConfigError(_one_line(f"{source} is not valid YAML{where}{detail}")) from None
    return parse_channels(raw, str(path))
