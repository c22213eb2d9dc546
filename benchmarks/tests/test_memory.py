"""benchmarks.memory: the peak memory of a child twostage command, against a bound."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path, bound: str) -> dict:
    subprocess.run([sys.executable, "-m", "benchmarks.memory", "--name", "help", "--out",
                    str(tmp_path), "--bound-gib", bound, "--", "--help"], cwd=ROOT, check=True,
                   capture_output=True)
    return json.loads((tmp_path / "memory-help.json").read_text())


def test_peak_memory_of_the_child_against_its_bound(tmp_path):
    """`twostage --help` in a child: its peak is a real high-water mark (a Python process: tens
    of MiB, not 0) and the bound is judged on it. Break: read the parent's own ru_maxrss (or
    none) and the figure no longer changes with the bound's side."""
    report = run(tmp_path, "100")
    assert report["command"] == "twostage --help" and report["exit_code"] == 0
    assert 0.005 < report["peak_gib"] < 2 and report["within_bound"]
    assert report["peak_bytes"] == round(report["peak_gib"] * 2**30)
    assert not run(tmp_path, str(report["peak_gib"] / 2))["within_bound"]
