"""Scenario 6 - memory: peak RSS of send planning for 100,000 and 1,000,000 recipients.

The audiences (the demo mix: duplicates, formatted duplicates, invalid numbers, refusing numbers,
missing merge fields) are created first by another process, in one SQLite database. Each plan then
runs in a fresh child process, which reports its own peak RSS (`ru_maxrss`) and its RSS just before
planning (after imports and opening the database), so the import baseline is visible too.

Target: the 1M peak <= 1.5 x the 100k peak (memory bounded by the chunk size, not the audience).
"""

from __future__ import annotations

import time
from typing import Any

from twilio_pipeline.logs import ListLog
from twilio_pipeline_bench.fixtures import BODY_TEMPLATE, channel_spec, fresh_database, make_channel, run_id
from twilio_pipeline_bench.measuring import Measured, in_child, peak_rss_self_bytes, rss_self_bytes
from twilio_pipeline_bench.reporting import Context, ratio

SMALL = 100_000
LARGE = 1_000_000
TARGET = 1.5


def create_audiences(db_url: str, sizes: list[tuple[int, int]], channel_name: str) -> dict[str, float]:
    from twilio_pipeline.audience import create_execution, demo_audience
    from twilio_pipeline.db import Database

    db = Database(db_url)
    out = {}
    for eid, n in sizes:
        t0 = time.perf_counter()
        create_execution(db, eid, channel_name, BODY_TEMPLATE, demo_audience(n, seed=eid))
        out[str(n)] = time.perf_counter() - t0
    db.dispose()
    return out


def plan_child(db_url: str, spec: dict, execution_id: int) -> dict[str, Any]:
    from twilio_pipeline.db import Database
    from twilio_pipeline.outbound import plan_execution

    channel = make_channel(spec)
    db = Database(db_url)
    before = rss_self_bytes()
    m = Measured()
    with m.measure():
        summary = plan_execution(db, channel, execution_id, run_id=run_id("mem"), log=ListLog())
    db.dispose()
    return {"peak_rss": peak_rss_self_bytes(), "rss_before": before, "wall_s": m.wall_s, "cpu_s": m.cpu_s,
            "count_before_dedup": summary.count_before_dedup, "to_send": summary.to_send,
            "duplicates": summary.duplicates, "invalid": summary.invalid_numbers}


def run(ctx: Context) -> None:
    r = ctx.report
    small = ctx.size(SMALL, 20_000)
    large = ctx.size(LARGE, 200_000)
    ctx.sized("memory small audience", small, SMALL)
    ctx.sized("memory large audience", large, LARGE)
    spec = channel_spec()
    with fresh_database("sqlite", ctx.workdir, "memory") as url:
        created = in_child(create_audiences, url, [(1, small), (2, large)], spec["name"])
        r.note("audiences created in another process: " + ", ".join(f"{k} in {v:.0f} s" for k, v in created.items()))
        res_small = in_child(plan_child, url, spec, 1)
        res_large = in_child(plan_child, url, spec, 2)
    mb = 2**20
    for label, n, res in (("100k" if small == SMALL else f"{small // 1000}k", small, res_small),
                          ("1M" if large == LARGE else f"{large // 1000}k", large, res_large)):
        if res["count_before_dedup"] != n:
            raise RuntimeError(f"the plan of {n:,} counted {res['count_before_dedup']:,} contacts")
        r.reference(f"memory_plan_peak_rss_{label}", round(res["peak_rss"] / mb, 1), "MiB",
                    note=f"RSS before planning {res['rss_before'] / mb:.0f} MiB; "
                         f"planned {n:,} in {res['wall_s']:.1f} s "
                         f"({n / res['wall_s']:.0f}/s), {res['to_send']:,} to send")
    growth = ratio(res_large["peak_rss"], res_small["peak_rss"])
    r.figure("memory_plan_peak_1m_vs_100k", growth, "x", target=f"<= {TARGET}", passed=growth <= TARGET,
             note=f"{large:,} vs {small:,} recipients, SQLite")
    added_small = res_small["peak_rss"] - res_small["rss_before"]
    added_large = res_large["peak_rss"] - res_large["rss_before"]
    r.reference("memory_plan_added_by_planning", f"{added_small / mb:.0f} / {added_large / mb:.0f}", "MiB",
                note="peak minus RSS before planning, small / large")
    r.scenarios.setdefault(r.current, {})["raw"] = {"small": res_small, "large": res_large, "create_s": created}
