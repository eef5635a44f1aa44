"""Scenario 2 - CPU per message: what it costs to run, beside the bare loop's CPU per request.

The sandbox at 0 ms latency (so the CPU is not hidden behind waiting), 20 in flight on both sides
(the channel default), 5,000 messages per run, alternated bare, pipeline, pipeline, bare. CPU is the
user + system time of the process doing the work (its own rusage, every thread), read around the
measured work; the sandbox's CPU is its own process's and is printed apart.

Target: the pipeline's send step <= 1.5 x the bare loop's CPU per request. The whole outbound (plan +
send + commit) against the same floor is printed as a second, stricter figure.
"""

from __future__ import annotations

from twilio_pipeline_bench.comparisons import alternate_bare_and_pipeline
from twilio_pipeline_bench.fixtures import (
    SandboxInfo,
    bare_forms,
    channel_spec,
    create_clean_execution,
    fresh_database,
    start_sandbox,
)
from twilio_pipeline_bench.measuring import SandboxCPU
from twilio_pipeline_bench.reporting import Context, median, ratio

IN_FLIGHT = 20
MESSAGES = 5_000  # per run; the issue names no size (4 runs fit the 15-minute budget)
TARGET = 1.5


def run(ctx: Context) -> None:
    r = ctx.report
    n = ctx.size(MESSAGES, 2_000)
    r.note(f"{n:,} messages per run, {IN_FLIGHT} in flight, 0 ms latency")
    sb = start_sandbox(ctx.workdir, "cpu", latency_ms=0)
    try:
        info = SandboxInfo.of(sb)
        spec = channel_spec(max_concurrency=IN_FLIGHT)
        forms = bare_forms(n)
        sb_cpu = SandboxCPU(sb)
        with fresh_database(ctx.db_kind, ctx.workdir, "cpu") as url:
            for eid in (1, 2):
                create_clean_execution(url, eid, spec["name"], n)
            bare, pipe, by_side = alternate_bare_and_pipeline(
                info, forms, IN_FLIGHT, url, spec, sb_cpu,
                profile_path=lambda eid: ctx.profile_path(f"cpu_per_message_{eid}"),
                on_run=lambda side, res: r.note(f"{side}: {res['cpu_per_request_ms']:.3f} ms CPU/msg, "
                                                f"{res['rate']:.0f} msg/s"))
            sandbox_ms = by_side["bare"] + by_side["pipeline"]

        bare_ms = median(b["cpu_per_request_ms"] for b in bare)
        send_ms = median(p["cpu_per_request_ms"] for p in pipe)
        whole_ms = median((p["plan_cpu_s"] + p["send_cpu_s"] + p["commit_cpu_s"]) / p["requests"] * 1000 for p in pipe)
        r.reference("cpu_bare_loop_per_request", bare_ms, "ms",
                    note=f"0 ms latency, {IN_FLIGHT} threads; runs "
                         + ", ".join(f"{b['cpu_per_request_ms']:.3f}" for b in bare))
        r.reference("cpu_pipeline_send_per_message", send_ms, "ms",
                    note="send step; runs " + ", ".join(f"{p['cpu_per_request_ms']:.3f}" for p in pipe))
        r.figure("cpu_per_message_vs_bare_loop", ratio(send_ms, bare_ms), "x", target=f"<= {TARGET}",
                 passed=ratio(send_ms, bare_ms) <= TARGET)
        r.reference("cpu_pipeline_outbound_per_message", whole_ms, "ms", note="plan + send + commit")
        r.figure("cpu_per_message_outbound_vs_bare_loop", ratio(whole_ms, bare_ms), "x", target=f"<= {TARGET}",
                 passed=ratio(whole_ms, bare_ms) <= TARGET)
        r.reference("cpu_sandbox_per_request", median(sandbox_ms), "ms", note="sandbox process, counted apart")
        r.reference("cpu_rate_bare_loop", median(b["rate"] for b in bare), "msg/s", note="at 0 ms latency")
        r.reference("cpu_rate_pipeline", median(p["rate"] for p in pipe), "msg/s", note="at 0 ms latency")
        r.scenarios.setdefault(r.current, {})["raw"] = {"bare": bare, "pipeline": pipe, "sandbox_ms": sandbox_ms}
    finally:
        sb.stop()
