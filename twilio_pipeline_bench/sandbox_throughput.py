"""Benchmark: how many requests the sandbox takes, with the load client in another process.

    python -m twilio_pipeline_bench.sandbox_throughput

1. creates per second at 0 ms latency (keep-alive connections, each request a new recipient);
   target >= 1,000/s on a 2-core machine;
2. the latency flag held under load: 50 requests in flight at --latency-ms 100 should give close
   to 50 / 0.1 s = 500 requests/s (target >= 450), i.e. the latency never serialises requests.

The client is a small asyncio HTTP/1.1 client so that the measure is the server's, not a heavy
client's; a requests.Session thread pool (what the pipeline uses) is measured too, for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

from twilio_pipeline.sandbox.process import SandboxProcess

CREATE_TARGET = 1000.0
LATENCY_TARGET = 450.0


class _Connection:
    def __init__(self, reader, writer):
        self.reader = reader
        self.writer = writer

    async def request(self, raw: bytes) -> int:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return status


def _create_request(host: str, account_sid: str, auth: str, n: int) -> bytes:
    body = urlencode({"To": f"+1555{n % 10_000_000:07d}", "From": "+15005550006",
                      "Body": "Benchmark offer: 20% off today only. Reply STOP to opt out."}).encode()
    head = (f"POST /2010-04-01/Accounts/{account_sid}/Messages.json HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Basic {auth}\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


async def _load(sandbox: SandboxProcess, connections: int, duration_s: float, warmup_s: float) -> tuple[float, dict]:
    """Requests per second over `duration_s` after a warm-up, with `connections` in flight."""
    host = f"{sandbox.host}:{sandbox.port}"
    auth = base64.b64encode(f"{sandbox.account_sid}:{sandbox.auth_token}".encode()).decode()
    conns = [_Connection(*await asyncio.open_connection(sandbox.host, sandbox.port)) for _ in range(connections)]
    counter = iter(range(10**9))
    statuses: dict[int, int] = {}
    done = 0
    measuring = False
    stop_at = time.perf_counter() + warmup_s + duration_s

    async def worker(conn: _Connection) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            status = await conn.request(_create_request(host, sandbox.account_sid, auth, next(counter)))
            if measuring:
                done += 1
                statuses[status] = statuses.get(status, 0) + 1

    async def clock() -> float:
        nonlocal measuring
        await asyncio.sleep(warmup_s)
        measuring = True
        started = time.perf_counter()
        await asyncio.sleep(duration_s)
        measuring = False
        return time.perf_counter() - started

    tasks = [asyncio.ensure_future(worker(c)) for c in conns]
    elapsed = await clock()
    await asyncio.gather(*tasks)
    for c in conns:
        c.writer.close()
    return done / elapsed, statuses


def _requests_pool(sandbox: SandboxProcess, threads: int, duration_s: float) -> float:
    """The same creates through requests.Session threads (the pipeline's kind of client)."""
    import requests

    url = f"{sandbox.base_url}/2010-04-01/Accounts/{sandbox.account_sid}/Messages.json"
    stop_at = time.perf_counter() + duration_s
    counts = [0] * threads

    def run(i: int) -> None:
        session = requests.Session()
        session.auth = (sandbox.account_sid, sandbox.auth_token)
        n = i * 1_000_000
        while time.perf_counter() < stop_at:
            n += 1
            session.post(url, data={"To": f"+1556{n % 10_000_000:07d}", "From": "+15005550006", "Body": "hi"})
            counts[i] += 1

    started = time.perf_counter()
    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - started)


def _process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=16, help="connections for the 0 ms create test")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sandbox-bench-") as tmp:
        print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} before the run "
              "(other processes' load lowers the figures)", flush=True)
        with SandboxProcess(Path(tmp) / "zero", status_delay_ms=1000) as sandbox:
            cpu_before = _process_cpu_s(sandbox.pid)
            rate, statuses = asyncio.run(_load(sandbox, args.connections, args.duration_s, 1.0))
            cpu_after = _process_cpu_s(sandbox.pid)
            verdict = "PASS" if rate >= CREATE_TARGET and set(statuses) == {201} else "FAIL"
            print(f"sandbox_creates_per_s: {rate:.0f} req/s at 0 ms, {args.connections} connections "
                  f"(target >= {CREATE_TARGET:.0f}, {verdict}; statuses {statuses})", flush=True)
            if cpu_before is not None and cpu_after is not None:
                # the whole run (warm-up included) over the requests counted: an upper bound
                total = sum(statuses.values()) * (args.duration_s + 1.0) / args.duration_s
                per_request = (cpu_after - cpu_before) / total
                print(f"sandbox_cpu_per_create: {per_request * 1e6:.0f} us of server CPU per create "
                      f"(about {1 / per_request:.0f} creates/s per core if the server had one to itself)",
                      flush=True)
            ref = _requests_pool(sandbox, 8, args.duration_s)
            print(f"sandbox_creates_per_s_requests_client: {ref:.0f} req/s at 0 ms, 8 requests.Session "
                  "threads (reference: bounded by the client's CPU)", flush=True)
        with SandboxProcess(Path(tmp) / "latency", latency_ms=100, max_concurrency=100) as sandbox:
            rate, statuses = asyncio.run(_load(sandbox, 50, args.duration_s, 1.0))
            verdict = "PASS" if rate >= LATENCY_TARGET and set(statuses) == {201} else "FAIL"
            print(f"sandbox_latency_held: {rate:.0f} req/s at 50 in flight, 100 ms "
                  f"(target >= {LATENCY_TARGET:.0f}, {verdict}; statuses {statuses})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
