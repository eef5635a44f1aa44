"""The sandbox's account: its numbers, messages and their lifecycle, opt-outs, replies and listing.

Beside it: what a create request may be (`create_request.py`), one message and how it is shown
(`message.py`), the Bulk Export jobs (`exports.py`).

Everything here runs on the server's event-loop thread, so there are no locks. Work per request
stays small: a message's whole lifecycle (its status steps, its outcome, its reply) is planned
once at creation from a seeded hash, and its status at any moment is read from that plan, so the
simulated clock costs nothing per tick and the same --seed gives the same outcomes. Listing walks
sorted indexes by `date_sent`, so a page costs its own size, not the account's.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Iterable
from functools import lru_cache

from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.create_request import read_create_request
from twilio_pipeline.sandbox.errors import FAILED_CODES, UNDELIVERED_CODES, VALIDITY_EXPIRED_CODE, bad_request
from twilio_pipeline.sandbox.exports import Exports
from twilio_pipeline.sandbox.message import Msg, phone_param
from twilio_pipeline.sandbox.rules import is_e164, keyword_action, segment_count
from twilio_pipeline.sandbox.sids import new_sid
from twilio_pipeline.sandbox.timefmt import parse_instant

FREE_TEXT_REPLIES = ("thanks!", "Who is this?", "ok, see you there", "Sounds good")


@lru_cache(maxsize=65536)
def _parse_instant_cached(value: str) -> float:
    return parse_instant(value)


def _uniforms(*parts: object) -> list[float]:
    """Eight reproducible uniforms in [0, 1) from the seed and a message's identity."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=32).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 4294967296.0 for i in range(0, 32, 4)]


def _pick(options: tuple | list, u: float):
    return options[min(int(u * len(options)), len(options) - 1)]


_keyword_kind = lru_cache(maxsize=4096)(keyword_action)


@lru_cache(maxsize=4096)
def _short_segments(body: str) -> int:
    return segment_count(body)


def _segments(body: str) -> int:
    """Segments of a body; short bodies (replies, keywords) repeat a lot, so they are cached."""
    return _short_segments(body) if len(body) <= 160 else segment_count(body)


