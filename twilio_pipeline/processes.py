"""Is a process still there? Leases, staging tables, stale runs, the embedded sandbox and the step
forkserver all ask."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """True while `pid` runs on this host; a zombie (exited, not yet reaped) counts as gone."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def pid_started_after(pid: int, moment: datetime, slack: timedelta = timedelta(minutes=5)) -> bool:
    """True when the process now holding `pid` started after `moment` (naive UTC) + `slack`: the pid was
    reused, so whatever recorded it at `moment` is gone. False when unknown (no /proc). The slack absorbs
    the skew between this host's clock and the database's, which usually stamped `moment`."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[19])  # starttime, field 22 of proc(5); the list starts at field 3
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        started = datetime.fromtimestamp(btime + ticks / os.sysconf("SC_CLK_TCK"), UTC)
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started.replace(tzinfo=None) > moment + slack
