"""python -m bench.kinematics: the robot's kinematics (pinocchio) and the controller tick it sits in.

Times, on this machine, the calls the runtime makes: forward kinematics of every link (the
robot self-filter and the self-collision check, per frame), one link's pose and Jacobian (IK,
teleop, calibration), a whole IK solve, the safety shield's flange and fingertip points (every
120 Hz arm tick and 300 Hz hand tick), and the compute of an armed controller tick with the
shield, on in-memory devices that follow their commands (no physics, no ROS: the tick's own
cost). About 20 s. Writes bench/results/kinematics.json.
"""
from __future__ import annotations

import time
import timeit

import numpy as np

from bench.common import latency, require, write
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.factory import RobotPoints, make_arm_controller, make_hand_controller
from robot_runtime.devices.base import ArmDevice, HandDevice, JointSample
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel

TICKS = 6000


class FollowingArm(ArmDevice):
    """An arm that is where it was last told to be, on a clock the bench advances."""

    def __init__(self, q, clock):
        self.q, self.clock = np.array(q, float), clock

    def connect(self): ...
    def disconnect(self): ...
    def stop(self): ...

    def read_state(self):
        return JointSample(self.clock(), self.q.copy(), np.zeros(7), np.zeros(7))

    def send_servo_target(self, q):
        self.q = np.array(q, float)


class HeldHand(HandDevice):
    def __init__(self, q, clock):
        self.q, self.clock = np.array(q, float), clock

    def connect(self): ...
    def disconnect(self): ...
    def send_torque(self, tau): ...

    def read_state(self):
        return JointSample(self.clock(), self.q.copy(), np.zeros(16), np.zeros(16))


def _per_call_us(fn, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _ticks(cfg: RuntimeConfig, part: str) -> list[float]:
    """Compute time (ms) of each armed tick of one controller, following a moving 20 Hz target."""
    now = [1000.0]
    rate = cfg.rates.arm_hz if part == "arm" else cfg.rates.hand_hz
    arm_home, hand_home = np.array(cfg.robot.arm_home), np.array(cfg.robot.hand_home)
    if part == "arm":
        ctl = make_arm_controller(cfg, FollowingArm(arm_home, lambda: now[0]))
        ctl.set_context(hand_home)
    else:
        ctl = make_hand_controller(cfg, HeldHand(hand_home, lambda: now[0]))
        ctl.set_context(arm_home)
    ctl.tick(now[0])
    ctl.arm(now[0])
    every = int(round(rate / cfg.rates.policy_hz))
    out = []
    for k in range(TICKS):
        if k % every == 0:
            t = now[0] + 1.0 / cfg.rates.policy_hz
            wave = 0.1 * np.sin(t)
            q = np.r_[arm_home + (wave if part == "arm" else 0.0), hand_home + (wave / 2 if part == "hand" else 0.0)]
            ctl.on_target("policy", D.ALL_JOINTS, list(q), t, now[0])
        a = time.perf_counter()
        ctl.tick(now[0])
        out.append((time.perf_counter() - a) * 1e3)
        now[0] += 1.0 / rate
    return out


def main() -> dict:
    require("bench.kinematics", "pinocchio")
    cfg = RuntimeConfig()
    model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
    q = np.array(cfg.robot.arm_home + cfg.robot.hand_home)
    points = RobotPoints()
    target = model.link_pose(q + np.r_[np.full(7, 0.05), np.zeros(16)], "palm")
    calls = {
        "forward_array_us": _per_call_us(lambda: model.forward_array(q), 2000),
        "link_pose_us": _per_call_us(lambda: model.link_pose(q, "index_tip"), 5000),
        "jacobian_us": _per_call_us(lambda: model.jacobian(q, "index_tip", (0.0, 0.0, 0.01)), 5000),
        "shield_points_arm_us": _per_call_us(lambda: points.for_arm(q[:7], q[7:]), 5000),
        "shield_points_hand_us": _per_call_us(lambda: points.for_hand(q[7:], q[:7]), 5000),
        "ik_solve_ms": _per_call_us(lambda: solve_ik(model, q, "palm", target, np.arange(7)), 50) / 1e3,
    }
    ticks = {"arm_tick": latency(_ticks(cfg, "arm")), "hand_tick": latency(_ticks(cfg, "hand"))}
    print(f"{'call':28s} {'time':>10s}")
    for k, v in calls.items():
        unit = "ms" if k.endswith("_ms") else "us"
        print(f"{k.rsplit('_', 1)[0]:28s} {v:8.2f} {unit}")
    print(f"\n{'armed tick (compute)':28s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}")
    for k, v in ticks.items():
        print(f"{k:28s} {v['p50_ms']:8.3f} {v['p99_ms']:8.3f} {v['max_ms']:8.3f}")
    result = {"library": "pinocchio", "calls": calls, **ticks}
    print(f"wrote {write('kinematics', result)}")
    return result


if __name__ == "__main__":
    main()
