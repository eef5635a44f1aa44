"""Scenario 4 - status sync: API calls and time to bring back the states of 10,000 sent messages.

10,000 messages are sent through the pipeline's own send path (so Twilio_MessageIDs and the ledger
are exactly what a real send leaves), the sandbox clock is advanced an hour so every message is final,
then the channel sync runs as production runs it - `channel_sync_job` then `execution_sync_job`, in
process through the CLI's runner (refresh, keyword parse, status fetch by listing, state load,
aggregate) - with 8 in flight. The baseline is the guide's per-SID sync: GET Messages/{sid}.json for every SID,
8 threads (it only reads; it writes nothing), run once after the sync. Both at 0 ms sandbox latency; API calls are the
sandbox's own `requests_total` delta.

Target: <= 10,000 / 1,000 + executions + 5 calls.
"""

from __future__ import annotations

from typing import Any

from twilio_pipeline_bench.comparisons import bare_get_loop, pipeline_send
from twilio_pipeline_bench.fixtures import (
    SandboxInfo,
    channel_spec,
    create_clean_execution,
    fresh_database,
    make_channel,
    start_sandbox,
)
from twilio_pipeline_bench.measuring import Measured, SandboxCPU, in_child, start_profiler, stop_profiler
from twilio_pipeline_bench.reporting import Context, median, ratio

MESSAGES = 10_000
IN_FLIGHT = 8


def pipeline_sync(db_url: str, info: SandboxInfo, spec: dict, profile_path: str | None = None) -> dict[str, Any]:
    """The channel sync in this (child) process, through the jobs; its wall and CPU time and what it loaded.
    Its scratch folder (channel file, data dir) is removed after."""
    import shutil
    import tempfile
    from pathlib import Path

    from twilio_pipeline.db import Database

    db = Database(db_url)
    workdir = Path(tempfile.mkdtemp(prefix="bench-sync-"))
    try:
        return _sync_in(workdir, db, db_url, info, spec, profile_path)
    finally:
        db.dispose()
        shutil.rmtree(workdir, ignore_errors=True)


def _sync_in(workdir, db, db_url: str, info: SandboxInfo, spec: dict, profile_path: str | None) -> dict[str, Any]:
    import dagster as dg
    import sqlalchemy as sa
    import yaml

    from twilio_pipeline.channels import ChannelFile
    from twilio_pipeline.defs.resources import DatabaseResource, TwilioResource
    from twilio_pipeline.defs.runner import sync_runs

    channel = make_channel(spec)
    channels_path = workdir / "channels.yaml"
    channels_path.write_text(yaml.safe_dump({"channels": [spec]}))
    resources = {
        "database": DatabaseResource(url=db_url),
        "twilio": TwilioResource(account_sid=info.account_sid, auth_token=info.auth_token,
                                 api_base_url=info.base_url, bulkexports_base_url=info.base_url,
                                 messaging_base_url=info.base_url, channels_path=str(channels_path),
                                 data_dir=str(workdir / "data")),
    }
    instance = dg.DagsterInstance.ephemeral()
    profiler = start_profiler(profile_path)
    m = Measured()
    with m.measure():
        runs = sync_runs(instance, db, ChannelFile(channels=(channel,)), None, tags={"twilio_pipeline/bench": "1"},
                         resources=resources)
    stop_profiler(profiler, profile_path)
    every = [runs.channel_run, *(part.run for part in runs.executions)]
    failed = [run.failure for run in every if run.failure is not None]
    if failed:
        raise RuntimeError(f"the channel sync failed: {failed[0].error_class}: {failed[0].message}")
    fetch: dict[str, Any] = {}
    for part in runs.executions:
        for key, value in part.run.metadata("status_fetch").items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                fetch[key] = fetch.get(key, 0) + value
    client_requests = int(runs.channel_run.metadata("keyword_parse").get("refresh_api_calls", 0))
    client_requests += int(fetch.get("api_calls", 0))
    t = db.tables
    with db.connect() as conn:
        states = dict(conn.execute(sa.select(t.states.c.FulfillmentState, sa.func.count())
                                   .group_by(t.states.c.FulfillmentState)).all())
        tracked = conn.execute(sa.select(sa.func.count()).select_from(t.message_ids)).scalar()
    out = {"wall_s": m.wall_s, "cpu_s": m.cpu_s, "client_requests": client_requests,
           "executions": len(runs.execution_ids), "states": states, "still_tracked": tracked,
           "results": {str(eid): db.read_results(eid) for eid in runs.execution_ids},
           "fetch": fetch or None, "runs": len(every)}
    instance.dispose()
    return out


