"""Arm and hand controllers, the deadline loop and the xArm backend, with injected time."""
import os
import subprocess
import sys

import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.controller import Mode, VelocityFilter
from robot_runtime.interfaces import ControllerStatus, StopKind
from robot_runtime.control.factory import make_arm_controller, make_hand_controller
from robot_runtime.control.loop import DeadlineLoop, LatencySummary, LoopStatistics
from robot_runtime.control.targets import TargetRejected
from robot_runtime.devices.base import ArmDevice, HandDevice, JointSample
from robot_runtime.devices.xarm import xarm_error_name
from robot_runtime.errors import DeviceError

ARM_DT = 1.0 / 120
T0 = 1000.0


class IdealArm(ArmDevice):
    """An arm that is exactly where it was last told to be (the controller logic under test)."""

    def __init__(self, q, clock):
        self.q, self.clock = np.array(q, float), clock
        self.sent: list[np.ndarray] = []
        self.stops = 0

    def connect(self): ...
    def disconnect(self): ...

    def read_state(self):
        return JointSample(self.clock(), self.q.copy(), np.zeros(7), np.zeros(7))

    def send_servo_target(self, q):
        self.q = np.array(q, float)
        self.sent.append(self.q.copy())

    def stop(self):
        self.stops += 1


class Rig:
    """One arm controller on an ideal arm, with a clock the test advances."""

    def __init__(self, cfg=None, device=None):
        self.cfg = cfg or RuntimeConfig()
        self.now = T0
        self.arm = device or IdealArm(self.cfg.robot.arm_home, lambda: self.now)
        self.ctl = make_arm_controller(self.cfg, self.arm)
        self.ctl.set_context(np.array(self.cfg.robot.hand_home))
        self.home = np.array(self.cfg.robot.arm_home)

    def target(self, q_arm, t_for, source="policy"):
        self.ctl.on_target(source, D.ALL_JOINTS, list(q_arm) + list(self.cfg.robot.hand_home), t_for, self.now)

    def run(self, seconds, target_fn=None, source="policy"):
        """Tick at 120 Hz for ``seconds``; ``target_fn(t)`` -> arm targets published at 20 Hz, stamped +50 ms."""
        outs = []
        next_pub = self.now
        for _ in range(int(round(seconds / ARM_DT))):
            if target_fn is not None and self.now >= next_pub - 1e-9:
                self.target(target_fn(self.now + 0.05), self.now + 0.05, source)
                next_pub += 0.05
            outs.append(self.ctl.tick(self.now))
            self.now += ARM_DT
        return outs


def sent_steps(arm):
    return np.abs(np.diff(np.array(arm.sent), axis=0)).max(axis=1) if len(arm.sent) > 1 else np.zeros(1)


def test_starts_disarmed_and_streams_nothing():
    rig = Rig()
    rig.run(0.5, lambda t: rig.home + 0.1)
    assert rig.ctl.mode is Mode.DISARMED and rig.arm.sent == []
    assert "arm service" in rig.ctl.status()["reason"]


def test_armed_arm_tracks_a_ramp_smoothly():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    ramp = lambda t: rig.home + 0.2 * np.sin(0.5 * (t - T0)) * np.array([1, 0.5, 0, 1, 0, -1, 1.0])  # noqa: E731
    rig.run(3.0, ramp)
    err = np.abs(rig.arm.q - ramp(rig.now))
    assert err.max() < 0.01
    limit = rig.cfg.control.arm.max_step[0]
    assert sent_steps(rig.arm).max() <= limit + 1e-12


