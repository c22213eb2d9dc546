"""Start-up: process start to the first training step of a torch run, and ``twostage --help``.

    python -m benchmarks.startup [--repeats 3] [--data-dir DIR] [--out docs/results]

Every figure is the median over ``--repeats`` fresh processes, timed from the moment this
benchmark spawns them (interpreter start included):

- ``help_s``: ``python -m twostage --help`` to its exit; ``python_s``: ``python -c pass``, the
  interpreter alone, for scale.
- ``first_step_s``: ``python -m twostage run --backend torch --quiet`` (the tutorial protocol
  on ml-100k from TWOSTAGE_DATA_DIR, or ``--data-dir``) to the end of its first optimizer
  step, where the process ends (a global torch optimizer step hook, registered as soon as
  ``torch.optim`` is imported). Beside it, when each phase started and ended (the import of
  torch, ``load_dataset``, ``evaluate_baselines``, ``make_backend``), and which of TensorFlow
  and ``torch._dynamo`` were loaded by then (neither should be).

Targets (issue 25, 2-core machine, alone): ``twostage --help`` under 1 s; the first step within
4 s of process start. Writes ``startup.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HELP_TARGET_S, FIRST_STEP_TARGET_S = 1.0, 4.0
REPO = Path(__file__).resolve().parents[1]

# Runs `python -m twostage ARGS` in the measured process, with only the standard library added:
# marks (seconds since the parent's spawn, time.monotonic is system-wide) of the phases, and at
# the end of the first optimizer step the marks and the heavy modules loaded, then os._exit.
PROBE = r'''
import functools, importlib.abc, json, os, runpy, sys, time
T0, OUT = float(os.environ["TWOSTAGE_STARTUP_T0"]), sys.argv[1]
PHASES = {"twostage.dataset": "load_dataset", "twostage.baselines": "evaluate_baselines",
          "twostage.pipeline": "make_backend"}
WATCH = ("tensorflow", "torch._dynamo", "tfrs_impl")
marks, hooked = {}, []

def mark(name):
    marks.setdefault(name, time.monotonic() - T0)

def first_step(optimizer, args, kwargs):
    mark("first_step")
    with open(OUT, "w") as f:
        json.dump({"marks": marks, "loaded": [m for m in WATCH if m in sys.modules]}, f)
    os._exit(0)

def timed(fn, name):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        mark(name + " start")
        try:
            return fn(*args, **kwargs)
        finally:
            mark(name + " end")
    return call

class Phases(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PHASES and name != "torch":
            return None
        mark(f"import {name} start")
        spec = next(filter(None, (f.find_spec(name, path, target) for f in sys.meta_path
                                  if f is not self and hasattr(f, "find_spec"))), None)
        if spec is None or spec.loader is None:
            return spec
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            mark(f"import {name} end")
            if name in PHASES and hasattr(module, PHASES[name]):
                setattr(module, PHASES[name], timed(getattr(module, PHASES[name]), PHASES[name]))
        spec.loader.exec_module = exec_module
        return spec

def on_import(event, args):
    if event == "import" and not hooked:
        register = getattr(sys.modules.get("torch.optim.optimizer"),
                           "register_optimizer_step_post_hook", None)
        if register is not None:
            hooked.append(register(first_step))

sys.meta_path.insert(0, Phases())
sys.addaudithook(on_import)
mark("interpreter")
sys.argv = ["twostage", *sys.argv[2:]]
runpy.run_module("twostage", run_name="__main__", alter_sys=True)
'''


def spawn_seconds(args: list[str]) -> float:
    """Seconds from spawning ``python ARGS`` to its exit (RuntimeError on a failure)."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} failed: {done.stderr.strip()[-500:]}")
    return seconds


def first_step(run_args: list[str]) -> dict:
    """One probed ``twostage run``: {"marks": {phase: seconds since spawn}, "loaded": [...]}.
    RuntimeError if the process ended without a training step."""
    with tempfile.TemporaryDirectory(prefix="twostage-startup-") as tmp:
        out = Path(tmp) / "marks.json"
        args = [*run_args, "--out", str(Path(tmp) / "run")]
        environment = {**os.environ, "TWOSTAGE_STARTUP_T0": repr(time.monotonic())}
        done = subprocess.run([sys.executable, "-c", PROBE, str(out), *args], cwd=REPO,
                              capture_output=True, text=True, env=environment)
        if not out.exists():
            raise RuntimeError(f"twostage {' '.join(args)} ended (exit {done.returncode}) "
                               f"without a training step: {done.stderr.strip()[-500:]}")
        return json.loads(out.read_text())


def measure(repeats: int, run_args: list[str]) -> dict:
    """The medians of ``repeats`` fresh processes of each kind, and the marks of the median
    first-step run."""
    python = statistics.median(spawn_seconds(["-c", "pass"]) for _ in range(repeats))
    help_s = statistics.median(spawn_seconds(["-m", "twostage", "--help"])
                               for _ in range(repeats))
    runs = sorted((first_step(run_args) for _ in range(repeats)),
                  key=lambda r: r["marks"]["first_step"])
    median = runs[len(runs) // 2]
    return {"python_s": python, "help_s": help_s,
            "first_step_s": median["marks"]["first_step"],
            "first_step_all_s": [r["marks"]["first_step"] for r in runs],
            "marks_s": median["marks"], "loaded_by_first_step": median["loaded"]}


def print_report(r: dict) -> None:
    print(f"twostage --help                       {r['help_s']:6.2f} s  (target < "
          f"{HELP_TARGET_S:.0f} s: {r['help_s'] / HELP_TARGET_S:.2f}x of it; python -c pass "
          f"{r['python_s']:.2f} s)")
    print(f"torch run, start -> first step done   {r['first_step_s']:6.2f} s  (target <= "
          f"{FIRST_STEP_TARGET_S:.0f} s: {r['first_step_s'] / FIRST_STEP_TARGET_S:.2f}x of it)")
    for name, seconds in sorted(r["marks_s"].items(), key=lambda kv: kv[1]):
        print(f"  {seconds:6.2f} s  {name}")
    print("  loaded by the first step: " + (", ".join(r["loaded_by_first_step"]) or
                                             "neither TensorFlow nor torch._dynamo"))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.speed import machine
    from twostage import env, io

    p = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per figure")
    p.add_argument("--data-dir", help="ml-100k folder (default: TWOSTAGE_DATA_DIR)")
    p.add_argument("--out", default="runs/startup", help="folder of startup.json")
    p.add_argument("--note", default="", help="stored with the figures (e.g. 'machine shared')")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    env.setup_process()
    run_args = ["-m", "twostage", "run", "--backend", "torch", "--quiet",
                *(["--data-dir", args.data_dir] if args.data_dir else [])]
    load = os.getloadavg()
    result = measure(args.repeats, run_args[2:])
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M"),
              "command": "python -m benchmarks.startup " + " ".join(argv or sys.argv[1:]),
              "note": args.note, "load_average_before": load[0],
              "load_average_after": os.getloadavg()[0], "repeats": args.repeats,
              "targets_s": {"help_s": HELP_TARGET_S, "first_step_s": FIRST_STEP_TARGET_S},
              **result}
    print_report(result)
    print(f"wrote {io.write_json(Path(args.out) / 'startup.json', report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
