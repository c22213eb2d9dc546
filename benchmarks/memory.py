"""Peak memory of a whole ``twostage run``, as the scale and own-data issues bound it.

    python -m benchmarks.memory --name schema-25m-torch -- run --schema ml-25m \
        --data-dir FOLDER --backend torch --retrieval-epochs 1 --ranking-epochs 1 \
        --eval-queries 100000 --out runs/mem --quiet

Everything after ``--`` is the ``twostage`` command line. It runs as a child process
(``python -m twostage ...``); its peak resident memory is the kernel's high-water mark of the
child (``os.wait4``'s ``ru_maxrss``: every page it touched at once, the libraries included),
read when it exits. Writes ``memory-<name>.json`` into ``--out`` (default
docs/results): the command, exit code, wall seconds, peak GiB, the bound it is held to
(``--bound-gib``) and the machine. Peak memory does not depend on other processes; the wall
time does (say so when the machine was shared: ``--note``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from twostage import io

from .scale import machine

ROOT = Path(__file__).resolve().parents[1]


def measure(command: list[str]) -> dict:
    """Run ``python -m twostage COMMAND`` to its end -> exit code, wall seconds, peak bytes
    (``os.wait4``'s rusage of that child alone: no other child of this process counts)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "twostage", *command], cwd=ROOT)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    return {"exit_code": child.returncode, "seconds": seconds,
            "peak_bytes": usage.ru_maxrss * 1024, "peak_gib": usage.ru_maxrss * 1024 / 2**30}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--name", required=True, help="the report is memory-<name>.json")
    p.add_argument("--bound-gib", type=float, default=None, help="the bound it is held to")
    p.add_argument("--note", default="", help="e.g. that the machine was shared")
    p.add_argument("--out", default=str(ROOT / "docs" / "results"))
    args = p.parse_args(ours)
    if not command:
        p.error("give the twostage command after --, e.g. -- run --backend torch")
    report = {"command": "twostage " + " ".join(command), "machine": machine(),
              "date": time.strftime("%Y-%m-%d %H:%M"), "note": args.note,
              **measure(command)}
    if args.bound_gib is not None:
        report.update(bound_gib=args.bound_gib, within_bound=report["peak_gib"] <= args.bound_gib)
    path = Path(args.out) / f"memory-{args.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    io.write_json(path, report)
    print(f"{report['command']}: exit {report['exit_code']}, {report['seconds']:.0f} s, peak "
          f"{report['peak_gib']:.2f} GiB"
          + (f" (bound {args.bound_gib} GiB: {'within' if report['within_bound'] else 'ABOVE'})"
             if args.bound_gib is not None else "") + f"; wrote {path}")
    return report["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
