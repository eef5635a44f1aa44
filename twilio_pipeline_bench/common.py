"""What every benchmark scenario shares: figures (printed and kept for the JSON file), fresh databases,
child processes with their own CPU accounting, the sandbox, channels and clients, and the bare loop.

A figure is printed as one line, `name: value unit (target …, PASS|FAIL)`; a figure without a target
(a reference, such as the bare loop's own rate) prints `(reference)` instead. Every figure also goes
to the JSON file `--json` names, which is rewritten after each scenario so a crash keeps what ran.

Fairness rules the scenarios follow:
* each side of a comparison runs in its own fresh child process (multiprocessing, spawn), and its
  CPU is that process's own rusage (user + system, all threads) read inside it around the measured
  work, so neither side pays for the other's, the parent's or the sandbox's CPU;
* the sandbox runs in its own process too, and its CPU is read apart (psutil on its pid);
* both sides of a comparison run against the same sandbox in the same run, alternated A B B A, and
  the median is compared (these machines are shared: ratios, not absolute times).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twilio_pipeline.logs import ListLog

SENDER = "+15005550006"
BODY_TEMPLATE = "Hi {{FirstName}}, your offer: 20% off today only at example.com/o/123. Reply STOP to opt out."
FIRST_NAMES = ("Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Tim")
PG_ADMIN_URL = os.environ.get("TWILIO_PIPELINE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_ADMIN_URL = os.environ.get("TWILIO_PIPELINE_BENCH_MYSQL_URL",
                                 "mysql+pymysql://root@127.0.0.1:3306/mysql?charset=utf8mb4")


# ---- figures ---------------------------------------------------------------------------------------
@dataclass
class Figure:
    scenario: str
    name: str
    value: float | int | str | None
    unit: str = ""
    target: str | None = None
    passed: bool | None = None
    note: str | None = None
    error: str | None = None

    def line(self) -> str:
        if self.error is not None:
            return f"{self.name}: ERROR {self.error}"
        value = _fmt(self.value)
        unit = f" {self.unit}" if self.unit else ""
        if self.target is None:
            tail = "(reference)"
        else:
            tail = f"(target {self.target}, {'PASS' if self.passed else 'FAIL'})"
        note = f"  [{self.note}]" if self.note else ""
        return f"{self.name}: {value}{unit} {tail}{note}"


def _fmt(value) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", "_") if abs(value) >= 100_000 else str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.2f}"
        return f"{value:.4g}"
    return str(value)


class Report:
    """Collects figures and scenario timings; prints as it goes; writes the JSON file."""

    def __init__(self, json_path: Path, meta: dict[str, Any]):
        self.json_path = json_path
        self.meta = meta
        self.figures: list[Figure] = []
        self.scenarios: dict[str, dict[str, Any]] = {}
        self.current = ""
        self._lock = threading.Lock()

    def figure(self, name: str, value, unit: str = "", *, target: str | None = None,
               passed: bool | None = None, note: str | None = None) -> Figure:
        fig = Figure(self.current, name, value, unit, target, passed, note)
        with self._lock:
            self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig

    def reference(self, name: str, value, unit: str = "", note: str | None = None) -> Figure:
        return self.figure(name, value, unit, note=note)

    def error(self, name: str, exc: BaseException | str) -> Figure:
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        text = " ".join(str(text).split())[:300]
        fig = Figure(self.current, name, None, error=text)
        with self._lock:
            self.figures.append(fig)
        print(fig.line(), flush=True)
        return fig

    def note(self, text: str) -> None:
        print(f"  # {text}", flush=True)
        self.scenarios.setdefault(self.current, {}).setdefault("notes", []).append(text)

    def write(self) -> None:
        data = {
            "meta": self.meta,
            "scenarios": self.scenarios,
            "figures": [fig.__dict__ for fig in self.figures],
            "summary": {
                "pass": sum(1 for f in self.figures if f.passed is True),
                "fail": sum(1 for f in self.figures if f.passed is False and f.error is None),
                "error": sum(1 for f in self.figures if f.error is not None),
            },
        }
        tmp = self.json_path.with_suffix(self.json_path.suffix + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, default=str))
        tmp.replace(self.json_path)


def ratio(a: float, b: float) -> float:
    return a / b if b else float("inf") if a else float("nan")


def median(values: Iterable[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def machine_meta() -> dict[str, Any]:
    try:
        import psutil

        mem = psutil.virtual_memory().total
    except Exception:  # noqa: BLE001
        mem = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
            "memory_bytes": mem, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


# ---- CPU and memory --------------------------------------------------------------------------------
def cpu_self() -> float:
    """User + system CPU seconds of this process so far (every thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_self_bytes() -> int:
    """Peak resident set size of this process (Linux reports ru_maxrss in KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * (1 if sys.platform == "darwin" else 1024)


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of another process (the sandbox): psutil, else /proc (Linux)."""
    try:
        import psutil
    except ImportError:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def rss_self_bytes() -> int:
    """Current resident set size of this process: psutil, else /proc (Linux)."""
    try:
        import psutil
    except ImportError:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return psutil.Process().memory_info().rss


@dataclass
class Measured:
    wall_s: float = 0.0
    cpu_s: float = 0.0

    @contextmanager
    def measure(self) -> Iterator["Measured"]:
        w, c = time.perf_counter(), cpu_self()
        try:
            yield self
        finally:
            self.wall_s += time.perf_counter() - w
            self.cpu_s += cpu_self() - c


class SandboxCPU:
    """CPU the sandbox process spends between start() and stop() (apart from everyone else's)."""

    def __init__(self, sandbox):
        self.pid = sandbox.pid
        self.spent = 0.0
        self._t0 = None

    def start(self) -> None:
        self._t0 = process_cpu(self.pid)

    def stop(self) -> float:
        spent = process_cpu(self.pid) - self._t0
        self.spent += spent
        return spent


# ---- child processes -------------------------------------------------------------------------------
_SPAWN = multiprocessing.get_context("spawn")


class ChildTimeout(TimeoutError):
    """The child did not finish in time; it was killed."""


class ChildFailed(RuntimeError):
    """The child raised (its traceback is kept in `remote_traceback`) or died."""

    def __init__(self, text: str, remote_traceback: str = ""):
        super().__init__(text)
        self.remote_traceback = remote_traceback


def _orphan_watch(parent: int) -> None:
    """A child whose parent died (killed benchmark) exits instead of running on."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(3)


def _child_main(conn, fn, args, kwargs, parent: int) -> None:
    threading.Thread(target=_orphan_watch, args=(parent,), name="orphan-watch", daemon=True).start()
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        tb = traceback.extract_tb(exc.__traceback__)
        where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        first = str(exc).splitlines()[0] if str(exc) else ""
        conn.send(("error", f"{type(exc).__name__}: {first}{where}", traceback.format_exc()))
    else:
        conn.send(("ok", result, ""))
    finally:
        conn.close()


def in_child(fn: Callable, *args, timeout_s: float | None = None, **kwargs):
    """Run `fn(*args, **kwargs)` in a fresh spawned process and return its result (re-raising its error).

    A fresh process per call: its rusage and peak RSS are its own, and imports are paid before the
    measured work starts (the function measures itself). Past `timeout_s` the child is killed and
    ChildTimeout raised."""
    recv, send = _SPAWN.Pipe(duplex=False)
    proc = _SPAWN.Process(target=_child_main, args=(send, fn, args, kwargs, os.getpid()), name=f"bench-{fn.__name__}")
    proc.start()
    send.close()
    try:
        if not recv.poll(timeout_s):
            raise ChildTimeout(f"{fn.__name__} did not finish within {timeout_s:.0f} s")
        try:
            status, payload, tb = recv.recv()
        except EOFError:
            proc.join(5)
            raise ChildFailed(f"{fn.__name__}: the child process died (exit code {proc.exitcode})") from None
        proc.join()
    finally:
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        recv.close()
    if status == "error":
        raise ChildFailed(payload, tb)
    return payload


# ---- databases -------------------------------------------------------------------------------------
@contextmanager
def fresh_database(kind: str, workdir: Path, label: str) -> Iterator[str]:
    """A new empty database URL (a SQLite file under `workdir`, or a new PostgreSQL database that is
    dropped afterwards)."""
    if kind == "sqlite":
        path = workdir / f"{label}-{uuid.uuid4().hex[:6]}.sqlite"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm", "-journal"):
                Path(str(path) + suffix).unlink(missing_ok=True)
        return
    if kind == "mysql":
        yield from _fresh_mysql(label)
        return
    if kind != "postgresql":
        raise ValueError(f"unknown database kind {kind!r}")
    import sqlalchemy as sa

    name = f"tp_bench_{label}_{uuid.uuid4().hex[:8]}".lower()
    admin_url = sa.engine.make_url(PG_ADMIN_URL)
    admin = sa.create_engine(admin_url.set(drivername="postgresql+psycopg2"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            # A killed benchmark must not leave a query running for hours: sessions of this database
            # notice a vanished client within a second, and no statement runs past 10 minutes.
            for setting in ("client_connection_check_interval = 1000", "statement_timeout = 600000"):
                try:
                    conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET {setting}')
                except sa.exc.DBAPIError:
                    pass  # an older server without the setting
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _fresh_mysql(label: str) -> Iterator[str]:
    """A new MariaDB/MySQL database (server default collation: the tables set their own), dropped after."""
    import sqlalchemy as sa

    name = f"tp_bench_{label}_{uuid.uuid4().hex[:8]}".lower()
    admin_url = sa.engine.make_url(MYSQL_ADMIN_URL)
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")
    finally:
        admin.dispose()


def mysql_available() -> str | None:
    """None when the MariaDB/MySQL server answers (and its driver is installed), else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(sa.engine.make_url(MYSQL_ADMIN_URL))
        try:
            with engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        finally:
            engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure is a reason to skip
        return one_line(exc)
    return None


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not."""
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql+psycopg2"))
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


# ---- sandbox, channels, clients ---------------------------------------------------------------------
@dataclass(frozen=True)
class SandboxInfo:
    """What a child process needs to reach a sandbox (picklable)."""

    base_url: str
    account_sid: str
    auth_token: str
    pid: int

    @classmethod
    def of(cls, sandbox) -> "SandboxInfo":
        return cls(sandbox.base_url, sandbox.account_sid, sandbox.auth_token, sandbox.pid)

    @property
    def messages_url(self) -> str:
        return f"{self.base_url}/2010-04-01/Accounts/{self.account_sid}/Messages.json"


def start_sandbox(workdir: Path, label: str, **flags):
    """A sandbox child process with its own store; no access log (it would cost the sandbox CPU)."""
    from twilio_pipeline.sandbox.process import SandboxProcess

    flags.setdefault("access_log", False)
    flags.setdefault("status_delay_ms", 1000)
    return SandboxProcess(workdir / f"sandbox-{label}-{uuid.uuid4().hex[:6]}", **flags).start()


def channel_spec(name: str = "Bench SMS Channel", **overrides) -> dict:
    spec = {"name": name, "from_number": SENDER, "max_concurrency": 20, "connectivity_test": False}
    spec.update(overrides)
    return spec


def make_channel(spec: dict):
    from twilio_pipeline.channels import parse_channels

    return parse_channels({"channels": [spec]}, "benchmark channel").channels[0]


def make_client(info: SandboxInfo, channel):
    from twilio_pipeline.twilio import Endpoints, TwilioCredentials
    from twilio_pipeline.twilio.channel_client import client_for_channel

    creds = TwilioCredentials(info.account_sid, info.auth_token)
    return client_for_channel(creds, channel, Endpoints(info.base_url, info.base_url, info.base_url))


def run_id(prefix: str = "bench") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# ---- audiences -------------------------------------------------------------------------------------
def clean_number(i: int, area: int = 415) -> str:
    """A unique, valid North American number for index i (< 8,000,000), never a Twilio magic number."""
    return f"+1{area}{2_000_000 + i:07d}"


def clean_audience(n: int, start_id: int = 1, area: int = 415) -> Iterator[tuple[int, str, dict]]:
    """n valid unique recipients (every one becomes a request), with the FirstName merge field."""
    for i in range(n):
        rid = start_id + i
        yield rid, clean_number(i, area), {"FirstName": FIRST_NAMES[rid % len(FIRST_NAMES)]}


def create_clean_execution(db_url: str, execution_id: int, channel_name: str, n: int, area: int = 415) -> int:
    from twilio_pipeline.audience import create_execution
    from twilio_pipeline.db import Database

    db = Database(db_url)
    try:
        return create_execution(db, execution_id, channel_name, BODY_TEMPLATE, clean_audience(n, area=area))
    finally:
        db.dispose()


def bare_forms(n: int, area: int = 650) -> list[dict[str, str]]:
    """The form the pipeline posts for a recipient (From, To, Body, ValidityPeriod), n distinct ones."""
    from twilio_pipeline.rules.render import render_body

    forms = []
    for i in range(n):
        body = render_body(BODY_TEMPLATE, {"FirstName": FIRST_NAMES[(i + 1) % len(FIRST_NAMES)]}, None).body
        forms.append({"From": SENDER, "To": clean_number(i, area), "Body": body, "ValidityPeriod": "36000"})
    return forms


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


def _py_spy() -> str | None:
    found = shutil.which("py-spy")
    if found:
        return found
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else None


def start_profiler(path: str | None):
    """Profile this process until `stop_profiler`: py-spy (every thread, samples holding the GIL, i.e.
    Python CPU) when installed, else pyinstrument (main thread only)."""
    if not path:
        return None
    spy = _py_spy()
    if spy:
        raw = path + ".raw"
        proc = subprocess.Popen([spy, "record", "--pid", str(os.getpid()), "--gil", "--threads", "--nonblocking",
                                 "-r", "200", "-f", "raw", "-o", raw],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached
        return ("py-spy", proc, raw)
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    return ("pyinstrument", profiler, None)


def stop_profiler(profiler, path: str | None) -> None:
    if profiler is None or not path:
        return
    kind, obj, raw = profiler
    if kind == "py-spy":
        obj.send_signal(signal.SIGINT)
        try:
            obj.wait(60)
        except subprocess.TimeoutExpired:
            obj.kill()
        if Path(raw).exists():
            Path(path).write_text(profile_summary(raw))
        return
    obj.stop()
    Path(path).write_text(obj.output_text(unicode=False, color=False, show_all=False, timeline=False))


def profile_summary(raw_path: str, top: int = 45) -> str:
    """A py-spy raw (collapsed stacks) file as text: share of samples per thread, inclusive and self."""
    import collections
    import re

    threads: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        threads[re.sub(r"\(\d+\)|0x[0-9a-f]+", "", frames[0]).strip()] += n
        seen = set()
        for frame in frames[1:]:
            key = re.sub(r":\d+\)", ")", frame)
            if key not in seen:
                inclusive[key] += n
                seen.add(key)
        own[re.sub(r":\d+\)", ")", frames[-1])] += n
    if not total:
        return "no samples\n"
    lines = [f"py-spy, samples holding the GIL (Python CPU): {total}", "-- by thread"]
    lines += [f"{v / total * 100:5.1f}% {k}" for k, v in threads.most_common(12)]
    lines.append("-- inclusive")
    lines += [f"{v / total * 100:5.1f}% {k[:160]}" for k, v in inclusive.most_common(top)
              if not k.startswith(("Thread._bootstrap", "Thread.run"))]
    lines.append("-- self")
    lines += [f"{v / total * 100:5.1f}% {k[:160]}" for k, v in own.most_common(25)]
    return "\n".join(lines) + "\n"


def one_line(exc: BaseException) -> str:
    if isinstance(exc, (ChildFailed, ChildTimeout)):
        return str(exc)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}{where}"


# ---- scenario context ------------------------------------------------------------------------------
@dataclass
class Context:
    """What `__main__` hands each scenario's `run(ctx)`."""

    report: Report
    workdir: Path
    quick: bool = False
    db_kind: str = "sqlite"
    profile_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def size(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def profile_path(self, label: str) -> str | None:
        if self.profile_dir is None:
            return None
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return str(self.profile_dir / f"{label}.txt")

    def sized(self, what: str, used: int, issue: int) -> None:
        """Say so when a size differs from the issue's."""
        if used != issue:
            self.report.note(f"{what}: {used:,} instead of the issue's {issue:,}"
                             + (" (--quick)" if self.quick else ""))


class SqlTimer:
    """Wall time per SQL statement issued through `engine` (not COPY, which bypasses SQLAlchemy)."""

    def __init__(self, engine):
        import sqlalchemy as sa

        self.times: list[tuple[float, str]] = []
        self._starts: dict[int, float] = {}

        @sa.event.listens_for(engine, "before_cursor_execute")
        def _before(conn, cursor, statement, parameters, context, executemany):
            self._starts[id(cursor)] = time.perf_counter()

        @sa.event.listens_for(engine, "after_cursor_execute")
        def _after(conn, cursor, statement, parameters, context, executemany):
            t0 = self._starts.pop(id(cursor), None)
            if t0 is not None:
                self.times.append((time.perf_counter() - t0, " ".join(statement.split())))

    def text(self, top: int = 12) -> str:
        total = sum(t for t, _ in self.times)
        lines = [f"SQL statements: {len(self.times)}, {total:.2f} s in all; slowest:"]
        for t, stmt in sorted(self.times, reverse=True)[:top]:
            lines.append(f"{t:8.2f} s  {stmt[:400]}")
        return "\n".join(lines) + "\n"
