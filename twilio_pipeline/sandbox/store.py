"""Persistence of the sandbox's state: an exclusive lock, a snapshot and a write-behind journal.

Requests never wait for the disk: every change is queued as a record and a writer thread appends
the queue to `journal.jsonl` at least every quarter second (and at shutdown), so a send and a sync
in other processes, or a restarted sandbox, see the same messages. On start the snapshot and the
journal are replayed and compacted into a new snapshot. Records are idempotent (keyed by SID, or
absolute values), so a crash between the snapshot's rename and the journal's truncation is harmless.

The store directory is locked (flock) for the life of the server: two sandboxes never share it.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

FLUSH_INTERVAL_S = 0.25
_RESET = object()


class StoreLocked(Exception):
    """Another live sandbox holds the store."""


class Store:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.snapshot_path = self.path / "snapshot.jsonl"
        self.journal_path = self.path / "journal.jsonl"
        self.lock_path = self.path / "sandbox.lock"
        self._lock_fd: int | None = None
        self._queue: deque = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._journal = None
        self._io_lock = threading.Lock()

    # -- lock ----------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the store's exclusive lock or raise StoreLocked naming the holder's pid."""
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"store {self.path} is in use by another sandbox (pid {holder}); "
                "stop it or give this one another --store"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def release(self) -> None:
        if self._lock_fd is not None:
            try:
                os.ftruncate(self._lock_fd, 0)
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            finally:
                os.close(self._lock_fd)
                self._lock_fd = None

    # -- load and compact ----------------------------------------------------------------------
    def records(self) -> Iterator[dict]:
        """Snapshot records, then journal records; a torn last line (crash mid-write) is skipped."""
        for path in (self.snapshot_path, self.journal_path):
            if not path.exists():
                continue
            with path.open("r", encoding="utf-8") as fh:
                for line in fh:
                    line = line.strip()
                    if not line:
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    def compact(self, records: Iterable[dict]) -> None:
        """Write the whole state as the new snapshot and start an empty journal."""
        tmp = self.snapshot_path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, separators=(",", ":")))
                fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.snapshot_path)
        with self.journal_path.open("w", encoding="utf-8"):
            pass

    # -- write-behind journal ------------------------------------------------------------------
    def append(self, record: dict) -> None:
        """Queue a record; called from the event loop, never blocks on the disk."""
        if record.get("k") == "reset":
            self._queue.append(_RESET)
        else:
            self._queue.append(record)

    def start(self) -> None:
        self._journal = self.journal_path.open("a", encoding="utf-8")
        self._thread = threading.Thread(target=self._run, name="sandbox-store", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._stop.wait(FLUSH_INTERVAL_S)
            self.flush()

    def flush(self) -> None:
        """Write every queued record to the journal and make it durable."""
        with self._io_lock:
            if self._journal is None or not self._queue:
                return
            queue = self._queue
            lines: list[str] = []
            while queue:
                item = queue.popleft()
                if item is _RESET:
                    lines.clear()
                    self._journal.close()
                    self.snapshot_path.unlink(missing_ok=True)
                    self._journal = self.journal_path.open("w", encoding="utf-8")
                    continue
                lines.append(json.dumps(item, separators=(",", ":")))
            if lines:
                self._journal.write("\n".join(lines))
                self._journal.write("\n")
            self._journal.flush()
            os.fsync(self._journal.fileno())

    def close(self) -> None:
        """Stop the writer, flush what is left and release the lock."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.release()