def test_stale_targets_hold_then_latch_and_need_rearm():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    moving = lambda t: rig.home + 0.5 * (t - T0) * np.array([1, 0, 0, 0, 0, 0, 0.0])  # noqa: E731
    rig.run(1.0, moving)
    killed_at = rig.now
    n_before = len(rig.arm.sent)
    outs = rig.run(0.2)  # publisher gone
    held = [o for o in outs if "stale_hold" in o.reasons]
    assert held, "the controller should hold once targets are two policy periods old"
    # Holding: the arm comes to rest (no extrapolation) with no step larger than the limit.
    assert np.allclose(rig.arm.sent[-1], rig.arm.sent[-2])
    assert sent_steps(rig.arm).max() <= rig.cfg.control.arm.max_step[0] + 1e-12
    rig.run(0.1)
    assert rig.ctl.mode is Mode.STOPPED and "watchdog" in rig.ctl.reason and rig.arm.stops == 1
    assert rig.ctl.status()["stop"] == "watchdog"
    assert killed_at < rig.now and len(rig.arm.sent) > n_before
    # Fresh targets do not move a stopped controller: re-arming is explicit.
    n = len(rig.arm.sent)
    rig.run(0.3, lambda t: rig.home)
    assert len(rig.arm.sent) == n and rig.ctl.mode is Mode.STOPPED
    rig.ctl.arm(rig.now)
    rig.run(0.5, lambda t: rig.arm.q)
    assert rig.ctl.mode is Mode.ARMED and len(rig.arm.sent) > n


def blended_resume(cfg):
    """Hold (targets stale), then targets 0.01 rad away on joint 1 (within one tick's limit, so
    only the blend can spread the move): joint 1's command offsets (rad) over 0.7 s from the resume."""
    rig = Rig(cfg)
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    rig.run(0.5, lambda t: rig.home)
    rig.run(0.15)  # stale, held, not yet latched
    assert rig.ctl.mode is Mode.ARMED
    n = len(rig.arm.sent)
    rig.run(0.7, lambda t: rig.home + np.array([0.01, 0, 0, 0, 0, 0, 0]))
    return np.array(rig.arm.sent[n:])[:, 0] - rig.home[0]


def test_hold_then_resume_blends_from_where_it_stopped():
    """Over control.blend_s (0.5 s) the command moves to the resumed target along the blend: a
    quarter of a second in it is near halfway, and it arrives at the end. With the blend off it
    is there at once (the check that each step was within the shield's limit passed either way)."""
    cfg = RuntimeConfig()
    offset = blended_resume(cfg)
    quarter = int(round(0.25 / ARM_DT))
    assert 0.003 < offset[quarter] < 0.007, offset[:quarter + 1]
    assert abs(offset[-1] - 0.01) < 1e-6
    cfg.control.blend_s = 0.0
    assert abs(blended_resume(cfg)[quarter] - 0.01) < 1e-6   # the same move without the blend


def test_estop_holds_at_once_and_stops_the_arm():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    rig.run(0.5, lambda t: rig.home + 0.3 * (t - T0))
    rig.ctl.estop("e-stop service")
    n = len(rig.arm.sent)
    rig.run(0.2, lambda t: rig.home + 0.3 * (t - T0))
    assert len(rig.arm.sent) == n and rig.arm.stops == 1
    assert rig.ctl.status()["mode"] == "stopped" and rig.ctl.status()["reason"] == "e-stop service"
    assert rig.ctl.status()["stop"] == "estop"


def test_source_switch_starts_from_the_current_position():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    policy = lambda t: rig.home + np.array([0.2, 0, 0, 0, 0, 0, 0])  # noqa: E731
    teleop = lambda t: rig.home - np.array([0.2, 0, 0, 0, 0, 0, 0])  # noqa: E731
    next_pub = rig.now
    steps = []
    for i in range(int(3.0 / ARM_DT)):
        if rig.now >= next_pub - 1e-9:  # both sources publish all along
            rig.target(policy(rig.now), rig.now + 0.05, "policy")
            rig.target(teleop(rig.now), rig.now + 0.05, "teleop")
            next_pub += 0.05
        if i == int(1.5 / ARM_DT):
            before = rig.arm.q.copy()
            assert "switched from policy to teleop" in rig.ctl.select_source("teleop", rig.now)
        rig.ctl.tick(rig.now)
        rig.now += ARM_DT
        if i == int(1.5 / ARM_DT):
            steps.append(np.abs(rig.arm.q - before).max())
    assert steps[0] < 1e-3  # the first command after the switch is where the arm already was
    assert np.allclose(rig.arm.q, teleop(rig.now), atol=1e-3)
    assert sent_steps(rig.arm).max() <= rig.cfg.control.arm.max_step[0] + 1e-12
    with pytest.raises(ValueError, match="unknown source"):
        rig.ctl.select_source("joystick", rig.now)


