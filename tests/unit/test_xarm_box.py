"""The `xarm` backend with the real xarm-python-sdk against the emulated control box on loopback.

Each test serves its own box on an address of its own (the box's ports are fixed), and
connects only to it.
"""
import itertools
import time

import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.config import XArmConfig
from robot_runtime.devices.xarm import XArm
from robot_runtime.errors import DeviceError
from robot_runtime.twin.xarm_box import XArmBox


def _until(predicate, timeout: float) -> bool:
    """Poll ``predicate`` (the SDK's report-fed values offer no event) until true or ``timeout``."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


_ADDRESSES = itertools.count(40)


@pytest.fixture
def box_and_arm():
    host = f"127.0.0.{next(_ADDRESSES)}"   # a loopback address of its own per test
    box = XArmBox(host).start()
    arm = XArm(XArmConfig(ip=host))
    try:
        arm.connect()
        yield box, arm
    finally:
        arm.disconnect()
        box.close()


def _stream(arm, q_from, q_to, seconds: float, hz: float = 120.0):
    """Stream a linear ramp of servo targets at ``hz`` (a rate of the stream, not a wait)."""
    n = int(seconds * hz)
    for k in range(1, n + 1):
        arm.send_servo_target(q_from + (q_to - q_from) * k / n)
        time.sleep(1.0 / hz)


def test_the_real_sdk_connects_arms_and_streams_to_the_box(box_and_arm):
    box, arm = box_and_arm
    s = arm.read_state()
    assert np.allclose(s.position, D.ARM_HOME, atol=1e-6) and arm.api.version.endswith("v2.5.0")
    assert arm.faults() == []
    arm.enable()
    assert int(arm.api.mode) == 1 and box.enabled and box.mode == 1
    goal = s.position + 0.2
    _stream(arm, s.position, goal, 3.0)     # several seconds at 120 Hz, every target taken
    assert _until(lambda: np.allclose(arm.read_state().position, goal, atol=1e-3), 2.0)
    assert box.servo_targets == 360 and arm.faults() == []
    assert not box.unhandled, f"registers the SDK used that the box does not know: {dict(box.unhandled)}"


def test_an_error_is_named_stops_motion_and_needs_an_explicit_rearm(box_and_arm):
    box, arm = box_and_arm
    arm.enable()
    q0 = arm.read_state().position
    box.raise_error(23)
    assert _until(lambda: any(f.code == 23 and f.error for f in arm.faults()), 2.0)
    assert "C23 joint angle over limit" in str(arm.faults()[0])
    with pytest.raises(DeviceError, match=r"code 1 \(the controller has an uncleared error\).*C23"):
        arm.send_servo_target(q0 + 0.1)                 # refused, named: the controller latches a stop
    assert np.allclose(arm.read_state().position, q0, atol=1e-6)
    assert _until(lambda: int(arm.api.mode) == 0 and int(arm.api.state) == 4, 2.0)
    arm.enable()                                        # clear, enable, servo mode, ready
    assert arm.faults() == [] and int(arm.api.mode) == 1
    _stream(arm, q0, q0 + 0.1, 0.5)
    assert _until(lambda: np.allclose(arm.read_state().position, q0 + 0.1, atol=1e-3), 2.0)


def test_with_the_twins_arm_behind_it_a_stream_starts_from_where_the_arm_is():
    """The box holds where the arm is while it does not move: the first servo setpoint it sends
    the twin's arm is one step from the arm's pose (it once held its power-on target, and the
    first setpoint of a stream jumped toward that stale pose)."""
    from robot_runtime.twin.xarm_box import TwinArmLink

    sent = []
    link = TwinArmLink(lambda q: sent.append(np.array(q)))
    pose = np.asarray(D.ARM_HOME) + np.array([0.0, -0.35, 0.0, 0.1, 0.0, 0.0, 0.0])   # not where the box began
    link.on_state(pose, np.zeros(7))
    host = f"127.0.0.{next(_ADDRESSES)}"
    with XArmBox(host, arm=link) as box:
        arm = XArm(XArmConfig(ip=host))
        arm.connect()
        try:
            assert _until(lambda: np.allclose(arm.read_state().position, pose, atol=1e-6), 2.0)
            arm.enable()
            arm.send_servo_target(pose + 0.01)
            assert _until(lambda: len(sent) > 0, 2.0)
            assert np.abs(sent[0] - pose).max() <= box.max_joint_speed * box.period + 1e-6, sent[0] - pose
        finally:
            arm.disconnect()


@pytest.mark.parametrize("fault", ["joint_limit", "tcp_speed", "boundary", "self_collision"])
def test_the_box_raises_the_controllers_faults_and_the_backend_names_them(box_and_arm, fault):
    """A servo target past joint 1's limit raises C23; one that asks the flange to move faster
    than 1 m/s from the last target raises C60 (servo mode's linear speed limit). Either way
    the send is refused with the code, the arm stops where it is, and the fault is named from
    the report. Joint 4 near its lower limit folds the forearm down onto the base: C22."""
    box, arm = box_and_arm
    arm.enable()
    q0 = arm.read_state().position
    bad = q0.copy()
    if fault == "joint_limit":
        bad[0] = D.ARM_LIMITS[0][1] + 0.2
        code, name = 23, "C23 joint angle over limit"
    elif fault == "boundary":   # a box 5 cm around the flange: joint 1 by 0.3 rad leaves it
        p = box._flange(q0)
        box.boundary = (p - 0.05, p + 0.05)
        bad[0] += 0.3
        code, name = 35, "C35 safety boundary reached"
        arm.send_servo_target(q0)
    elif fault == "self_collision":
        bad[3] = D.ARM_LIMITS[3][0] + 0.01
        code, name = 22, "C22 self-collision"
    else:
        arm.send_servo_target(q0)
        bad[0] += 0.3        # 0.3 rad of joint 1 within a few ms: the flange at well over 1 m/s
        code, name = 60, "C60 linear (TCP) speed over limit in servo mode"
    with pytest.raises(DeviceError, match="code 1"):   # refused at once: the answer carries the error
        arm.send_servo_target(bad)
    assert _until(lambda: any(f.code == code for f in arm.faults()), 2.0), (box.error_code, arm.faults())
    assert name in str(arm.faults()) and box.mode == 0 and box.state == 4
    with pytest.raises(DeviceError, match=f"uncleared error.*{name.split()[0]}"):
        arm.send_servo_target(q0)
    assert np.abs(arm.read_state().position - q0).max() < 0.05


def test_a_pulled_cable_is_a_named_fault(box_and_arm):
    box, arm = box_and_arm
    arm.enable()
    box.drop_connections()
    assert _until(lambda: any("disconnected" in str(f) and f.error for f in arm.faults()), 5.0), arm.faults()


def test_an_injected_servo_stall_blocks_the_call_as_reported_for_the_sdk():
    host = f"127.0.0.{next(_ADDRESSES)}"
    with XArmBox(host, stall_s=0.19, stall_every_s=0.5) as box:
        arm = XArm(XArmConfig(ip=host))
        arm.connect()
        try:
            arm.enable()
            q = arm.read_state().position
            took = []
            for _ in range(120):   # one second at 120 Hz
                t0 = time.monotonic()
                arm.send_servo_target(q)
                took.append(time.monotonic() - t0)
                time.sleep(max(0.0, 1 / 120 - took[-1]))   # the stream's rate
            assert box.stalls >= 1 and max(took) >= 0.18 and np.median(took) < 0.01, (box.stalls, max(took))
        finally:
            arm.disconnect()


# ------------------------------------------------------------ the arm controller through the SDK
@pytest.fixture
def controller_on_box():
    """An armed ArmServoController over the real SDK and a box of its own, and ``run(seconds,
    target)``, which streams the policy's target and ticks the controller at 120 Hz."""
    from bench.xarm import armed_controller
    from robot_runtime.config import RuntimeConfig

    host = f"127.0.0.{next(_ADDRESSES)}"
    box = XArmBox(host).start()
    cfg = RuntimeConfig()
    arm = XArm(XArmConfig(ip=host))
    try:
        arm.connect()
        ctl = armed_controller(cfg, arm)
        home = arm.read_state().position

        def run(seconds, target=None):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                t = time.time()
                q = home if target is None else target
                ctl.on_target("policy", D.ALL_JOINTS, list(q) + list(cfg.robot.hand_home), t + 0.05, t)
                ctl.tick(t)
                time.sleep(1 / 120)   # the loop's rate
        yield box, ctl, home, run
    finally:
        arm.disconnect()
        box.close()


def test_the_arm_controller_latches_a_box_fault_and_rearms_only_when_asked(controller_on_box):
    """ArmServoController over the real SDK: a C31 from the box latches a stop naming it (the
    loop sends nothing more); the controller never re-enables the arm by itself; an explicit
    arm() clears the box, and the stream goes on from where the arm is."""
    from robot_runtime.interfaces import Mode, StopKind

    box, ctl, home, run = controller_on_box
    run(0.5, home + 0.05)
    assert ctl.mode is Mode.ARMED and box.servo_targets > 10
    box.raise_error(31)
    sent = box.servo_targets
    run(1.0, home + 0.1)
    assert ctl.mode is Mode.STOPPED and ctl.stop_kind in (StopKind.DEVICE_FAULT, StopKind.DEVICE_ERROR)
    assert "C31 collision" in ctl.reason, ctl.reason
    assert box.servo_targets == sent and box.error_code == 31     # nothing sent, nothing cleared
    ctl.arm(time.time())                                         # the operator's decision
    assert box.error_code == 0 and box.mode == 1
    run(0.5, home + 0.1)
    assert ctl.mode is Mode.ARMED and box.servo_targets > sent


def test_the_arm_controller_rides_through_a_servo_stall_without_a_speed_fault(controller_on_box):
    """bench.xarm's loop (the 120 Hz deadline loop, a 0.3 rad sine on joint 1 at 20 Hz targets)
    through a 0.3 s pause of the loop and 190 ms stalls of the servo call: the tick after one
    gives the arm one period's step, not a catch-up of the gap (which the box took as a flange
    faster than 1 m/s: C60), and the controller stays armed."""
    from bench.xarm import run_phase
    from robot_runtime.config import RuntimeConfig
    from robot_runtime.interfaces import Mode

    box, ctl, _, _ = controller_on_box
    cfg = RuntimeConfig()   # the fixture's controller's config
    run_phase(ctl, cfg, 1.0)
    time.sleep(0.3)   # the loop paused 0.3 s (what is tested), the target moving on meanwhile
    box.inject_stalls(0.19, 1.0)
    stats, _ = run_phase(ctl, cfg, 2.5)
    assert box.error_code == 0 and ctl.mode is Mode.ARMED, (box.error_code, ctl.reason)
    assert box.stalls >= 2 and stats.overruns > 0, (box.stalls, stats.overruns)


def test_the_twins_arm_pressed_on_the_table_raises_c31():
    """With the twin's arm behind the box (stepped here in real time, as sim_node steps it), a
    servo stream that lowers the arm into the table raises C31, named through the SDK, and the
    arm stops there."""
    import threading

    from robot_runtime.config import TwinConfig
    from robot_runtime.twin.sim import TwinSimulation
    from robot_runtime.twin.xarm_box import TwinArmLink

    sim = TwinSimulation(TwinConfig())
    command = [np.asarray(sim.arm_state().position, float)]
    link = TwinArmLink(lambda q: command.__setitem__(0, np.asarray(q, float)))
    stop = threading.Event()

    def twin():   # the physics in real time, the arm's states and contacts to the box
        t0, k = time.monotonic(), 0
        while not stop.is_set():
            sim.set_arm_target(command[0])
            sim.step()
            k += 1
            if k % 2 == 0:
                s = sim.arm_state()
                link.on_state(s.position, s.velocity, sim.robot_table_force())
            stop.wait(max(0.0, t0 + k * sim.dt - time.monotonic()))
    link.on_state(sim.arm_state().position, np.zeros(7))
    th = threading.Thread(target=twin, daemon=True)
    th.start()
    host = f"127.0.0.{next(_ADDRESSES)}"
    try:
        with XArmBox(host, arm=link) as box:
            arm = XArm(XArmConfig(ip=host))
            arm.connect()
            try:
                arm.enable()
                q0 = arm.read_state().position
                down = q0.copy()
                down[1] += 1.2     # the shoulder forward: the hand into the table
                try:
                    _stream(arm, q0, down, 3.0)
                except DeviceError:
                    pass           # the box refused a send once C31 was raised
                assert _until(lambda: any(f.code == 31 for f in arm.faults()), 2.0), (box.error_code, arm.faults())
                assert "C31 collision" in str(arm.faults())
            finally:
                arm.disconnect()
    finally:
        stop.set()
        th.join(2.0)
        sim.close()


@pytest.mark.parametrize("code", [22, 23, 24, 31, 35, 60])
def test_each_named_error_stops_the_stream_and_the_arm(controller_on_box, code):
    from robot_runtime.devices.xarm import xarm_error_name
    from robot_runtime.interfaces import Mode, StopKind

    box, ctl, home, run = controller_on_box
    run(0.2)
    assert ctl.mode is Mode.ARMED and box.servo_targets > 5
    io = ctl.diagnostics()
    assert 0 < io["device_io_p50_ms"] <= io["device_io_p99_ms"] < 100, io   # the SDK's round trips, per tick
    box.raise_error(code)
    run(0.4, home + 0.05)
    sent = box.servo_targets
    run(0.2, home + 0.05)
    assert box.servo_targets == sent, "no servo target may follow an error"
    assert ctl.mode is Mode.STOPPED and ctl.stop_kind in (StopKind.DEVICE_FAULT, StopKind.DEVICE_ERROR)
    assert xarm_error_name(code) in ctl.reason or f"C{code} " in ctl.reason, ctl.reason
    assert box.stop_requests >= 1 and box.error_code == code   # the arm told to stop, the error left for the operator


def test_rearming_is_refused_while_the_cause_persists(controller_on_box):
    from robot_runtime.interfaces import Mode

    box, ctl, home, run = controller_on_box
    box.raise_error(35, persists=True)
    run(0.3)
    assert ctl.mode is Mode.STOPPED
    with pytest.raises(DeviceError, match="C35 safety boundary reached"):
        ctl.arm(time.time())
    assert ctl.mode is Mode.STOPPED and box.mode == 0
    box.remove_cause()
    ctl.arm(time.time())
    run(0.3, home + 0.02)
    assert ctl.mode is Mode.ARMED and box.error_code == 0


def test_a_warning_is_reported_and_the_stream_goes_on(controller_on_box):
    from robot_runtime.interfaces import Mode

    box, ctl, home, run = controller_on_box
    box.raise_warning(11)
    run(0.5, home + 0.02)
    assert ctl.mode is Mode.ARMED and ctl.faults == ["W11 controller command buffer full"], (ctl.mode, ctl.faults)
    sent = box.servo_targets
    run(0.2, home + 0.03)
    assert box.servo_targets > sent


def test_an_arm_stopped_from_the_pendant_is_a_named_stop(controller_on_box):
    """Someone stops the arm outside this program (state 4): the next servo answer says "not
    ready", the SDK returns code 9, and the controller latches a stop that names it."""
    from robot_runtime.interfaces import Mode

    box, ctl, home, run = controller_on_box
    run(0.2)
    box.stop_from_outside()
    run(0.2, home + 0.02)
    assert ctl.mode is Mode.STOPPED and "code 9 (not ready to move)" in ctl.reason, ctl.reason


def test_an_unreachable_box_is_a_clear_error_and_one_that_comes_up_late_is_reached():
    import threading

    host = f"127.0.0.{next(_ADDRESSES)}"
    with pytest.raises(DeviceError, match=rf"{host} is not reachable after 0.5 s"):
        XArm(XArmConfig(ip=host, connect_timeout_s=0.5)).connect()
    box = XArmBox(host)
    later = threading.Timer(0.4, box.start)   # the box still booting when the first tries fail
    later.start()
    arm = XArm(XArmConfig(ip=host, connect_timeout_s=10.0))
    try:
        arm.connect()
        assert np.allclose(arm.read_state().position, D.ARM_HOME, atol=1e-6)
    finally:
        later.join()
        arm.disconnect()
        box.close()


def test_the_self_collision_model_folds_only_where_the_arm_meets_itself():
    """The home pose and the arm stretched forward are clear; the forearm folded down onto the
    base and the hand turned back into the upper arm are not (the names say which parts)."""
    from robot_runtime.kinematics import UrdfModel
    from robot_runtime.twin.xarm_box import _segment_distance, self_collision

    assert _segment_distance(np.zeros(3), np.array([1.0, 0, 0]), np.array([0.5, 1, 0]), np.array([0.5, 2, 0])) == 1.0
    assert _segment_distance(np.zeros(3), np.array([1.0, 0, 0]), np.array([0.5, -1, 1]), np.array([0.5, 1, 1])) == 1.0
    model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
    home = np.asarray(D.ARM_HOME, float)
    assert self_collision(model, home) is None
    forward = home.copy()
    forward[1], forward[3] = 0.5, 1.2        # reaching out over the table
    assert self_collision(model, forward) is None
    folded = home.copy()
    folded[3] = D.ARM_LIMITS[3][0] + 0.01
    hit = self_collision(model, folded)
    assert hit is not None and hit[1] == "base" and hit[2] < 0, hit


def test_the_real_time_report_carries_the_joints_at_100_hz_to_the_sdk():
    """Port 30003 (the SDK's report_type='real'): 87-byte frames at 100 Hz whose joint angles are
    the arm's; the SDK reads them (bench.xarm compares its age with polling)."""
    import socket
    import struct

    from xarm.wrapper import XArmAPI

    host = f"127.0.0.{next(_ADDRESSES)}"
    with XArmBox(host) as box:
        with socket.create_connection((host, 30003), timeout=2.0) as s:
            data, t0 = b"", time.monotonic()
            while time.monotonic() - t0 < 0.5:
                data += s.recv(4096)
        frames = [data[i:i + 87] for i in range(0, len(data) - 86, 87)]
        assert 40 <= len(frames) <= 60, len(frames)
        assert all(struct.unpack(">I", f[:4])[0] == 87 for f in frames)
        assert np.allclose(struct.unpack("<7f", frames[-1][7:35]), box.q, atol=1e-6)
        api = XArmAPI(host, is_radian=True, report_type="real")
        try:
            assert _until(lambda: np.allclose(api.angles[:7], box.q, atol=1e-5), 2.0), api.angles
        finally:
            api.disconnect()


def test_a_box_that_stops_answering_is_a_named_stop_within_the_command_timeout(controller_on_box):
    """The connections stay open but nothing is answered: the SDK call ends after
    ``arm.command_timeout_s`` (not the SDK's 2 s) with code 3, the controller latches a stop that
    says so, and the loop goes on ticking."""
    from robot_runtime.interfaces import Mode

    box, ctl, home, run = controller_on_box
    run(0.2)
    box.stop_answering()
    t0 = time.monotonic()
    run(0.3, home + 0.02)
    took = time.monotonic() - t0
    assert ctl.mode is Mode.STOPPED and "reply timeout" in ctl.reason and "got no answer" in ctl.reason, ctl.reason
    assert took < 0.3 + 2 * XArmConfig().command_timeout_s + 0.3, took   # bounded calls, not the SDK's 2 s each


@pytest.mark.parametrize("loss", ["cable", "hung"])
def test_a_lost_box_stops_the_controller_and_the_explicit_rearm_reconnects(controller_on_box, loss):
    """The box drops every connection (a pulled cable) or stops answering (hung): the
    controller stops with a message that says no answer came and how to come back, and sends
    nothing; re-arming refuses while the box is gone, and once it is back connects again, runs
    the enable sequence, and the stream goes on from where the arm is."""
    from robot_runtime.interfaces import Mode

    box, ctl, home, run = controller_on_box
    run(0.2)
    box.drop_connections() if loss == "cable" else box.stop_answering()
    run(0.5, home + 0.02)
    assert ctl.mode is Mode.STOPPED and "got no answer" in ctl.reason and "re-arm to reconnect" in ctl.reason, \
        ctl.reason
    sent = box.servo_targets
    if loss == "cable":
        with pytest.raises(DeviceError, match="not reachable"):
            ctl.arm(time.time())
        box.plug_in()
    else:
        box.stop_answering(False)
    ctl.arm(time.time())
    run(0.4, home + 0.02)
    assert ctl.mode is Mode.ARMED and box.servo_targets > sent + 10 and box.mode == 1
