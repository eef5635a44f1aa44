"""How the benchmarks measure: CPU and memory of a process, child processes with their own CPU
accounting, profiles, SQL statement timing, and the pipeline's send measured step by step.

Fairness rules the scenarios follow:
* each side of a comparison runs in its own fresh child process (multiprocessing, spawn), and its
  CPU is that process's own rusage (user + system, all threads) read inside it around the measured
  work, so neither side pays for the other's, the parent's or the sandbox's CPU;
* the sandbox runs in its own process too, and its CPU is read apart (psutil on its pid);
* both sides of a comparison run against the same sandbox in the same run, alternated A B B A, and
  the median is compared.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


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
    def measure(self) -> Iterator[Measured]:
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
