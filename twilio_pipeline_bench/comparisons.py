"""The two sides of the send comparisons, each run in its own child process against the same sandbox:
the bare loop (the floor: a `requests.Session` thread pool POSTing the same forms, or GETting the same
SIDs, with nothing of the pipeline in the way) and the pipeline's own plan, send and commit, measured
step by step."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from twilio_pipeline.logs import ListLog
from twilio_pipeline_bench.fixtures import SandboxInfo, make_channel, make_client, run_id
from twilio_pipeline_bench.measuring import Measured, cpu_self, peak_rss_self_bytes, start_profiler, stop_profiler


# ---- the bare loop ---------------------------------------------------------------------------------
def bare_loop(info: SandboxInfo, forms: list[dict], concurrency: int) -> dict[str, Any]:
    """The floor: one requests.Session (HTTPAdapter pool_maxsize=N) and N threads of a ThreadPoolExecutor
    POSTing `forms` to Messages.json, reading each answer's SID. Nothing else: no ledger, no retries.

    Runs in its own child process; returns wall time, this process's CPU for the loop, the statuses.
    """
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.auth = (info.account_sid, info.auth_token)
    session.headers["Accept"] = "application/json"
    url = info.messages_url
    it = iter(forms)
    lock = threading.Lock()
    statuses: dict[int, int] = {}
    sids = [0]

    def worker() -> None:
        local: dict[int, int] = {}
        got = 0
        while True:
            with lock:
                form = next(it, None)
            if form is None:
                break
            resp = session.post(url, data=form, timeout=(5, 30))
            local[resp.status_code] = local.get(resp.status_code, 0) + 1
            if resp.status_code == 201 and resp.json().get("sid"):
                got += 1
        with lock:
            for k, v in local.items():
                statuses[k] = statuses.get(k, 0) + v
            sids[0] += got

    # Connections are opened inside the measure, as the pipeline's are inside its own.
    t0, c0 = time.perf_counter(), cpu_self()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = [pool.submit(worker) for _ in range(concurrency)]
        for f in futures:
            f.result()
    wall, cpu = time.perf_counter() - t0, cpu_self() - c0
    session.close()
    return {"requests": len(forms), "wall_s": wall, "cpu_s": cpu, "statuses": statuses, "sids": sids[0],
            "rate": len(forms) / wall if wall else float("nan"), "cpu_per_request_ms": cpu / len(forms) * 1000}


def bare_get_loop(info: SandboxInfo, sids: list[str], concurrency: int) -> dict[str, Any]:
    """The per-SID status sync (the guide's way): GET Messages/{sid}.json for every SID, N threads."""
    import requests
    from requests.adapters import HTTPAdapter

    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=concurrency, max_retries=0)
    session.mount("http://", adapter)
    session.auth = (info.account_sid, info.auth_token)
    session.headers["Accept"] = "application/json"
    base = f"{info.base_url}/2010-04-01/Accounts/{info.account_sid}/Messages/"
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def get(sid: str) -> str:
        resp = session.get(f"{base}{sid}.json", timeout=(5, 30))
        return resp.json().get("status") if resp.status_code == 200 else f"HTTP {resp.status_code}"

    t0, c0 = time.perf_counter(), cpu_self()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for status in pool.map(get, sids, chunksize=64):
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
    wall, cpu = time.perf_counter() - t0, cpu_self() - c0
    session.close()
    return {"requests": len(sids), "wall_s": wall, "cpu_s": cpu, "statuses": statuses}


# ---- the pipeline's send, in a child ---------------------------------------------------------------
def pipeline_send(db_url: str, info: SandboxInfo, spec: dict, execution_id: int, *,
                  plan: bool = True, commit: bool = True, profile_path: str | None = None) -> dict[str, Any]:
    """Plan (untimed for the send figures), send, commit one execution through the pipeline's own
    functions, in this (child) process; returns each step's wall and CPU time and the send summary."""
    from twilio_pipeline.db import Database
    from twilio_pipeline.outbound import commit_execution, plan_execution, send_execution

    channel = make_channel(spec)
    db = Database(db_url)
    client = make_client(info, channel)
    log = ListLog()
    rid = run_id("send")
    out: dict[str, Any] = {}
    if plan:
        m = Measured()
        with m.measure():
            p = plan_execution(db, channel, execution_id, run_id=rid, log=log)
        out.update(plan_wall_s=m.wall_s, plan_cpu_s=m.cpu_s, to_send=p.to_send)
    profiler = start_profiler(profile_path)
    m = Measured()
    with m.measure():
        s = send_execution(db, client, channel, execution_id, run_id=rid, log=log)
    stop_profiler(profiler, profile_path)
    out.update(send_wall_s=m.wall_s, send_cpu_s=m.cpu_s, requests=s.requests_this_run, sent=s.sent,
               refused=s.refused, ambiguous=s.ambiguous, unresolved=s.unresolved, http_requests=s.http_requests,
               throttled=s.throttled, dispatch_s=s.duration_s, dispatch_rate=s.rate_per_s,
               final_limit=client.limiter.current_limit)
    if commit:
        m = Measured()
        with m.measure():
            r = commit_execution(db, channel, execution_id, run_id=rid, log=log)
        out.update(commit_wall_s=m.wall_s, commit_cpu_s=m.cpu_s, results=dict(r.results), status=r.status)
    out["rate"] = out["requests"] / out["send_wall_s"] if out["send_wall_s"] else float("nan")
    out["cpu_per_request_ms"] = out["send_cpu_s"] / out["requests"] * 1000 if out["requests"] else float("nan")
    out["process_peak_rss_mb"] = peak_rss_self_bytes() / 2**20
    client.close()
    db.dispose()
    return out


# ---- both sides, alternated ----------------------------------------------------------------------
def alternate_bare_and_pipeline(info: SandboxInfo, forms: list[dict], concurrency: int, db_url: str, spec: dict,
                                sandbox_cpu, *, profile_path=None, on_run=None):
    """Bare loop, pipeline (execution 1), pipeline (execution 2), bare loop: drift on a shared machine hits
    both sides alike. Each side runs in its own child process; returns (bare runs, pipeline runs, the
    sandbox's CPU ms per request by side). `profile_path(eid)` names a profile for execution 1; `on_run(side,
    result)` is called after each run (the scenario's progress note)."""
    from twilio_pipeline_bench.measuring import in_child

    n = len(forms)
    bare: list[dict[str, Any]] = []
    pipe: list[dict[str, Any]] = []
    sandbox_ms: dict[str, list[float]] = {"bare": [], "pipeline": []}
    for side, eid in (("bare", None), ("pipeline", 1), ("pipeline", 2), ("bare", None)):
        sandbox_cpu.start()
        if side == "bare":
            res = in_child(bare_loop, info, forms, concurrency)
            if res["statuses"] != {201: n}:
                raise RuntimeError(f"bare loop got statuses {res['statuses']}")
            bare.append(res)
        else:
            res = in_child(pipeline_send, db_url, info, spec, eid,
                           profile_path=profile_path(eid) if profile_path and eid == 1 else None)
            if res["sent"] != n:
                raise RuntimeError(f"pipeline sent {res['sent']} of {n} (results {res.get('results')})")
            pipe.append(res)
        sandbox_ms[side].append(sandbox_cpu.stop() / n * 1000)
        if on_run is not None:
            on_run(side, res)
    return bare, pipe, sandbox_ms
