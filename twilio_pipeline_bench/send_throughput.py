"""Scenario 1 - send throughput: how fast the pipeline gets a campaign out, beside the floor.

10,000 recipients, sandbox at 100 ms latency, 50 requests in flight (ideal 500/s):
* the pipeline's send step (claims, worker pool, ledger writer, message-ID staging) on a planned
  execution, vs
* the bare loop (a requests.Session thread pool of 50 POSTing the same form, reading the SID) against
  the same sandbox, alternated bare, pipeline, pipeline, bare and compared by medians;
* and the pipeline with `max_concurrency: 1` on a 200-recipient sample (the guide's one at a time).

Targets: pipeline >= 0.9 x the bare loop's rate; >= 40 x the one-at-a-time rate. Each side runs in its
own child process (its CPU is its own); the sandbox's CPU is printed apart.
"""

from __future__ import annotations

from twilio_pipeline_bench.comparisons import alternate_bare_and_pipeline, pipeline_send
from twilio_pipeline_bench.fixtures import (
    SandboxInfo,
    bare_forms,
    channel_spec,
    create_clean_execution,
    fresh_database,
    start_sandbox,
)
from twilio_pipeline_bench.measuring import SandboxCPU, in_child
from twilio_pipeline_bench.reporting import Context, median, ratio

LATENCY_MS = 100
IN_FLIGHT = 50
RECIPIENTS = 10_000
SAMPLE = 200
RATE_TARGET = 0.9
SERIAL_TARGET = 40.0


def run(ctx: Context) -> None:
    r = ctx.report
    n = ctx.size(RECIPIENTS, 2_000)
    sample = ctx.size(SAMPLE, 50)
    ctx.sized("send throughput recipients", n, RECIPIENTS)
    ctx.sized("one-at-a-time sample", sample, SAMPLE)
    sb = start_sandbox(ctx.workdir, "send", latency_ms=LATENCY_MS, max_concurrency=max(100, IN_FLIGHT * 2))
    try:
        info = SandboxInfo.of(sb)
        spec = channel_spec(max_concurrency=IN_FLIGHT)
        serial_spec = channel_spec(max_concurrency=1)
        forms = bare_forms(n)
        sb_cpu = SandboxCPU(sb)
        with fresh_database(ctx.db_kind, ctx.workdir, "send") as url:
            for eid in (1, 2):
                create_clean_execution(url, eid, spec["name"], n)
            create_clean_execution(url, 3, spec["name"], sample)
            bare, pipe, sandbox_per_request = alternate_bare_and_pipeline(
                info, forms, IN_FLIGHT, url, spec, sb_cpu,
                profile_path=lambda eid: ctx.profile_path(f"send_throughput_{eid}"),
                on_run=lambda side, res: r.note(
                    f"{side}: {res['rate']:.0f} msg/s, {res.get('cpu_per_request_ms', 0):.2f} ms CPU/msg"
                    f" ({res.get('send_wall_s', res.get('wall_s')):.1f} s)"))
            serial = in_child(pipeline_send, url, info, serial_spec, 3)
            if serial["sent"] != sample:
                raise RuntimeError(f"one-at-a-time run sent {serial['sent']} of {sample}")

        bare_rate = median(b["rate"] for b in bare)
        pipe_rate = median(p["rate"] for p in pipe)
        ideal = IN_FLIGHT / (LATENCY_MS / 1000)
        r.reference("send_bare_loop_rate", bare_rate, "msg/s",
                    note=f"{n:,} POSTs, {IN_FLIGHT} threads, {LATENCY_MS} ms latency; ideal {ideal:.0f}/s; runs "
                         + ", ".join(f"{b['rate']:.0f}" for b in bare))
        r.reference("send_pipeline_rate", pipe_rate, "msg/s",
                    note="send step of a planned execution (claims, POSTs, ledger, message IDs); runs "
                         + ", ".join(f"{p['rate']:.0f}" for p in pipe))
        r.figure("send_rate_vs_bare_loop", ratio(pipe_rate, bare_rate), "x", target=f">= {RATE_TARGET}",
                 passed=ratio(pipe_rate, bare_rate) >= RATE_TARGET)
        r.reference("send_rate_vs_ideal", ratio(pipe_rate, ideal), "x",
                    note=f"ideal = {IN_FLIGHT} in flight / {LATENCY_MS} ms = {ideal:.0f}/s")
        end_to_end = median(p["requests"] / (p["plan_wall_s"] + p["send_wall_s"] + p["commit_wall_s"]) for p in pipe)
        r.reference("send_pipeline_rate_plan_send_commit", end_to_end, "msg/s",
                    note="plan + send + commit wall time")
        r.reference("send_one_at_a_time_rate", serial["rate"], "msg/s",
                    note=f"pipeline with max_concurrency 1, {sample} recipients")
        r.figure("send_rate_vs_one_at_a_time", ratio(pipe_rate, serial["rate"]), "x",
                 target=f">= {SERIAL_TARGET:.0f}", passed=ratio(pipe_rate, serial["rate"]) >= SERIAL_TARGET)
        r.reference("send_pipeline_cpu_per_message", median(p["cpu_per_request_ms"] for p in pipe), "ms",
                    note=f"at {LATENCY_MS} ms latency; send step, pipeline process only")
        r.reference("send_bare_loop_cpu_per_request", median(b["cpu_per_request_ms"] for b in bare), "ms")
        sandbox_ms = median(sandbox_per_request["bare"] + sandbox_per_request["pipeline"])
        r.reference("send_sandbox_cpu_per_request", sandbox_ms, "ms", note="sandbox process, counted apart")
        r.scenarios.setdefault(r.current, {})["raw"] = {"bare": bare, "pipeline": pipe, "one_at_a_time": serial}
    finally:
        sb.stop()
