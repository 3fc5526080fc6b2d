"""The native launcher: starts the node plan as processes, supervises them, summarises.

``ros2 launch`` is not available from PyPI, so here the same plan that the launch files
use is started as ``python -m <module> --ros-args ...`` processes.

When a node dies: an essential one (a controller, the twin; :attr:`NodeSpec.essential`) ends
the run, and the rest are shut down cleanly (SIGINT, then SIGTERM, then SIGKILL). Any other
(policy, recorder, teleop, viz, camera, ...) is reported and the graph runs on: the
controllers' watchdog holds the robot where it is (the hand keeps its grip) until someone
decides; the run's exit code and summary then say which node died. The launch files do the
same (``launch_description``).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

from robot_runtime.plan import NodeSpec


@dataclass
class NodeProcess:
    spec: NodeSpec
    proc: subprocess.Popen
    started: float
    returncode: int | None = None


#: The environment variable that gives each node its launcher's pid: a node whose parent is no
#: longer that process stops (:func:`robot_runtime.ros_io.spin_ros_main`), even when the SIGINT the
#: kernel sends on the launcher's death was lost.
LAUNCHER_PID_ENV = "ROBOT_RUNTIME_LAUNCHER_PID"


def _interrupt_when_parent_dies() -> None:
    """In the child, before exec (Linux): SIGINT when the launcher dies, even by SIGKILL, so a
    node shuts down as on Ctrl-C instead of running on with nobody watching it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGINT, 0, 0, 0)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class GraphSupervisor:
    """Starts and watches one process per node."""

    def __init__(self, plan: list[NodeSpec], env: dict | None = None, stdout=None, stderr=None):
        self.plan = plan
        self.env = {**os.environ, **(env or {})}
        self.env.setdefault("MUJOCO_GL", "egl")
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        self.stdout, self.stderr = stdout, stderr
        self.procs: list[NodeProcess] = []

    def start(self) -> None:
        for spec in self.plan:
            cmd = [sys.executable, "-m", spec.module, *spec.ros_args()]
            env = {**self.env, LAUNCHER_PID_ENV: str(os.getpid())}
            proc = subprocess.Popen(cmd, env=env, stdout=self.stdout, stderr=self.stderr,
                                    start_new_session=True, preexec_fn=_interrupt_when_parent_dies)
            self.procs.append(NodeProcess(spec, proc, time.monotonic()))

    def dead(self) -> list[NodeProcess]:
        """Processes that have exited (their return code is recorded)."""
        out = []
        for p in self.procs:
            if p.returncode is None:
                p.returncode = p.proc.poll()
            if p.returncode is not None:
                out.append(p)
        return out

    def shutdown(self, grace_s: float = 5.0) -> dict[str, int]:
        """Stop every node still running; returns each node's exit code."""
        for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 2.0), (signal.SIGKILL, 2.0)):
            alive = [p for p in self.procs if p.proc.poll() is None]
            if not alive:
                break
            for p in alive:
                try:
                    os.killpg(p.proc.pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + wait_s
            for p in alive:
                try:
                    p.proc.wait(max(0.0, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        return {p.spec.name: p.proc.returncode for p in self.procs}


class GraphMonitor:
    """A small rclpy node in the launcher that keeps the twin's latest statistics."""

    def __init__(self):
        from diagnostic_msgs.msg import DiagnosticArray

        from robot_runtime import ros_io

        self.twin: dict[str, str] | None = None
        self.loops: dict[str, dict[str, str]] = {}
        self.spun = ros_io.SpunNode("robot_runtime_launcher", spin_timeout_s=0.05)
        self.node = self.spun.node
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diag, ros_io.STATE_QOS)

    def _on_diag(self, msg) -> None:
        for st in msg.status:
            vals = {kv.key: kv.value for kv in st.values}
            if st.name == "sim_node: twin":
                self.twin = vals
            elif st.name.endswith(": loop"):
                self.loops[st.name.split(":")[0]] = vals

    def close(self) -> None:
        self.spun.close()


def summary_line(elapsed: float, codes: dict[str, int], died: list[str], twin: dict | None,
                 loops: dict[str, dict] | None = None) -> str:
    """One line: duration, node outcome, the twin's real-time factor and stream rates, and
    each control loop's rate over the whole run and its ticks, wake-up lateness p99, overruns, mode,
    shield interventions and (the arm) its device calls' time per tick (the SDK round trips on an
    xArm), and the policy loop's actions, ticks without action and missed ticks."""
    parts = [f"ran {elapsed:.1f} s", f"{len(codes)} nodes"]
    parts.append(f"FAILED: {', '.join(died)}" if died else "all nodes ok")
    if twin:
        up = float(twin.get("uptime_s", "0")) or float("nan")
        parts.append(f"twin RTF {float(twin['real_time_factor']):.2f}")
        parts.append("rates " + ", ".join(
            f"{k} {int(twin[k + '_count']) / up:.0f} Hz" for k in ("arm", "hand", "depth") if k + "_count" in twin))
        parts.append(f"task {twin.get('task')} seed {twin.get('seed')}")
        if "task_object" in twin:
            lifted = float(twin.get("task_max_lift_m", 0.0))
            solved = str(twin.get("task_solved")).lower() == "true"
            parts.append(f"{twin['task_object']} {'lifted' if lifted > 0.02 else 'not lifted'} "
                         f"(now {100 * float(twin.get('task_lift_m', 0.0)):+.1f} cm, highest {100 * lifted:+.1f} cm), "
                         f"task {'solved' if solved else 'not solved'}")
    for name, v in sorted((loops or {}).items()):
        if "checkpoint" in v:   # the policy loop
            skipped = sum(int(x) for k, x in v.items() if k.startswith("ticks_") and k not in
                          ("ticks_published", "ticks_swaps", "ticks_idle"))
            parts.append(f"policy {float(v['rate_hz']):.0f} Hz, {v.get('ticks_published', 0)} actions, "
                         f"{skipped} ticks without action, {v['misses']} missed, {v['checkpoint']}")
            continue
        if "recording" in v:    # the recorder loop
            parts.append(f"recorder {v['saved']} episodes saved, {v['total_dropped']} steps dropped")
            continue
        if "input" in v:        # the teleop loop
            parts.append(f"teleop {v['input']} {float(v['rate_hz']):.0f} Hz, {v['samples']} samples")
            continue
        shield = sum(int(x) for k, x in v.items() if k.startswith("shield_"))
        io = (f", device calls p50 {float(v['device_io_p50_ms']):.2f} / p99 {float(v['device_io_p99_ms']):.2f} ms "
              f"per tick" if "device_io_p99_ms" in v else "")
        parts.append(f"{name.replace('_node', '')} {float(v['mean_rate_hz']):.0f} Hz ({v['ticks']} ticks), "
                     f"late p99 {float(v['lateness_p99_ms']):.2f} ms, {v['overruns']} overruns, {v['mode']}, "
                     f"{shield} shield interventions{io}")
    return "robot-runtime: " + " | ".join(parts)


def run_graph(plan: list[NodeSpec], duration: float = 0.0, monitor: bool = True, env: dict | None = None,
              until: str = "") -> int:
    """Run ``plan`` until Ctrl-C, ``duration`` seconds (0 = no limit), an essential node dies, or
    the node named ``until`` (a one-shot job such as calibration_node) exits. Another node's
    death is reported at once and the graph runs on (see the module's docstring).

    Returns 0 when every node ran to the end (or ``until`` finished its job), 1 when one died.
    """
    sup = GraphSupervisor(plan, env=env)
    mon = GraphMonitor() if monitor else None
    t0 = time.monotonic()
    died: list[str] = []
    print(f"robot-runtime: starting {', '.join(s.name for s in plan)}"
          + (f" for {duration:g} s" if duration else " (Ctrl-C to stop)"), flush=True)
    sup.start()
    reported: set[str] = set()
    try:
        while not duration or time.monotonic() - t0 < duration:
            dead = sup.dead()
            if any(p.spec.name == until and p.returncode == 0 for p in dead):
                print(f"robot-runtime: {until} finished; stopping the rest", flush=True)
                died += [f"{p.spec.name} (exit {p.returncode})" for p in dead
                         if p.spec.name != until and p.spec.name not in reported]
                break
            new = [p for p in dead if p.spec.name not in reported]
            for p in new:
                reported.add(p.spec.name)
                died.append(f"{p.spec.name} (exit {p.returncode})")
                after = f"after {time.monotonic() - p.started:.1f} s"
                if p.spec.essential or p.spec.name == until:
                    print(f"robot-runtime: {p.spec.name} exited with code {p.returncode} {after}; stopping the rest",
                          file=sys.stderr, flush=True)
                else:
                    print(f"robot-runtime: {p.spec.name} exited with code {p.returncode} {after}; the controllers "
                          f"hold the robot and the rest run on (Ctrl-C to stop)", file=sys.stderr, flush=True)
            if any(p.spec.essential or p.spec.name == until for p in new) or len(dead) == len(sup.procs):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        print("robot-runtime: Ctrl-C, stopping", flush=True)
    if until and not any(p.spec.name == until and p.returncode == 0 for p in sup.procs) \
            and not any(d.startswith(until) for d in died):
        died.append(f"{until} did not finish")
    elapsed = time.monotonic() - t0
    twin = mon.twin if mon else None
    loops = dict(mon.loops) if mon else None
    codes = sup.shutdown()
    if mon:
        mon.close()
    print(summary_line(elapsed, codes, died, twin, loops), flush=True)
    return 1 if died else 0
