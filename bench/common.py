"""Shared pieces of the benchmarks: latency summaries, machine facts, JSON output."""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from robot_runtime.control.loop import LatencySummary

RESULTS = Path(__file__).resolve().parent / "results"


def latency(samples_ms) -> dict:
    """{"p50_ms", "p99_ms", "max_ms", "n"} of a list of milliseconds."""
    return LatencySummary.of(samples_ms).as_dict()


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count()}


def write(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {**result, "machine": machine(), "when": datetime.datetime.now().astimezone().isoformat()}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(out, indent=2))
    return path