def test_bad_targets_are_counted_and_do_not_move_the_arm():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    with pytest.raises(TargetRejected):
        rig.ctl.on_target("policy", D.ALL_JOINTS, [float("nan")] * 23, rig.now + 0.05, rig.now)
    with pytest.raises(TargetRejected):
        rig.ctl.on_target("policy", ("a", "b"), [0.0, 0.0], rig.now + 0.05, rig.now)
    d = rig.ctl.diagnostics()
    assert d["rejected_targets"] == 2 and d["shield_non_finite"] == 1 and d["shield_names"] == 1
    rig.run(0.3)
    assert rig.arm.sent == [] or np.allclose(rig.arm.sent[-1], rig.home)


def test_arming_needs_a_joint_state_and_the_other_device():
    cfg = RuntimeConfig()
    ctl = make_arm_controller(cfg, IdealArm(cfg.robot.arm_home, lambda: T0))
    with pytest.raises(DeviceError, match="no joint state"):
        ctl.arm(T0)
    ctl.tick(T0)
    with pytest.raises(DeviceError, match="other device"):
        ctl.arm(T0)


def test_device_state_stopping_latches():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    frozen = rig.now
    rig.arm.clock = lambda: frozen
    rig.run(0.2, lambda t: rig.home)
    assert rig.ctl.mode is Mode.STOPPED and "joint states stopped" in rig.ctl.reason
    assert rig.ctl.stop_kind is StopKind.STATE_STALL and StopKind.STATE_STALL.is_stall


# ------------------------------------------------------------------ xArm
# (the xarm backend and the controller over the real SDK: tests/unit/test_xarm_box.py)
def test_named_codes_from_the_issue():
    assert xarm_error_name(22) == "C22 self-collision"
    assert xarm_error_name(23) == "C23 joint angle over limit"
    assert xarm_error_name(24) == "C24 speed over limit" and xarm_error_name(60).startswith("C60 linear (TCP) speed")
    assert xarm_error_name(31) == "C31 collision or abnormal current"
    assert xarm_error_name(35) == "C35 safety boundary reached"
    assert xarm_error_name(999).startswith("C999 unknown")


# ------------------------------------------------------------------ hand
class HeldHand(HandDevice):
    def __init__(self, q, clock):
        self.q, self.clock = np.array(q, float), clock
        self.sent: list[np.ndarray] = []

    def connect(self): ...
    def disconnect(self): ...

    def read_state(self):
        return JointSample(self.clock(), self.q.copy(), np.zeros(16), np.zeros(16))

    def send_torque(self, tau):
        self.sent.append(np.array(tau, float))


def hand_rig(device=None):
    """A hand controller on a hand that stays where the test puts it (``device``: a HeldHand
    class, HeldHand by default); ``now`` is a mutable clock."""
    cfg = RuntimeConfig()
    now = [T0]
    hand = (device or HeldHand)(cfg.robot.hand_home, lambda: now[0])
    ctl = make_hand_controller(cfg, hand)
    ctl.set_context(np.array(cfg.robot.arm_home))
    return cfg, now, hand, ctl