def _sids(db_url: str) -> list[str]:
    import sqlalchemy as sa

    from twilio_pipeline.db import Database

    db = Database(db_url)
    with db.connect() as conn:
        sids = [row[0] for row in conn.execute(sa.select(db.tables.message_ids.c.MessageID))]
    db.dispose()
    return sids


def run(ctx: Context) -> None:
    r = ctx.report
    n = ctx.size(MESSAGES, 2_000)
    ctx.sized("status sync messages", n, MESSAGES)
    sb = start_sandbox(ctx.workdir, "status", latency_ms=0, status_delay_ms=1000)
    try:
        info = SandboxInfo.of(sb)
        send_spec = channel_spec(max_concurrency=20)
        sync_spec = channel_spec(max_concurrency=IN_FLIGHT)
        with fresh_database(ctx.db_kind, ctx.workdir, "status") as url:
            create_clean_execution(url, 1, send_spec["name"], n)
            sent = in_child(pipeline_send, url, info, send_spec, 1)
            if sent["sent"] != n:
                raise RuntimeError(f"the send of the {n:,} messages sent {sent['sent']}")
            sb.advance_clock(3600)  # every message reaches its final status
            sids = _sids(url)
            executions = 1
            sb_cpu = SandboxCPU(sb)
            per_sid = []
            for step in ("pipeline", "per_sid"):
                before = sb.stats()["requests_total"]
                sb_cpu.start()
                if step == "per_sid":
                    res = in_child(bare_get_loop, info, sids, IN_FLIGHT)
                    per_sid.append(res)
                else:
                    res = in_child(pipeline_sync, url, info, sync_spec, ctx.profile_path("status_sync"))
                    pipe = res
                res["sandbox_cpu_s"] = sb_cpu.stop()
                res["api_calls"] = sb.stats()["requests_total"] - before
                r.note(f"{step}: {res['api_calls']} API calls, {res['wall_s']:.2f} s, {res['cpu_s']:.2f} s CPU")

        target = n / 1000 + executions + 5
        r.figure("status_sync_api_calls", pipe["api_calls"], "calls", target=f"<= {target:.0f}",
                 passed=pipe["api_calls"] <= target)
        r.reference("status_sync_wall_time", pipe["wall_s"], "s",
                    note="whole channel sync through the jobs: refresh, keyword parse, list, state load, aggregate")
        r.reference("status_sync_cpu", pipe["cpu_s"], "s", note="pipeline process")
        per_sid_wall = median(x["wall_s"] for x in per_sid)
        r.reference("status_per_sid_api_calls", median(x["api_calls"] for x in per_sid), "calls")
        r.reference("status_per_sid_wall_time", per_sid_wall, "s", note=f"{IN_FLIGHT} threads, GETs only, no DB writes")
        r.reference("status_sync_calls_saved", ratio(median(x["api_calls"] for x in per_sid), pipe["api_calls"]), "x")
        r.reference("status_sync_speedup_vs_per_sid", ratio(per_sid_wall, pipe["wall_s"]), "x")
        delivered = int(pipe["states"].get("Delivered", 0))
        r.figure("status_sync_states_loaded", delivered, "Delivered states", target=f"= {n}", passed=delivered == n)
        r.figure("status_sync_sids_still_tracked", pipe["still_tracked"], "SIDs", target="0",
                 passed=pipe["still_tracked"] == 0)
        r.scenarios.setdefault(r.current, {})["raw"] = {"pipeline": pipe, "per_sid": per_sid, "send": sent}
    finally:
        sb.stop()