class Model:
    """The simulated account. `journal` receives a JSON-able record for every change."""

    def __init__(self, config: SandboxConfig, journal: Callable[[dict], None] | None = None):
        self.config = config
        self.journal = journal or (lambda record: None)
        self.pool = tuple(config.pool_numbers)
        self.pool_set = frozenset(self.pool)
        self.service_sid = config.messaging_service_sid
        self.short_codes = tuple(config.pool_short_codes)
        self.alpha_senders = tuple(config.pool_alpha_senders)
        self.service_senders = frozenset((*self.pool, *self.short_codes, *self.alpha_senders))
        self.started = time.time()
        self._clear()

    def _set_numbers(self, bought: Iterable[str], released: Iterable[str] = ()) -> None:
        """The account's phone numbers: the flag's (default +15005550006), the service's pool and any
        bought since (POST IncomingPhoneNumbers), less those released (DELETE IncomingPhoneNumbers/{sid});
        any other From is 21606, as on Twilio."""
        self.bought = tuple(dict.fromkeys(bought))
        self.released = frozenset(released) - frozenset(self.bought)
        self.owned_numbers = tuple(n for n in dict.fromkeys((*self.config.owned_numbers, *self.pool, *self.bought))
                                   if n not in self.released)
        self.senders = frozenset((*self.owned_numbers, *self.short_codes, *self.alpha_senders))

    def provision_number(self, number: str | None) -> str:
        """Buy a number for the account (idempotent here: a number already owned stays owned)."""
        number = phone_param(number)
        if not number or not is_e164(number):
            raise bad_request(21421, f"PhoneNumber is invalid: {number!r}")
        if number not in self.owned_numbers:
            self._set_numbers((*self.bought, number), self.released - {number})
            self.journal({"k": "own", "n": number})
        return number

    def release_number(self, number: str) -> bool:
        """Release an owned number (Twilio's DELETE IncomingPhoneNumbers/{sid}): from then on a send
        from it is 21606. False when the account does not own it."""
        if number not in self.owned_numbers:
            return False
        self._set_numbers(tuple(n for n in self.bought if n != number), self.released | {number})
        self.journal({"k": "release", "n": number})
        return True

    # -- state -------------------------------------------------------------------------------
    def _clear(self) -> None:
        self.clock_offset = 0.0
        self.messages: dict[str, Msg] = {}
        self.idx_all: list[tuple[float, str]] = []
        self.idx_to: dict[str, list[tuple[float, str]]] = {}
        self.idx_from: dict[str, list[tuple[float, str]]] = {}
        self.created_by_to: dict[str, int] = {}
        self.blocks: dict[tuple[str | None, str, str], tuple[float, bool]] = {}
        self.pending_replies: list[tuple[float, str]] = []
        self.exports = Exports(self)
        self._set_numbers(())

    def now(self) -> float:
        return time.time() + self.clock_offset

    def reset(self) -> None:
        self._clear()
        self.journal({"k": "reset"})

    def advance_clock(self, seconds: float) -> float:
        if not math.isfinite(seconds) or seconds < 0:
            raise bad_request(20001, "advance_s must be a number of seconds >= 0")
        self.clock_offset += seconds
        self.journal({"k": "clock", "offset": self.clock_offset})
        self.settle()
        return self.now()

    def load(self, records: Iterable[dict]) -> None:
        """Rebuild the state from persisted records (snapshot, then journal), in order."""
        bulk: list[Msg] = []
        for r in records:
            kind = r.get("k")
            if kind == "m":
                bulk.append(Msg.from_record(r))
            elif kind == "ib":
                bulk.extend(Msg.from_inbound_row(row) for row in r["rows"])
            elif kind == "clock":
                self.clock_offset = float(r["offset"])
            elif kind in ("job", "job_del"):
                self.exports.restore(r)
            elif kind == "own":
                self._set_numbers((*self.bought, r["n"]), self.released - {r["n"]})
            elif kind == "release":
                self._set_numbers(tuple(n for n in self.bought if n != r["n"]), self.released | {r["n"]})
            elif kind == "reset":
                self._clear()
                bulk = []
        self._add_many(bulk, journal=False)
        for m in self.messages.values():
            if m.reply and self._reply_sid(m.sid) not in self.messages:
                heapq.heappush(self.pending_replies, (m.reply[0], m.sid))
        self.settle()

    def snapshot_records(self) -> Iterable[dict]:
        """Everything needed to rebuild the state, as records (for compaction)."""
        yield {"k": "clock", "offset": self.clock_offset}
        for number in self.bought:
            yield {"k": "own", "n": number}
        for number in sorted(self.released):
            yield {"k": "release", "n": number}
        for job in self.exports.jobs.values():
            yield job.record()
        rows: list[list] = []
        for _, sid in self.idx_all:
            m = self.messages[sid]
            if m.direction == "inbound":
                rows.append(m.inbound_row())
                if len(rows) >= 10_000:
                    yield {"k": "ib", "rows": rows}
                    rows = []
            else:
                yield m.record()
        if rows:
            yield {"k": "ib", "rows": rows}

    def _index(self, m: Msg, touched: dict[int, list] | None) -> None:
        """Put a message in the date_sent indexes; `touched` collects lists to sort afterwards."""
        entry = (m.key, m.sid)
        for index, value in ((self.idx_to, m.to), (self.idx_from, m.frm)):
            lst = index.get(value)
            if lst is None:
                index[value] = [entry]
            elif touched is not None:
                lst.append(entry)
                touched[id(lst)] = lst
            elif lst[-1] < entry:
                lst.append(entry)
            else:
                insort(lst, entry)
        lst = self.idx_all
        if touched is not None or not lst or lst[-1] < entry:
            lst.append(entry)
        else:
            insort(lst, entry)
        if m.direction == "inbound":
            self._apply_keyword(m)
        else:
            self.created_by_to[m.to] = self.created_by_to.get(m.to, 0) + 1

    def _add(self, m: Msg) -> None:
        self.messages[m.sid] = m
        self._index(m, None)
        self.journal(m.record())

    def _add_many(self, msgs: list[Msg], journal: bool = True) -> None:
        """Add many messages with one sort per touched index (bulk inbound, loading a store)."""
        touched: dict[int, list] = {}
        # a record read twice (snapshot and journal overlap after a crash) counts once, last wins
        unique = {m.sid: m for m in msgs if m.sid not in self.messages}
        messages = self.messages
        # keyword effects apply in date order, whatever order the records came in
        ordered = sorted(unique.values(), key=lambda x: (x.key, x.sid))
        for m in ordered:
            messages[m.sid] = m
            self._index(m, touched)
        if journal:
            inbound = [m.inbound_row() for m in ordered if m.direction == "inbound"]
            for start in range(0, len(inbound), 10_000):
                self.journal({"k": "ib", "rows": inbound[start:start + 10_000]})
            for m in ordered:
                if m.direction != "inbound":
                    self.journal(m.record())
        self.idx_all.sort()
        for lst in touched.values():
            lst.sort()

    # -- opt-outs ----------------------------------------------------------------------------
    def _block_keys(self, sender: str) -> list[str]:
        keys = [sender]
        if sender in self.service_senders:
            keys.append(self.service_sid)
        return keys

    def _apply_keyword(self, m: Msg) -> None:
        """An inbound STOP/START changes the block for its sender (and the service of a pool sender),
        in the account that received it."""
        kind = _keyword_kind(m.body)
        if kind not in ("opt_out", "opt_in"):
            return
        for key in self._block_keys(m.to):
            previous = self.blocks.get((m.acct, m.frm, key))
            if previous is None or previous[0] <= m.key:
                self.blocks[(m.acct, m.frm, key)] = (m.key, kind == "opt_out")

    def is_blocked(self, to: str, keys: Iterable[str], acct: str | None = None) -> bool:
        for key in keys:
            state = self.blocks.get((acct, to, key))
            if state is not None and state[1]:
                return True
        return False

    # -- replies -----------------------------------------------------------------------------
    @staticmethod
    def _reply_sid(sid: str) -> str:
        return "SM" + hashlib.blake2b((sid + ":reply").encode(), digest_size=16).hexdigest()

    def settle(self, now: float | None = None) -> None:
        """Materialise the simulated replies that are due; none from the future is ever listed."""
        heap = self.pending_replies
        if not heap:
            return
        now = self.now() if now is None else now
        while heap and heap[0][0] <= now:
            t, sid = heapq.heappop(heap)
            m = self.messages.get(sid)
            reply_sid = self._reply_sid(sid)
            if m is None or m.reply is None or reply_sid in self.messages:
                continue
            body = m.reply[1]
            seg = _segments(body) or 1
            service = self.service_sid if m.frm in self.service_senders else None
            self._add(Msg(reply_sid, "inbound", m.frm, m.to, True, service, body, [], seg, t,
                          (("received", t),), None, t, acct=m.acct))

    # -- Messages: create --------------------------------------------------------------------
    def create_message(self, form: dict[str, list[str]], acct: str | None = None) -> Msg:
        """Validate a create request as Twilio does (`create_request.py`) and plan the new message's lifecycle.

        `acct`: the subaccount that sends (None: the main account)."""
        cfg = self.config
        now = self.now()
        req = read_create_request(form, now, service_sid=self.service_sid, senders=self.senders,
                                  alpha_senders=self.alpha_senders)
        to, frm, service, body, media = req.to, req.frm, req.service, req.body, req.media

        sender = frm or self.pool[int(hashlib.md5(to.encode()).hexdigest(), 16) % len(self.pool)]
        keys = [service] if service and not frm else self._block_keys(sender)
        if service and frm and service not in keys:
            keys.append(service)
        self.settle(now)
        if self.is_blocked(to, keys, acct):
            raise bad_request(21610, "Attempt to send to unsubscribed recipient")

        seg = segment_count(body) or (1 if media else 0)
        n = self.created_by_to.get(to, 0)
        u = _uniforms(cfg.seed, to, n)
        steps, err, key, reply = self._plan(now, bool(service), req.send_at, req.validity_s, u)
        sid = new_sid("MM" if media else "SM")
        m = Msg(sid, "outbound-api", to, sender, bool(frm), service, body, media, seg, now,
                steps, err, key, reply, req.callback, acct)
        self._add(m)
        if reply:
            heapq.heappush(self.pending_replies, (reply[0], sid))
        return m

    def _plan(self, t0, via_service, send_at, validity_s, u):
        """Status steps, error code, date_sent time and reply of a new outbound message."""
        cfg = self.config
        d = cfg.status_delay_s
        if send_at is not None:
            steps = [("scheduled", t0), ("queued", send_at)]
            queue_start = send_at
        elif via_service:
            steps = [("accepted", t0), ("queued", t0 + d)]
            queue_start = t0
        else:
            steps = [("queued", t0)]
            queue_start = t0
        t_sending = steps[-1][1] + d
        if validity_s is not None and t_sending - queue_start > validity_s:
            t_fail = queue_start + validity_s
            steps = [s for s in steps if s[1] < t_fail] + [("failed", t_fail)]
            return tuple(steps), VALIDITY_EXPIRED_CODE, t_fail, None
        steps.append(("sending", t_sending))
        if u[0] < cfg.failed_rate:
            steps.append(("failed", t_sending + d))
            return tuple(steps), _pick(FAILED_CODES, u[1]), t_sending + d, None
        t_sent = t_sending + d
        steps.append(("sent", t_sent))
        if u[0] < cfg.failed_rate + cfg.undelivered_rate:
            steps.append(("undelivered", t_sent + d))
            return tuple(steps), _pick(UNDELIVERED_CODES, u[1]), t_sent, None
        t_delivered = t_sent + d
        if u[6] < cfg.sent_final_rate:
            return tuple(steps), None, t_sent, None  # the carrier never sends a receipt
        steps.append(("delivered", t_delivered))
        reply = None
        if u[2] < cfg.reply_rate:
            kinds = ["STOP", "START", "HELP", *cfg.reply_keywords, None]
            kind = _pick(kinds, u[4])
            body = kind if kind is not None else _pick(FREE_TEXT_REPLIES, u[5])
            reply = (t_delivered + (1.0 + 3.0 * u[3]) * max(d, 1.0), body)
        return tuple(steps), None, t_sent, reply

    # -- Messages: inbound -------------------------------------------------------------------
    def inbound_message(self, frm: str | None, to: str | None, body: str | None,
                        date_sent: str | None, now: float, acct: str | None = None) -> Msg:
        frm, to = phone_param(frm), phone_param(to)
        if not frm:
            raise bad_request(21603, "A 'From' phone number is required.")
        if not to:
            raise bad_request(21604, "A 'To' phone number is required.")
        t = now
        if date_sent:
            try:
                t = _parse_instant_cached(date_sent)
            except ValueError:
                raise bad_request(20001, f"DateSent {date_sent!r} is not an ISO 8601 date-time") from None
            if t > now + 1.0:
                raise bad_request(20001, "DateSent cannot be in the future of the sandbox clock")
        body = body or ""
        service = self.service_sid if to in self.service_senders else None
        return Msg(new_sid("SM"), "inbound", to, frm, True, service, body, [], _segments(body) or 1, t,
                   (("received", t),), None, t, acct=acct)

    def inject_inbound(self, items: list[dict], acct: str | None = None) -> list[Msg]:
        """Inbound messages as if recipients had texted the account (one, or a bulk of many)."""
        now = self.now()
        self.settle(now)
        msgs = []
        for item in items:
            if not isinstance(item, dict):
                raise bad_request(20001, "each inbound item must be an object with From, To, Body")
            msgs.append(self.inbound_message(
                item.get("From") or item.get("from"), item.get("To") or item.get("to"),
                item.get("Body") or item.get("body"), item.get("DateSent") or item.get("date_sent"), now,
                acct,
            ))
        if len(msgs) == 1:
            self._add(msgs[0])
        else:
            self._add_many(msgs)
        return msgs

    def list_messages(self, to: str | None, frm: str | None, lo: float, hi: float,
                      date_filtered: bool, page_size: int, token: str | None, now: float,
                      acct: str | None = None) -> tuple[list[Msg], bool, bool]:
        """One page of `acct`'s messages, newest date_sent first: (messages, more after it, more before it).

        A PageToken is `PA<sid>` (the page after that message) or `PB<sid>` (the page before),
        so a page never shifts when messages arrive while a client is paging. With --list-lag-ms
        an outbound message is left out until it is that old on the sandbox clock.
        """
        if to is not None:
            lst = self.idx_to.get(to, [])
        elif frm is not None:
            lst = self.idx_from.get(frm, [])
        else:
            lst = self.idx_all
        check_from = frm is not None and to is not None
        lag = self.config.list_lag_s
        if check_from or lag > 0 or self.config.subaccounts:
            born_by = now - lag

            def keep(m: Msg) -> bool:
                return (m.acct == acct and (not check_from or m.frm == frm)
                        and (m.direction == "inbound" or m.created <= born_by))
        else:
            keep = None
        if date_filtered:
            hi = min(hi, math.nextafter(now, math.inf))
        top = bisect_left(lst, (hi,)) if hi != math.inf else len(lst)
        bottom = bisect_left(lst, (lo,)) if lo != -math.inf else 0
        backwards = False
        if token:
            anchor = self.messages.get(token[2:]) if token[:2] in ("PA", "PB") else None
            if anchor is None:
                raise bad_request(20001, f"Invalid PageToken {token}")
            if token.startswith("PA"):
                top = min(top, bisect_left(lst, (anchor.key, anchor.sid)))
            else:
                bottom = max(bottom, bisect_right(lst, (anchor.key, anchor.sid)))
                backwards = True
        messages = self.messages
        out: list[Msg] = []
        if not backwards:
            i = top - 1
            while i >= bottom and len(out) <= page_size:
                m = messages[lst[i][1]]
                if keep is None or keep(m):
                    out.append(m)
                i -= 1
            more_after = len(out) > page_size
            return out[:page_size], more_after, bool(token)
        i = bottom
        while i < top and len(out) <= page_size:
            m = messages[lst[i][1]]
            if keep is None or keep(m):
                out.append(m)
            i += 1
        more_before = len(out) > page_size
        page = out[:page_size]
        page.reverse()
        return page, True, more_before
