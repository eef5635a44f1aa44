"""`make bench`: every benchmark scenario, side by side with its baseline, in one run.

    python -m twilio_pipeline_bench [--only send,cpu,...] [--json PATH] [--quick] [--db sqlite|postgresql|mysql]
                                    [--profile DIR] [--workdir DIR]

Prints one line per figure, `name: value unit (target …, PASS|FAIL)` (`(reference)` for the baselines
and context figures), and writes every figure to the JSON file. A scenario that breaks prints
`name: ERROR …` and the others still run; the exit code is 0 when the suite ran.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from twilio_pipeline_bench.fixtures import mysql_available, postgres_available
from twilio_pipeline_bench.reporting import Context, Report, machine_meta, one_line

# name -> module; the order is the issue's.
SCENARIOS = {
    "send": "send_throughput",
    "cpu": "cpu_per_message",
    "throttle": "throttle_429",
    "status": "status_sync",
    "bulk": "bulk_load",
    "memory": "memory",
    "suppression": "suppression_refresh",
    "deploy": "deployment",
    "celery": "celery_scaleout",
}
ALIASES = {"429": "throttle", "sync": "status", "bulkload": "bulk", "mem": "memory", "refresh": "suppression",
           "send_throughput": "send", "cpu_per_message": "cpu", "throttle_429": "throttle",
           "status_sync": "status", "bulk_load": "bulk", "suppression_refresh": "suppression"}
BUDGET_S = 15 * 60


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m twilio_pipeline_bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="", help=f"comma-separated scenarios: {', '.join(SCENARIOS)} (default: all)")
    p.add_argument("--json", default="bench-results.json", type=Path, help="where to write the figures")
    p.add_argument("--quick", action="store_true", help="smaller sizes: a smoke run of every scenario")
    p.add_argument("--db", choices=("sqlite", "postgresql", "mysql"), default="sqlite",
                   help="database of the send, CPU, 429, status and suppression scenarios (default sqlite: its "
                        "engine runs inside the pipeline process, so its CPU counts too; mysql: the MariaDB/MySQL "
                        "server of TWILIO_PIPELINE_BENCH_MYSQL_URL); bulk load always measures all three")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="write pyinstrument profiles of the pipeline side of the send scenarios here "
                        "(profiling slows them: figures of a profiled run are not comparable)")
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    return p.parse_args(argv)


def selected(only: str) -> list[str]:
    if not only.strip():
        return list(SCENARIOS)
    out = []
    for raw in only.split(","):
        name = raw.strip().lower()
        if not name:
            continue
        name = ALIASES.get(name, name)
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {raw!r}; choose from {', '.join(SCENARIOS)}")
        if name not in out:
            out.append(name)
    return out


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds: children killed, databases dropped, JSON written


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    args = parse_args(argv)
    names = selected(args.only)
    meta = machine_meta()
    meta.update(quick=args.quick, db=args.db, scenarios=names)
    report = Report(args.json.resolve(), meta)
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="twilio-bench-")) if owned else args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(report=report, workdir=workdir, quick=args.quick, db_kind=args.db, profile_dir=args.profile)
    print(f"twilio_pipeline benchmarks: {', '.join(names)}{' (quick)' if args.quick else ''}; "
          f"{meta['cpus']} CPUs, Python {meta['python']}; results -> {report.json_path}", flush=True)
    problem = postgres_available()
    if problem:
        print(f"  # PostgreSQL is not reachable ({problem}): its figures will be errors", flush=True)
    if args.db == "postgresql" and problem:
        print("  # falling back to SQLite for the send scenarios", flush=True)
        ctx.db_kind = "sqlite"
    if args.db == "mysql" and (why_not := mysql_available()):
        print(f"  # MariaDB/MySQL is not reachable ({why_not}): falling back to SQLite for the send scenarios",
              flush=True)
        ctx.db_kind = "sqlite"
    started = time.perf_counter()
    try:
        for name in names:
            report.current = name
            print(f"\n== {name} ({SCENARIOS[name]}) ==", flush=True)
            t0 = time.perf_counter()
            status = "ran"
            try:
                module = importlib.import_module(f"twilio_pipeline_bench.{SCENARIOS[name]}")
                module.run(ctx)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - one scenario never stops the others
                status = "error"
                report.error(name, one_line(exc))
            wall = time.perf_counter() - t0
            info = report.scenarios.setdefault(name, {})
            info.update(wall_s=round(wall, 1), status=status)
            print(f"  # {name}: {wall:.0f} s", flush=True)
            report.write()
    finally:
        total = time.perf_counter() - started
        report.meta["total_wall_s"] = round(total, 1)
        report.write()
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    _summary(report, total)
    return 0


def _summary(report: Report, total: float) -> None:
    figs = report.figures
    targeted = [f for f in figs if f.target is not None and f.error is None]
    errors = [f for f in figs if f.error is not None]
    print("\n== summary ==")
    for name, info in report.scenarios.items():
        verdicts = [f for f in figs if f.scenario == name and f.target is not None and f.error is None]
        fails = [f.name for f in verdicts if not f.passed]
        state = "ERROR" if info.get("status") == "error" else ("FAIL " + ", ".join(fails) if fails else "PASS")
        print(f"{name:12s} {info.get('wall_s', 0):6.0f} s  {state}")
    passed = sum(1 for f in targeted if f.passed)
    print(f"{passed}/{len(targeted)} targets met, {len(errors)} error(s); total {total:.0f} s "
          f"(budget {BUDGET_S // 60} min{', over' if total > BUDGET_S else ''}); figures in {report.json_path}",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
