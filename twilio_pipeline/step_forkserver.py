"""One forkserver per code server, shared by every run it starts: step processes forked from a process
that imported Dagster and the code location once, when the code server started.

Dagster's multiprocess executor starts a forkserver per run (twilio_pipeline.worker preloads it with
`step_preload`), so every run pays a full import of Dagster and the code location twice: once in the run
worker the code server spawns, once in that run's forkserver. On a small host a burst of runs spent about
a third of its CPU importing in those forkservers. `deploy/code_server.py` therefore starts one preloaded
forkserver before it becomes the code server (`start`), and every run worker of that code server asks it
for its step processes (`attach`), speaking multiprocessing's own forkserver protocol. Each step still runs
in its own process, with the run worker's sys.path and working directory, and Dagster still starts, watches
and terminates it.

The shared server is used only when it is certainly the same code: the code server exports the server's
pid and a fingerprint of the code it preloaded (the package's files and Dagster's version), and a run worker
whose own fingerprint differs (the code was changed and reloaded since) or whose server is gone starts its
own forkserver as before, and says why. No Dagster here: the executor in worker.py calls `attach`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
import time
from importlib import metadata
from multiprocessing import forkserver, resource_tracker, spawn, util
from pathlib import Path

from twilio_pipeline.processes import pid_alive

ADDRESS_ENV = "TWILIO_PIPELINE_STEP_FORKSERVER"
PID_ENV = "TWILIO_PIPELINE_STEP_FORKSERVER_PID"
CODE_ENV = "TWILIO_PIPELINE_STEP_FORKSERVER_CODE"
PACKAGE_DIR = Path(__file__).resolve().parent
STEP_PRELOAD = "twilio_pipeline.step_preload"
# What a run's own forkserver preloads too (worker.DEFAULT_START_METHOD, behind Dagster's executor module).
PRELOAD = ("dagster._core.executor.multiprocess", STEP_PRELOAD)
DIR_PREFIX = "twilio-pipeline-steps-"
PID_FILE = "server.pid"
# A directory with no pid recorded yet is a server being started (it records its pid within
# milliseconds): only one older than this is an orphan.
UNSTARTED_GRACE_S = 60


def code_fingerprint() -> str:
    """What the step processes would run: every source file of the package (path, size, mtime) and the
    installed Dagster. Equal fingerprints mean a forkserver preloaded the code a run worker imported."""
    digest = hashlib.blake2b(digest_size=16)
    with contextlib.suppress(metadata.PackageNotFoundError):
        digest.update(metadata.version("dagster").encode())
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        st = path.stat()
        digest.update(f"{path.relative_to(PACKAGE_DIR)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def start(preload: list[str]) -> dict[str, str]:
    """Start the shared forkserver, preloading `preload`; returns the variables a code server started next
    (by exec, which keeps the server alive: it stops when the process holding its "alive" pipe ends) passes
    on to its run workers. The socket sits in a directory only this user can enter."""
    remove_orphan_directories()
    directory = tempfile.mkdtemp(prefix=DIR_PREFIX)
    address = os.path.join(directory, "forkserver.sock")
    fingerprint = code_fingerprint()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(address)
        os.chmod(address, 0o600)
        listener.listen()
        alive_r, alive_w = os.pipe()
        try:
            cmd = (f"import sys; sys.path[:] = {sys.path!r}; from twilio_pipeline.step_forkserver import _serve; "
                   f"_serve({directory!r}, {listener.fileno()}, {alive_r}, {list(preload)!r})")
            exe = spawn.get_executable()
            pid = util.spawnv_passfds(exe, [exe, *util._args_from_interpreter_flags(), "-c", cmd],
                                      [listener.fileno(), alive_r])
        except BaseException:
            os.close(alive_w)
            raise
        finally:
            os.close(alive_r)
    os.set_inheritable(alive_w, True)
    Path(directory, PID_FILE).write_text(str(pid))
    return {ADDRESS_ENV: address, PID_ENV: str(pid), CODE_ENV: fingerprint}


def _serve(directory: str, listener_fd: int, alive_r: int, preload: list[str]) -> None:
    """The shared forkserver's process: multiprocessing's forkserver loop, which also ends on SIGTERM.

    It removes its socket's directory when it stops with the code server (its forked children leave
    through os._exit and never run this), and when a SIGTERM stops it with the code server's process
    group (systemd, honcho): it then exits as when the code server is gone. Step processes get SIGTERM's
    default action back as they are forked, as from a forkserver of a run."""
    atexit.register(shutil.rmtree, directory, True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    os.register_at_fork(after_in_child=lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL))
    forkserver.main(listener_fd, alive_r, preload)


def remove_orphan_directories(parent: str | None = None) -> list[str]:
    """Remove the socket directories that earlier shared forkservers of this user left behind, and return
    them. A forkserver killed by SIGKILL (systemd's kill after its stop timeout, `kill -9`, the OOM killer)
    cannot remove its own; the next code server to start does: those whose recorded server is gone, and
    those older than a minute that never recorded one."""
    parent = parent or tempfile.gettempdir()
    removed = []
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            if not entry.name.startswith(DIR_PREFIX):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:  # removed meanwhile
                continue
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            try:
                recorded = Path(entry.path, PID_FILE).read_text().strip()
            except FileNotFoundError:
                recorded = None
            except OSError:
                continue
            if recorded is None:
                orphan = time.time() - st.st_mtime > UNSTARTED_GRACE_S
            else:
                orphan = not recorded.isdigit() or not pid_alive(int(recorded))
            if orphan:
                shutil.rmtree(entry.path, ignore_errors=True)
                removed.append(entry.path)
    return removed


class _SharedForkServer(forkserver.ForkServer):
    """multiprocessing's forkserver client, pointed at a server this process did not start."""

    def __init__(self, address: str, pid: int):
        super().__init__()
        self._forkserver_address = address
        self._forkserver_pid = pid
        # Each child gets this as the "alive" fd of a forkserver of its own, which it never starts.
        self._forkserver_alive_fd = os.open(os.devnull, os.O_RDONLY)

    def ensure_running(self) -> None:
        resource_tracker.ensure_running()

    def set_forkserver_preload(self, modules_names) -> None:
        """The shared server preloaded its modules when the code server started."""


def why_not_shared(env: dict[str, str] | None = None) -> str | None:
    """Why this process cannot use the code server's forkserver, or None when it can."""
    env = os.environ if env is None else env
    address, pid, code = env.get(ADDRESS_ENV), env.get(PID_ENV), env.get(CODE_ENV)
    if not address:
        return "no shared forkserver (the code server was not started by deploy/code_server.py)"
    if not pid or not pid.isdigit() or not pid_alive(int(pid)) or not os.path.exists(address):
        return f"the code server's forkserver (pid {pid}) is not running"
    if code != code_fingerprint():
        return "the code changed since the code server's forkserver preloaded it"
    return None


def _use(server: forkserver.ForkServer) -> None:
    """Route this process's forkserver start method to `server` (multiprocessing reads these module names
    at each process start)."""
    forkserver._forkserver = server
    forkserver.ensure_running = server.ensure_running
    forkserver.connect_to_new_process = server.connect_to_new_process
    forkserver.set_forkserver_preload = server.set_forkserver_preload


_OWN = forkserver._forkserver  # this process's own forkserver client, as multiprocessing made it


def attach(env: dict[str, str] | None = None) -> str:
    """Make this process's forkserver start method use the code server's shared forkserver when it can,
    else its own (also after an earlier run of this process used a shared one that is gone now); returns
    one line saying which forkserver the steps come from."""
    env = os.environ if env is None else env
    reason = why_not_shared(env)
    if reason is not None:
        _use(_OWN)
        return f"steps forked from a forkserver of this run: {reason}"
    current = forkserver._forkserver
    if not (isinstance(current, _SharedForkServer) and current._forkserver_address == env[ADDRESS_ENV]):
        _use(_SharedForkServer(env[ADDRESS_ENV], int(env[PID_ENV])))
    return f"steps forked from the code server's preloaded forkserver (pid {env[PID_ENV]})"