def test_hand_pd_law_gains_and_torque_limit():
    cfg, now, hand, ctl = hand_rig()
    ctl.tick(now[0])
    assert np.allclose(hand.sent[-1], 0.0)  # disarmed: holding where it is
    ctl.arm(now[0])
    hand.q = hand.q + 0.01  # measured 0.01 rad past the held target
    now[0] += 1 / 300
    out = ctl.tick(now[0])
    kp, kd = np.array(cfg.control.hand.kp), np.array(cfg.control.hand.kd)
    v = ctl.velocity.v
    assert np.allclose(out.torque, kp * (out.q - hand.q) - kd * v)
    hand.q = hand.q + 1.0
    now[0] += 1 / 300
    out = ctl.tick(now[0])
    assert np.allclose(np.abs(out.torque), cfg.control.hand.torque_limit)
    assert ctl.diagnostics()["shield_torque"] >= 1


def test_velocity_filter_converges_and_ignores_repeats():
    f = VelocityFilter(cutoff_hz=50.0)
    for k in range(200):
        v = f.update(k / 333.0, np.array([0.5 * k / 333.0]))
    assert v[0] == pytest.approx(0.5, rel=1e-3)
    assert f.update(199 / 333.0, np.array([9.0]))[0] == pytest.approx(v[0])


# ------------------------------------------------------------------ deadline loop
class FakeTime:
    def __init__(self):
        self.t = 0.0
        self.extra = {}

    def clock(self):
        return self.t

    def sleep(self, dt):
        self.t += dt


def test_deadline_loop_keeps_absolute_deadlines_without_drift():
    ft = FakeTime()
    ticks = []

    def tick(deadline):
        ticks.append(deadline)
        ft.t += 0.001  # work
    loop = DeadlineLoop(100.0, tick, clock=ft.clock, sleep=ft.sleep, spin_s=0.0)
    loop.run(max_ticks=1000)
    assert ticks[-1] == pytest.approx(10.0, abs=1e-9)  # the 1000th deadline, no drift
    assert np.allclose(np.diff(ticks), 0.01) and loop.stats.overruns == 0


def test_deadline_loop_skips_overrun_deadlines_and_keeps_phase():
    ft = FakeTime()
    ticks = []

    def tick(deadline):
        ticks.append(deadline)
        if len(ticks) == 3:
            ft.t += 0.035  # one slow tick spans three more deadlines
    loop = DeadlineLoop(100.0, tick, clock=ft.clock, sleep=ft.sleep, spin_s=0.0)
    loop.run(max_ticks=6)
    assert ticks == pytest.approx([0.01, 0.02, 0.03, 0.07, 0.08, 0.09])
    assert loop.stats.overruns == 3


def test_loop_statistics_summary_and_misses():
    st = LoopStatistics(period_s=0.01)
    for k, late in enumerate([0.0001] * 98 + [0.006, 0.0002]):
        st.record(k * 0.01, late, 0.0005)
    s = st.summary()
    assert s["misses"] == 1 and s["lateness_max_ms"] == pytest.approx(6.0)
    assert s["rate_hz"] == pytest.approx(100.0)
    assert LatencySummary.of([]).n == 0


def test_whole_run_rate_counts_a_stall_that_the_one_second_rate_has_forgotten():
    st = LoopStatistics(period_s=0.01)
    t = [k * 0.01 for k in range(300)] + [3.5 + k * 0.01 for k in range(200)]   # a 0.5 s stall at 3 s
    for x in t:
        st.record(x, 0.0, 0.0005)
    s = st.summary()
    assert s["rate_hz"] == pytest.approx(100.0)                   # the last second alone
    assert s["mean_rate_hz"] == pytest.approx(499 / 5.49, abs=0.01)   # 500 ticks over 5.49 s


