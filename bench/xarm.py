"""python -m bench.xarm: the arm controller with the real xarm-python-sdk against the emulated box.

The emulated control box (:mod:`robot_runtime.twin.xarm_box`, kinematic arm) serves on a
loopback address of its own; the ``xarm`` backend connects through the real ``XArmAPI``; the
arm controller ticks on the project's 120 Hz deadline loop (SCHED_FIFO when allowed), following
a slow 0.3 rad sine on joint 1 (targets at 20 Hz, as the policy sends them).

- ``round_trip``: each tick's controller work with the real client in it (a
  ``get_joint_states`` and a ``set_servo_angle_j`` round trip over TCP), per tick;
- ``lateness`` and ``miss_rate``: the 120 Hz loop's wake-up lateness and its misses (ticks more
  than half a period late) with that client in the loop;
- then ``BENCH_XARM_STALL_S`` (default 10) more seconds with a 190 ms stall of the servo call
  every 2 s (SDK issue 154): ``stall_to_hold_ms``, how long after the call blocked the arm
  stood still (it runs to the last target it was given, then holds), and the ticks the
  stalls cost the loop.

- then ``BENCH_XARM_STATE_S`` (default 8) more seconds in which two more SDK clients read the
  moving arm at 120 Hz, one polling ``get_joint_states`` (what the backend does), one reading
  the real-time report (port 30003, 100 Hz, ``report_type='real'``): ``state_source``, for
  each how old the joint angles it returns are (from the box's own history of the arm, on
  joint 1 while it moves faster than 0.1 rad/s) and what a read costs the caller.

Writes bench/results/xarm.json (``round_trip``, ``lateness``, ``miss_rate``, ``stall_to_hold_ms``,
``stalls``, ``stall_overruns``, ``state_source``). About 50 s.
"""
from __future__ import annotations

import os
import threading
import time

import numpy as np

from bench.common import latency, require, write
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig, XArmConfig
from robot_runtime.control.factory import make_arm_controller
from robot_runtime.control.loop import DeadlineLoop, LoopStatistics, request_realtime
from robot_runtime.devices.xarm import XArm
from robot_runtime.twin.xarm_box import XArmBox

HOST = os.environ.get("BENCH_XARM_HOST", "127.0.0.3")
RUN_S = float(os.environ.get("BENCH_XARM_S", "20"))
STALL_S = float(os.environ.get("BENCH_XARM_STALL_S", "10"))
STATE_S = float(os.environ.get("BENCH_XARM_STATE_S", "8"))


def _age_ms(history: list, t: float, q1: float) -> float | None:
    """How long before ``t`` (monotonic s) joint 1 of the box's arm was at ``q1`` (rad), from the
    box's history [(t, q [7])]; None unless it moved one way at > 0.1 rad/s for the last 0.25 s."""
    pts = [(ht, hq[0]) for ht, hq in history if t - 0.25 <= ht <= t]
    if len(pts) < 20:
        return None
    ts, qs = np.array(pts).T
    v = np.diff(qs) / np.diff(ts)
    if np.min(np.abs(v)) < 0.1 or np.any(np.sign(v) != np.sign(v[0])):
        return None
    s = np.sign(v[0])
    if s * q1 > s * qs[-1]:           # past the newest cycle: at the last speed
        tau = ts[-1] + (q1 - qs[-1]) / v[-1]
    elif s * q1 < s * qs[0]:          # older than the window
        return None
    else:
        tau = float(np.interp(s * q1, s * qs, ts))
    return (t - tau) * 1e3


def measure_state_sources(box: XArmBox, seconds: float, hz: float = 120.0) -> dict:
    """Read the moving arm through two more SDK clients at ``hz``: polling and the 100 Hz report."""
    from collections import deque

    from xarm.wrapper import XArmAPI

    box.history = deque(maxlen=2000)
    poll = XArmAPI(box.host, is_radian=True)
    report = XArmAPI(box.host, is_radian=True, report_type="real")
    ages: dict[str, list[float]] = {"poll": [], "report": []}
    cost: dict[str, list[float]] = {"poll": [], "report": []}
    try:
        end = time.monotonic() + seconds
        due = time.monotonic()
        while time.monotonic() < end:
            a = time.monotonic()
            _, states = poll.get_joint_states(is_radian=True)
            b = time.monotonic()
            q_report = float(report.angles[0])
            c = time.monotonic()
            cost["poll"].append((b - a) * 1e3)
            cost["report"].append((c - b) * 1e3)
            hist = box.arm_history()
            for name, t, q1 in (("poll", b, float(states[0][0])), ("report", c, q_report)):
                age = _age_ms(hist, t, q1)
                if age is not None:
                    ages[name].append(age)
            due += 1.0 / hz
            time.sleep(max(0.0, due - time.monotonic()))   # the reader's rate
    finally:
        poll.disconnect()
        report.disconnect()
        box.history = None
    return {name: {"age": latency(ages[name]), "read_cost": latency(cost[name])} for name in ages}


