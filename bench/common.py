"""Shared pieces of the benchmarks: latency summaries, machine facts, JSON output."""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

from robot_runtime.control.loop import LatencySummary

RESULTS = Path(__file__).resolve().parent / "results"

#: where each module a benchmark needs comes from: an extra of this package ("": the package
#: itself), or (None) the Makefile's venv step (the ROS 2 wheels) or a sourced ROS 2
INSTALLED_BY = {"pinocchio": "", "transformers": "bench", "onnxruntime": "policy", "torch": "policy", "mujoco": "twin",
                "xarm": "xarm", "dex_retargeting": "teleop", "rerun": "viz", "rclpy": None}


def require(bench: str, *modules: str) -> None:
    """Exit with one line saying what to install when a module ``bench`` needs is missing.

    Every benchmark runs in the venv ``make test`` builds except where it needs an extra that
    venv leaves out (``transformers`` for ``bench.policy``'s reference); ``make bench`` installs it.
    """
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if not missing:
        return
    extras = sorted({INSTALLED_BY.get(m) for m in missing} - {None, ""})
    how = []
    if extras:
        how.append(f".venv/bin/pip install -e '.[{','.join(extras)}]' (or: make bench)")
    elif any(INSTALLED_BY.get(m) == "" for m in missing):
        how.append(".venv/bin/pip install -e . (or: make venv)")
    if any(INSTALLED_BY.get(m, "") is None for m in missing):
        how.append("make venv (the ROS 2 wheels) or source a ROS 2 install")
    raise SystemExit(f"{bench} needs {', '.join(missing)}, which this Python ({sys.executable}) lacks: "
                     + "; ".join(how))


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


def bench_env() -> dict:
    """Environment for graph processes: offscreen rendering, localhost DDS, a domain of our own."""
    return {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
            "ROS_DOMAIN_ID": os.environ.get("ROS_DOMAIN_ID", str(50 + os.getpid() % 50))}


def run_plan_for(plan, seconds: float, out_dir: Path, name: str, env: dict) -> None:
    """Run a node plan for ``seconds``; logs go to ``out_dir/name.log|.err``. Exits if a node dies."""
    import time

    from robot_runtime.launcher import GraphSupervisor

    err = Path(out_dir) / f"{name}.err"
    sup = GraphSupervisor(plan, env=env, stdout=open(Path(out_dir) / f"{name}.log", "a"), stderr=open(err, "a"))
    sup.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        dead = sup.dead()
        if dead:
            sup.shutdown()
            raise SystemExit(f"{dead[0].spec.name} died (exit {dead[0].returncode}): {err.read_text()[-2000:]}")
        time.sleep(0.2)
    sup.shutdown()