LOWER_PRIORITY_PROBE = """
import os, threading
from robot_runtime.control.loop import lower_priority
nice = lambda: os.getpriority(os.PRIO_PROCESS, 0)
before, seen, go = nice(), {}, threading.Event()
def early():                                  # started before the call, like the middleware's threads
    go.wait(); seen["early"] = nice()
t = threading.Thread(target=early); t.start()
said = lower_priority(4)
go.set(); t.join()
late = threading.Thread(target=lambda: seen.__setitem__("late", nice())); late.start(); late.join()
print(before, nice(), seen["early"], seen["late"], said)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread niceness is Linux's")
def test_lower_priority_reaches_threads_started_before_and_after_it():
    out = subprocess.run([sys.executable, "-c", LOWER_PRIORITY_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    before, main, early, late, *said = out.stdout.split()
    assert int(main) == int(early) == int(late) == min(19, int(before) + 4), out.stdout
    assert " ".join(said) == f"nice {main}"


REALTIME_PROBE = """
import os, threading
from robot_runtime.control.loop import request_realtime
said = request_realtime(7, inherited=False)
seen = {}
t = threading.Thread(target=lambda: seen.__setitem__("later", os.sched_getscheduler(0))); t.start(); t.join()
print(said.split(",")[0], os.sched_getscheduler(0) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO,
      seen["later"] == os.SCHED_OTHER)
"""


@pytest.mark.skipif(not hasattr(os, "SCHED_RESET_ON_FORK"), reason="Linux scheduling")
def test_a_realtime_thread_that_is_not_inherited_starts_ordinary_threads():
    out = subprocess.run([sys.executable, "-c", REALTIME_PROBE], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    if "refused" in out.stdout or not out.stdout.startswith("SCHED_FIFO"):
        pytest.skip(f"SCHED_FIFO refused here: {out.stdout.strip()}")
    assert out.stdout.split() == ["SCHED_FIFO", "7", "True", "True"], out.stdout


def test_hand_rearm_continues_from_the_held_target():
    cfg, now, hand, ctl = hand_rig()
    ctl.tick(now[0])
    held = ctl.tick(now[0]).q
    ctl.estop()
    hand.q = hand.q + 0.05  # the fingers sag while stopped
    now[0] += 1 / 300
    assert np.array_equal(ctl.tick(now[0]).q, held)  # holding the target, not chasing the sag
    ctl.arm(now[0])
    now[0] += 1 / 300
    assert np.abs(ctl.tick(now[0]).q - held).max() <= cfg.control.hand.max_step[0] + 1e-12


class LaggingArm(IdealArm):
    """An arm whose joints follow the last servo target with a first-order lag (time constant
    ``tau`` s), as the twin's servo does: where it is can differ from what it was told."""

    def __init__(self, q, clock, tau=0.05):
        super().__init__(q, clock)
        self.target, self.tau, self._t = self.q.copy(), tau, clock()

    def read_state(self):
        t = self.clock()
        self.q = self.q + (self.target - self.q) * (1.0 - np.exp(-(t - self._t) / self.tau))
        self._t = t
        return JointSample(t, self.q.copy(), np.zeros(7), np.zeros(7))

    def send_servo_target(self, q):
        self.target = np.array(q, float)
        self.sent.append(self.target.copy())


def test_arm_rearm_starts_from_where_the_arm_is():
    """Moved by hand while stopped, then re-armed: the first servo target is within one tick's
    limit of where the arm is now (arm() once restarted from the state of the tick before the
    request, and the first target pulled the arm back 0.1 rad at full speed)."""
    clock = [T0]
    rig = Rig(device=LaggingArm(RuntimeConfig().robot.arm_home, lambda: clock[0]))
    rig.arm.clock = lambda: rig.now
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    rig.run(0.3, lambda t: rig.home)
    rig.ctl.estop()
    rig.run(0.05)
    rig.arm.q = rig.arm.q + 0.1   # moved by hand while stopped (e.g. in manual mode)...
    rig.arm.target = rig.arm.q.copy()   # ...where it now holds
    n = len(rig.arm.sent)
    rig.ctl.arm(rig.now)
    rig.run(2 / 120)
    first = rig.arm.sent[n]
    per_tick = rig.ctl.limits.max_step
    assert np.all(np.abs(first - rig.arm.q) <= per_tick + 1e-9), (first - rig.arm.q, per_tick)