def armed_controller(cfg: RuntimeConfig, arm: XArm):
    """The arm controller over a connected ``arm``, ticked once (a joint state) and armed."""
    ctl = make_arm_controller(cfg, arm)
    ctl.set_context(np.array(cfg.robot.hand_home))
    ctl.tick(time.time())
    ctl.arm(time.time())
    return ctl


def run_phase(ctl, cfg, seconds: float) -> tuple[LoopStatistics, list[float]]:
    """Tick the controller at 120 Hz for ``seconds``; returns the loop's statistics and each
    tick's duration (ms)."""
    stats = LoopStatistics(1.0 / cfg.rates.arm_hz, keep_all=True)
    home = np.asarray(cfg.robot.arm_home, float)
    hand = list(cfg.robot.hand_home)
    ticks: list[float] = []
    t0 = time.time()
    next_target = [0.0]

    def tick(deadline: float) -> None:
        now = time.time()
        if now >= next_target[0]:   # the policy's 20 Hz targets, stamped for the next one
            q = home.copy()
            q[0] += 0.3 * np.sin(2 * np.pi * 0.2 * (now + 0.05 - t0))
            ctl.on_target("policy", D.ALL_JOINTS, list(q) + hand, now + 0.05, now)
            next_target[0] = now + 0.05
        a = time.perf_counter()
        ctl.tick(now)
        ticks.append((time.perf_counter() - a) * 1e3)

    loop = DeadlineLoop(cfg.rates.arm_hz, tick, spin_s=cfg.control.spin_us * 1e-6, stats=stats)
    th = threading.Thread(target=lambda: (request_realtime(cfg.control.realtime_priority), loop.run()), daemon=True)
    th.start()
    time.sleep(seconds)   # the phase's length
    loop.stop()
    th.join(5.0)
    return stats, ticks


def main() -> int:
    require("bench.xarm", "xarm", "mujoco")
    cfg = RuntimeConfig()
    with XArmBox(HOST) as box:
        arm = XArm(XArmConfig(ip=HOST))
        arm.connect()
        try:
            ctl = armed_controller(cfg, arm)
            print(f"streaming at {cfg.rates.arm_hz:g} Hz through the real SDK to the box at {HOST} for {RUN_S:g} s ...",
                  flush=True)
            stats, ticks = run_phase(ctl, cfg, RUN_S)
            box.inject_stalls(0.19, 2.0)
            print(f"... then {STALL_S:g} s with a 190 ms servo-call stall every 2 s", flush=True)
            stall_stats, _ = run_phase(ctl, cfg, STALL_S)
            box.inject_stalls(0.0, 2.0)
            print(f"... then {STATE_S:g} s reading the moving arm by polling and from the 100 Hz report", flush=True)
            sources: dict = {}
            reader = threading.Thread(target=lambda: sources.update(measure_state_sources(box, STATE_S - 1.0)))
            reader.start()
            run_phase(ctl, cfg, STATE_S)
            reader.join()
            mode = ctl.mode.value + (f" ({ctl.reason})" if ctl.reason else "")
        finally:
            arm.disconnect()
    late = latency(stats.all_lateness_ms)
    result = {"round_trip": latency(ticks[10:]), "lateness": late,
              "miss_rate": stats.misses / max(1, stats.ticks),
              "stall_to_hold_ms": float(np.median(box.stall_to_hold_ms)) if box.stall_to_hold_ms else None,
              "stalls": box.stalls, "stall_overruns": stall_stats.overruns, "mode_after": mode,
              "state_source": sources}
    print("\n| measure | p50 ms | p99 ms | max ms | n |\n|---|---|---|---|---|")
    for k in ("round_trip", "lateness"):
        r = result[k]
        print(f"| {k} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.3f} | {r['n']} |")
    print(f"\nmiss rate {100 * result['miss_rate']:.3f}%; {box.stalls} stalls, the arm still "
          f"{result['stall_to_hold_ms']} ms after each began (median), {stall_stats.overruns} deadlines skipped; "
          f"controller {mode}")
    print("\n| state read | age p50 ms | age p99 ms | age max ms | n | read cost p50 ms | p99 ms |\n|---|---|---|---|---|---|---|")
    for name, r in sources.items():
        a, c = r["age"], r["read_cost"]
        print(f"| {name} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['max_ms']:.2f} | {a['n']} | "
              f"{c['p50_ms']:.3f} | {c['p99_ms']:.3f} |")
    print(f"wrote {write('xarm', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
