"""Scenario 3 - 429 behaviour: the account allows 20 requests in flight, the channel asks for 100.

The sandbox answers 429 / 20429 (not processed) beyond `--max-concurrency 20`, at 100 ms latency.
The pipeline configured for 100 in flight must adapt (its limiter halves on a burst of 429s and grows
back slowly; throttled requests are retried within the throttle budget) and get within 20 % of the
pipeline configured at the account's 20, with no message lost and none sent twice. Channel retry
settings are the defaults users get (min 1 s, max 20 s, budget 600 s). Runs alternate 20, 100, 100, 20.
"""

from __future__ import annotations

from twilio_pipeline_bench.comparisons import pipeline_send
from twilio_pipeline_bench.fixtures import (
    SandboxInfo,
    channel_spec,
    create_clean_execution,
    fresh_database,
    start_sandbox,
)
from twilio_pipeline_bench.measuring import in_child
from twilio_pipeline_bench.reporting import Context, median, ratio

LATENCY_MS = 100
ACCOUNT_LIMIT = 20
ASKED = 100
MESSAGES = 2_000
TARGET = 0.8


def run(ctx: Context) -> None:
    r = ctx.report
    n = ctx.size(MESSAGES, 800)
    r.note(f"{n:,} messages per run (the issue names no size), sandbox --max-concurrency {ACCOUNT_LIMIT}, "
           f"{LATENCY_MS} ms latency")
    sb = start_sandbox(ctx.workdir, "throttle", latency_ms=LATENCY_MS, max_concurrency=ACCOUNT_LIMIT)
    try:
        info = SandboxInfo.of(sb)
        runs: dict[int, list[dict]] = {ACCOUNT_LIMIT: [], ASKED: []}
        lost = duplicates = throttled_at_sandbox = 0
        with fresh_database(ctx.db_kind, ctx.workdir, "throttle") as url:
            order = (ACCOUNT_LIMIT, ASKED, ASKED, ACCOUNT_LIMIT)
            for eid, _ in enumerate(order, start=1):
                create_clean_execution(url, eid, channel_spec()["name"], n, area=415)
            for eid, conc in enumerate(order, start=1):
                before = sb.stats()
                res = in_child(pipeline_send, url, info, channel_spec(max_concurrency=conc), eid,
                               profile_path=ctx.profile_path(f"throttle_{conc}_{eid}") if eid == 2 else None)
                after = sb.stats()
                created = after["messages_outbound"] - before["messages_outbound"]
                t429 = after["throttled_429"] - before["throttled_429"]
                res.update(sandbox_created=created, sandbox_429=t429)
                runs[conc].append(res)
                results = res.get("results", {})
                lost += n - int(results.get("Sent", 0)) - int(results.get("SendFailed", 0))
                duplicates += created - int(results.get("Sent", 0)) - int(results.get("SeedsSent", 0))
                throttled_at_sandbox += t429 if conc == ASKED else 0
                r.note(f"max_concurrency {conc}: {res['rate']:.0f} msg/s, {t429} x 429, {res['http_requests']} "
                       f"requests, limiter ended at {res['final_limit']}, status {res.get('status')}")

        rate_20 = median(x["rate"] for x in runs[ACCOUNT_LIMIT])
        rate_100 = median(x["rate"] for x in runs[ASKED])
        r.reference("throttle_rate_at_account_limit", rate_20, "msg/s",
                    note=f"max_concurrency {ACCOUNT_LIMIT}; ideal {ACCOUNT_LIMIT / (LATENCY_MS / 1000):.0f}/s")
        r.reference("throttle_rate_asking_100", rate_100, "msg/s", note=f"max_concurrency {ASKED}")
        rel = ratio(rate_100, rate_20)
        r.figure("throttle_rate_100_vs_20", rel, "x", target=f">= {TARGET} (within 20 %)", passed=rel >= TARGET)
        r.figure("throttle_429s_provoked", throttled_at_sandbox, "429s", target="> 0", passed=throttled_at_sandbox > 0)
        r.figure("throttle_messages_lost", lost, "messages", target="0", passed=lost == 0)
        r.figure("throttle_messages_sent_twice", duplicates, "messages", target="0", passed=duplicates == 0)
        r.scenarios.setdefault(r.current, {})["raw"] = {str(k): v for k, v in runs.items()}
    finally:
        sb.stop()
