"""Running the sandbox: lock and load the store, bind, serve until SIGTERM/SIGINT, flush, exit 0."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
from pathlib import Path

from twilio_pipeline.sandbox.app import SandboxApp
from twilio_pipeline.sandbox.config import SandboxConfig
from twilio_pipeline.sandbox.http import Connection
from twilio_pipeline.sandbox.store import Store, StoreLocked

log = logging.getLogger("twilio_pipeline.sandbox")

SERVER_FILE = "server.json"  # beside the store's data: pid, host and port of the live server
TICK_S = 0.25


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


async def serve(config: SandboxConfig) -> int:
    """Serve until a stop signal; 0 on a clean stop, 2 when the store is taken or the port is busy."""
    store: Store | None = None
    if config.store is not None:
        store = Store(config.store)
        try:
            store.acquire()
        except StoreLocked as exc:
            log.error("sandbox: %s", exc)
            return 2
    app = SandboxApp(config, store)
    if store is not None:
        app.model.load(store.records())
        store.compact(app.model.snapshot_records())
        store.start()
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(
            lambda: Connection(app.handle, app.connections),
            config.host, config.port, backlog=2048, reuse_address=True,
        )
    except OSError as exc:
        log.error("sandbox: cannot listen on %s:%s: %s", config.host, config.port, exc.strerror or exc)
        if store is not None:
            store.close()
        return 2
    # Stop signals are handled before the port is announced: whoever waits for the port file may signal
    # the moment it appears, and must get a clean stop, not the default death.
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    port = server.sockets[0].getsockname()[1]
    base_url = f"http://{config.host}:{port}"
    server_file = store.path / SERVER_FILE if store is not None else None
    if server_file is not None:
        _write_atomic(server_file, json.dumps({
            "pid": os.getpid(), "host": config.host, "port": port, "base_url": base_url,
            "account_sid": config.account_sid,
        }))
    if config.port_file is not None:
        _write_atomic(Path(config.port_file), f"{port}\n")
    log.info(
        "sandbox: listening on %s (account %s, store %s, status delay %.0f ms, latency %.0f ms, "
        "max concurrency %d, seed %d)",
        base_url, config.account_sid, store.path if store else "none: state kept in memory only",
        config.status_delay_s * 1000, config.latency_s * 1000, config.max_concurrency, config.seed,
    )

    async def tick() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            app.model.settle()
            app.flush_log()

    ticker = asyncio.ensure_future(tick())
    try:
        await stop.wait()
    finally:
        ticker.cancel()
        server.close()
        for conn in list(app.connections):
            conn.abort()
        await server.wait_closed()
        app.flush_log()
        if store is not None:
            store.close()
        if server_file is not None:
            _remove_if_ours(server_file)
        log.info("sandbox: stopped; state flushed")
    return 0


def _remove_if_ours(server_file: Path) -> None:
    try:
        if json.loads(server_file.read_text(encoding="utf-8")).get("pid") == os.getpid():
            server_file.unlink()
    except (OSError, ValueError):
        pass
