"""The learned-bounds audit: every test marked ``learning`` over several seeds and thread counts, and the table of
``tests/README.md`` (each learned quantity's worst measured value against its bound).

One command (CPU, about 40 minutes on 2 cores)::

    .venv/bin/python benchmarks/learned_bounds.py --seeds 0 1 2 --threads 1 2

Each (seed, threads) pair is one ``pytest -m learning tests`` process with ``SAHS_TEST_SEED``, ``SAHS_TEST_THREADS``
and ``SAHS_TEST_RECORD`` set (``tests/learned.py``); processes run side by side while their threads fit the
machine's cores (never more threads than cores: spinning OpenMP threads slow a contended process down many times).
A failing bound does not stop the audit: its value is in the table, which marks it.

Outputs: ``<work-dir>/learned.jsonl`` (every measured value), ``<work-dir>/logs/`` (each pytest run's output) and
the Markdown table on stdout (pasted into ``tests/README.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parents[1]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _commit() -> str:
    run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, cwd=ROOT
    )
    return run.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def run_all(
    seeds: List[int], threads: List[int], work: Path, cores: int, extra: List[str]
) -> Dict[Tuple[int, int], int]:
    """One pytest process per (seed, threads); returns each one's exit status."""
    record = work / "learned.jsonl"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = [(s, t) for t in sorted(threads) for s in seeds]
    running: Dict[Tuple[int, int], Tuple[subprocess.Popen, Any, float]] = {}
    status: Dict[Tuple[int, int], int] = {}
    while pending or running:
        busy = sum(t for _, t in running)
        while pending and (not running or busy + pending[0][1] <= cores):
            seed, t = pending.pop(0)
            env = {
                **os.environ,
                "SAHS_TEST_SEED": str(seed),
                "SAHS_TEST_THREADS": str(t),
                "SAHS_TEST_RECORD": str(record),
            }
            log = (logs / f"seed{seed}_threads{t}.log").open("w")
            cmd = [sys.executable, "-m", "pytest", "-q", "-m", "learning", "-p", "no:cacheprovider", "tests", *extra]
            running[(seed, t)] = (
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                log,
                time.time(),
            )
            busy += t
            print(f"started seed {seed}, {t} thread(s)", flush=True)
        time.sleep(2.0)
        for key, (proc, log, start) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                status[key] = proc.returncode
                print(
                    f"seed {key[0]}, {key[1]} thread(s): exit {proc.returncode} after {time.time() - start:.0f} s",
                    flush=True,
                )
                del running[key]
    return status


def table(record: Path) -> str:
    """The Markdown table: per (test, quantity) the bound, each value, the worst, and the margin to the bound."""
    rows: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
    for line in record.read_text().splitlines():
        row = json.loads(line)
        rows[(row["test"], row["name"])].append(row)
    out = ["| test | quantity | bound | measured (seed/threads: value) | worst | margin |", "|---|---|---|---|---|---|"]
    for (test, name), found in sorted(rows.items()):
        op, bound = found[0]["op"], found[0]["bound"]
        # a quantity measured several times in one run (one value per frame) is summarised by its worst
        per_run: Dict[Tuple[int, int], float] = {}
        for r in found:
            key = (r["seed"], r["threads"])
            worse = min if op == ">" else max
            per_run[key] = worse(per_run[key], r["value"]) if key in per_run else r["value"]
        values = [per_run[k] for k in sorted(per_run)]
        worst = min(values) if op == ">" else max(values)
        margin = worst - bound if op == ">" else bound - worst
        cells = ", ".join(f"{s}/{t}: {v:.3g}" for (s, t), v in sorted(per_run.items()))
        flag = "" if margin > 0 else " **FAILS**"
        short = test.split("::")[0].removeprefix("tests/") + "::" + test.split("::")[-1]
        out.append(f"| `{short}` | {name} | {op} {bound:g} | {cells} | {worst:.3g} | {margin:+.3g}{flag} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="SAHS_TEST_SEED values")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="SAHS_TEST_THREADS values")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="threads allowed to run at once")
    parser.add_argument("--work-dir", type=Path, default=ROOT / "benchmarks" / "runs" / "learned_bounds")
    parser.add_argument("--table-only", action="store_true", help="print the table of an earlier run's record")
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --), e.g. -k driver")
    args = parser.parse_args()
    record = args.work_dir / "learned.jsonl"
    if not args.table_only:
        args.work_dir.mkdir(parents=True, exist_ok=True)
        record.unlink(missing_ok=True)
        start = time.time()
        status = run_all(args.seeds, args.threads, args.work_dir, args.cores, args.pytest_args)
        print(f"\n{len(status)} runs in {(time.time() - start) / 60:.1f} min; exit statuses {sorted(status.items())}")
    print(f"\nCommit {_commit()}, {_cpu_name()}, {os.cpu_count()} cores, torch threads per run as listed.\n")
    print(table(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