# ------------------------------------------------------------------ values that are not finite
def test_the_other_devices_joints_are_taken_only_when_finite():
    rig = Rig()
    good = rig.ctl.context.copy()
    for bad in (np.full(16, np.nan), np.r_[good[:15], np.inf], good[:7], [[1.0, 2.0]], "x"):
        assert rig.ctl.set_context(bad) is False
        assert np.array_equal(rig.ctl.context, good)
    assert rig.ctl.rejected_targets["context"] == 5
    assert rig.ctl.set_context(good + 0.01) and np.allclose(rig.ctl.context, good + 0.01)


def test_nan_measured_joints_stop_the_arm_and_nothing_is_sent():
    rig = Rig()
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    rig.run(0.3, lambda t: rig.home)
    n_sent = len(rig.arm.sent)
    rig.arm.q[2] = np.nan
    outs = rig.run(0.1, lambda t: rig.home)
    assert rig.ctl.mode is Mode.STOPPED and "measured joints not finite (joint3)" in rig.ctl.reason
    assert rig.ctl.stop_kind is StopKind.MEASURED_NOT_FINITE
    assert len(rig.arm.sent) == n_sent and rig.arm.stops == 1
    assert all(o.q is None for o in outs)


def test_a_shield_output_that_is_not_finite_is_never_sent():
    """Joint limits that are NaN (a corrupt config that got past its checks, say) make the
    shield's output NaN: the controller stops instead of sending it. (With the workspace check on,
    the shield itself refuses such a step; this is the controller's own check behind it.)"""
    rig = Rig()
    rig.ctl.workspace = None
    rig.run(0.05)
    rig.ctl.arm(rig.now)
    rig.run(0.2, lambda t: rig.home)
    n_sent = len(rig.arm.sent)
    rig.ctl.limits.max_step[:] = np.nan
    rig.run(0.1, lambda t: rig.home + 0.01)
    assert rig.ctl.mode is Mode.STOPPED and "shield output not finite" in rig.ctl.reason
    assert rig.ctl.stop_kind is StopKind.SHIELD_NOT_FINITE
    assert len(rig.arm.sent) == n_sent and all(np.all(np.isfinite(q)) for q in rig.arm.sent)


class FailingHand(HeldHand):
    """A held hand whose reads fail while ``fail`` is set (a dropped CAN bus, say)."""

    fail = False

    def read_state(self):
        if self.fail:
            raise DeviceError("CAN bus: no reply")
        return super().read_state()


def test_a_failed_hand_read_stops_the_hand_and_the_loop_goes_on():
    cfg, now, hand, ctl = hand_rig(FailingHand)
    for _ in range(30):
        ctl.tick(now[0])
        now[0] += 1 / 300
    ctl.arm(now[0])
    hand.fail = True
    out = ctl.tick(now[0])        # raised DeviceError out of the loop before
    assert ctl.mode is Mode.STOPPED and "hand read failed: CAN bus" in ctl.reason
    assert ctl.stop_kind is StopKind.DEVICE_ERROR
    assert out.q is None and any("CAN bus" in f for f in ctl.status()["faults"])
    hand.fail = False
    now[0] += 1 / 300
    assert ctl.tick(now[0]).q is not None and np.all(np.isfinite(hand.sent[-1]))


def test_the_controller_status_round_trips_and_refuses_what_it_cannot_read():
    st = ControllerStatus("arm", Mode.STOPPED, StopKind.WATCHDOG, "watchdog: no policy target", "policy", "latch",
                          ("C23 joint limit",))
    assert ControllerStatus.from_json(st.to_json()) == st
    old = ControllerStatus.from_dict({"controller": "hand", "mode": "armed"})   # no stop field: none
    assert old.stop is StopKind.NONE and old.faults == ()
    for bad, match in (([1], "JSON object"), ({"stop": "estop"}, "no 'mode'"), ({"mode": "flying"}, "flying"),
                       ({"mode": "stopped", "stop": "tired"}, "tired"), ({"mode": "armed", "faults": "x"}, "faults")):
        with pytest.raises(ValueError, match=match):
            ControllerStatus.from_dict(bad)
