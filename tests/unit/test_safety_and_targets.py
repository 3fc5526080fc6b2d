"""The safety shield, target interpolation and the watchdog: pure functions, injected time."""
import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.factory import RobotPoints, workspace_of
from robot_runtime.control.safety import JointLimits, ShieldState, Workspace, brake, shield_step
from robot_runtime.control.targets import Freshness, TargetBuffer, TargetRejected, freshness, select_joints
from robot_runtime.kinematics import UrdfModel

DT = 1.0 / 120


def limits(n=3, v=1.0, a=10.0, step=0.02, margin=0.05):
    names = tuple(f"j{i}" for i in range(n))
    return JointLimits(names, np.full(n, -1.0), np.full(n, 1.0), margin, np.full(n, v), np.full(n, a), np.full(n, step))


# ------------------------------------------------------------------ interpolation
def test_interpolation_is_exact_at_stamps_and_linear_between():
    buf = TargetBuffer()
    qs = {10.00: np.array([0.0, 1.0]), 10.05: np.array([0.5, 0.0]), 10.10: np.array([1.0, 2.0])}
    for t, q in qs.items():
        buf.add(t, q, received=t - 0.04)
    for t, q in qs.items():
        assert np.array_equal(buf.sample(t), q)
    assert np.allclose(buf.sample(10.025), [0.25, 0.5])
    assert np.allclose(buf.sample(10.09), [0.9, 1.6])


def test_interpolation_never_extrapolates():
    buf = TargetBuffer()
    buf.add(1.0, np.array([0.0]), 1.0)
    buf.add(1.05, np.array([1.0]), 1.0)
    assert np.array_equal(buf.sample(1.2), [1.0])  # past the newest: the newest, not 4.0
    assert np.array_equal(buf.sample(0.9), [0.0])  # before the oldest: the oldest
    assert TargetBuffer().sample(1.0) is None


def test_buffer_refuses_far_future_and_late_targets():
    buf = TargetBuffer(max_lead_s=1.0, max_age_s=0.1)
    with pytest.raises(TargetRejected) as e:
        buf.add(105.0, np.zeros(2), received=100.0)
    assert e.value.reason == "future_target" and "clocks" in str(e.value)
    with pytest.raises(TargetRejected) as e:
        buf.add(99.5, np.zeros(2), received=100.0)
    assert e.value.reason == "late_target"
    assert len(buf) == 0


def test_buffer_keeps_stamp_order_and_capacity():
    buf = TargetBuffer(capacity=3)
    for t in (1.02, 1.0, 1.04, 1.03):
        buf.add(t, np.array([t]), 1.0)
    assert buf.newest.t == 1.04 and len(buf) == 3
    assert np.allclose(buf.sample(1.035), [1.035])


# ------------------------------------------------------------------ names
def test_target_names_any_order_selects_own_joints():
    names = list(reversed(D.ARM_JOINTS + D.HAND_JOINTS))
    values = list(range(23))[::-1]  # value i for joint i of the forward order
    q = select_joints(names, values, D.ARM_JOINTS + D.HAND_JOINTS, D.HAND_JOINTS)
    assert np.array_equal(q, np.arange(7, 23))


@pytest.mark.parametrize("names,values,reason,text", [
    (D.ARM_JOINTS + D.HAND_JOINTS[:-1], [0.0] * 22, "names", "missing ['joint_15.0']"),
    (D.ARM_JOINTS + D.HAND_JOINTS[:-1] + ("elbow",), [0.0] * 23, "names", "unexpected ['elbow']"),
    (D.ARM_JOINTS + D.HAND_JOINTS[:-1] + ("joint1",), [0.0] * 23, "names", "more than once"),
    (D.ARM_JOINTS + D.HAND_JOINTS, [0.0] * 22, "names", "23 joint names but 22"),
    (D.ARM_JOINTS + D.HAND_JOINTS, [0.0, float("nan")] + [0.0] * 21, "non_finite", "joint2"),
    (D.ARM_JOINTS + D.HAND_JOINTS, [float("inf")] + [0.0] * 22, "non_finite", "joint1"),
])
def test_target_rejections_name_the_problem(names, values, reason, text):
    with pytest.raises(TargetRejected) as e:
        select_joints(names, values, D.ARM_JOINTS + D.HAND_JOINTS, D.ARM_JOINTS)
    assert e.value.reason == reason and text in str(e.value)


# ------------------------------------------------------------------ watchdog
def test_watchdog_waits_then_holds_then_latches():
    hold, latch = 0.125, 0.25  # exact in binary, so the boundaries are exact
    assert freshness(None, 0.0, 5.0, hold, latch) is Freshness.WAITING
    assert freshness(0.9, 1.0, 5.0, hold, latch) is Freshness.WAITING  # arrived before engagement
    assert freshness(2.0, 1.0, 2.125, hold, latch) is Freshness.FRESH
    assert freshness(2.0, 1.0, 2.126, hold, latch) is Freshness.HOLD
    assert freshness(2.0, 1.0, 2.25, hold, latch) is Freshness.HOLD
    assert freshness(2.0, 1.0, 2.251, hold, latch) is Freshness.LATCH


# ------------------------------------------------------------------ shield
def test_shield_clamps_to_limits_with_margin():
    lim = limits(v=100.0, a=1e6, step=10.0)
    prev = ShieldState.at_rest([0.9, -0.9, 0.0])
    res = shield_step(lim, prev, [2.0, -2.0, 0.0], DT)
    assert np.allclose(res.q, [0.95, -0.95, 0.0]) and res.reasons == ("position",)


def test_shield_velocity_then_step_limit():
    lim = limits(v=1.0, a=1e6, step=10.0)
    res = shield_step(lim, ShieldState.at_rest([0.0] * 3), [0.5, -0.5, 0.001], DT)
    assert np.allclose(res.q, [DT, -DT, 0.001]) and res.reasons == ("velocity",)
    lim = limits(v=100.0, a=1e6, step=0.005)
    res = shield_step(lim, ShieldState.at_rest([0.0] * 3), [0.5, -0.5, 0.001], 0.05)  # a late tick
    assert np.allclose(res.q, [0.005, -0.005, 0.001]) and res.reasons == ("step",)


def test_shield_acceleration_limit_ramps_velocity():
    lim = limits(v=1.0, a=12.0, step=1.0)
    state = ShieldState.at_rest([0.0] * 3)
    vs = []
    for _ in range(12):
        res = shield_step(lim, state, [0.9, 0.0, 0.0], DT)
        state = res.state
        vs.append(res.v[0])
    dv = np.diff([0.0] + vs)
    assert np.all(dv <= 12.0 * DT + 1e-9) and vs[-1] == pytest.approx(1.0)
    assert "acceleration" in shield_step(lim, ShieldState.at_rest([0.0] * 3), [0.9, 0, 0], DT).reasons


def test_shield_refuses_non_finite_and_brakes():
    lim = limits()
    prev = ShieldState(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.0, -0.5]))
    res = shield_step(lim, prev, [np.nan, 0.0, 0.0], DT)
    assert res.reasons == ("non_finite",)
    assert np.all(np.abs(res.v) <= np.abs(prev.v))  # slowing down, not jumping to the NaN target


def test_shield_is_pure():
    lim = limits()
    prev = ShieldState(np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.0, -0.5]))
    q_des = np.array([0.5, 0.5, 0.5])
    before = (prev.q.copy(), prev.v.copy(), q_des.copy())
    a = shield_step(lim, prev, q_des, DT)
    b = shield_step(lim, prev, q_des, DT)
    assert np.array_equal(a.q, b.q) and a.reasons == b.reasons
    assert all(np.array_equal(x, y) for x, y in zip(before, (prev.q, prev.v, q_des)))


def test_brake_decelerates_at_the_limit_and_never_reverses():
    lim = limits(v=2.0, a=10.0, step=1.0)
    state = ShieldState(np.array([0.0, 0.0, 0.0]), np.array([1.0, -0.5, 0.0]))
    qs = []
    for _ in range(30):
        res = brake(lim, state, DT)
        assert np.all(np.abs(res.v) <= np.abs(state.v) + 1e-12)
        assert np.all(np.abs(res.v - state.v) <= 10.0 * DT + 1e-9)
        state = res.state
        qs.append(res.q.copy())
    assert np.allclose(state.v, 0.0)
    assert np.all(np.diff(np.array(qs)[:, 0]) >= 0) and np.all(np.diff(np.array(qs)[:, 1]) <= 0)
    assert qs[-1][2] == 0.0


def test_shield_points_are_where_the_twin_puts_the_flange_and_fingertips():
    """The shield's flange and fingertips (pinocchio on the URDF, arm and hand passed as pieces)
    are where MuJoCo's kinematics of the twin's MJCF put them."""
    import mujoco

    m = mujoco.MjModel.from_xml_path(str(D.description_path(D.MJCF_NAME)))
    d = mujoco.MjData(m)
    points = RobotPoints()
    rng = np.random.default_rng(0)
    lim = np.asarray(D.ALL_LIMITS)
    for _ in range(20):
        q = rng.uniform(lim[:, 0], lim[:, 1])
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        got = points.for_arm(q[:7], q[7:])
        assert set(got) == {"flange", *D.FINGERTIP_FRAMES}
        for name, p in got.items():
            assert np.linalg.norm(p - d.site(D.FLANGE_FRAME if name == "flange" else name).xpos) < 1e-3, name
        hand = points.for_hand(q[7:], q[:7])
        assert set(hand) == set(D.FINGERTIP_FRAMES) and all(np.array_equal(hand[k], got[k]) for k in hand)


def test_workspace_refuses_steps_below_the_table():
    cfg = RuntimeConfig()
    points = RobotPoints()
    lim = JointLimits(tuple(D.ARM_JOINTS), np.asarray(D.ARM_LIMITS)[:, 0], np.asarray(D.ARM_LIMITS)[:, 1], 0.0,
                      np.full(7, 3.0), np.full(7, 1e6), np.full(7, 1.0))
    hand = np.array(cfg.robot.hand_home)
    ws = workspace_of(cfg)
    fn = lambda q: points.for_arm(q, hand)  # noqa: E731
    q = np.array(cfg.robot.arm_home)
    assert ws.violation(fn(q))[0] == 0.0
    # Lower the table to just under the fingertips: a step that lowers the hand is refused.
    tips_z = min(p[2] for n, p in fn(q).items() if n != "flange")
    ws_low = Workspace(table_z=tips_z - 0.0005, flange_clearance=0.0, fingertip_clearance=0.0)
    J = UrdfModel.from_file(D.description_path(D.URDF_NAME)).jacobian(np.concatenate([q, hand]), D.FLANGE_FRAME)[:3, :7]
    down = -np.linalg.pinv(J) @ np.array([0.0, 0.0, 0.01])
    prev = ShieldState.at_rest(q, fn)
    res = shield_step(lim, prev, q + 0.5 * down, DT, ws_low, fn)
    assert "workspace" in res.reasons and np.array_equal(res.q, q)
    assert "tip would leave the workspace" in res.detail
    up = shield_step(lim, prev, q - 0.5 * down, DT, ws_low, fn)
    assert "workspace" not in up.reasons and not np.array_equal(up.q, q)


def test_workspace_box_and_flange_speed():
    ws = Workspace(box_min=(-1, -1, -1), box_max=(1, 1, 1), table_z=0.0, flange_clearance=0.05)
    depth, names = ws.violation({"flange": np.array([0.0, 0.0, 0.02]), "index_tip": np.array([1.5, 0, 0.5])})
    assert names == ["flange", "index_tip"] and depth == pytest.approx(0.5)
    cfg = RuntimeConfig()
    points = RobotPoints()
    hand = np.array(cfg.robot.hand_home)
    fn = lambda q: points.for_arm(q, hand)  # noqa: E731
    lim = JointLimits(tuple(D.ARM_JOINTS), np.asarray(D.ARM_LIMITS)[:, 0], np.asarray(D.ARM_LIMITS)[:, 1], 0.0,
                      np.full(7, 3.0), np.full(7, 1e6), np.full(7, 1.0))
    q = np.array(cfg.robot.arm_home)
    slow = Workspace(max_flange_speed=0.2)
    res = shield_step(lim, ShieldState.at_rest(q, fn), q + np.array([0.02, 0, 0, 0, 0, 0, 0]), DT, slow, fn)
    speed = np.linalg.norm(res.points["flange"] - fn(q)["flange"]) / DT
    assert "tcp_speed" in res.reasons and speed == pytest.approx(0.2, rel=0.02)


def test_hand_workspace_uses_the_arm_pose_and_refuses_a_finger_into_the_table():
    cfg = RuntimeConfig()
    points = RobotPoints()
    arm = np.array(cfg.robot.arm_home)
    fn = lambda q: points.for_hand(q, arm)  # noqa: E731
    q = np.array(cfg.robot.hand_home)
    q[1] = 0.8  # index proximal bent, so flexing it moves the tip up or down
    lim = JointLimits(tuple(D.HAND_JOINTS), np.asarray(D.HAND_LIMITS)[:, 0], np.asarray(D.HAND_LIMITS)[:, 1], 0.0,
                      np.full(16, 10.0), np.full(16, 1e6), np.full(16, 1.0))
    assert set(fn(q)) == set(D.FINGERTIP_FRAMES)  # the hand is judged by its fingertips only
    ws = Workspace(table_z=fn(q)["index_tip"][2] - 0.0005, fingertip_clearance=0.0)
    step = np.zeros(16)
    step[1] = 0.05  # index proximal joint
    lower_z = {s: fn(q + s * step)["index_tip"][2] for s in (1, -1)}
    down = min(lower_z, key=lower_z.get)
    res = shield_step(lim, ShieldState.at_rest(q, fn), q + down * step, DT, ws, fn)
    assert "workspace" in res.reasons and np.array_equal(res.q, q) and "index_tip" in res.detail
    up = shield_step(lim, ShieldState.at_rest(q, fn), q - down * step, DT, ws, fn)
    assert "workspace" not in up.reasons and up.q[1] != q[1]


def test_a_nan_in_the_other_devices_joints_fails_the_workspace_check_instead_of_passing_it():
    """A NaN hand joint made every fingertip NaN, and NaN compares false with every bound: the
    workspace and TCP-speed checks passed whatever the arm did."""
    cfg = RuntimeConfig()
    points = RobotPoints()
    lim = JointLimits(tuple(D.ARM_JOINTS), np.asarray(D.ARM_LIMITS)[:, 0], np.asarray(D.ARM_LIMITS)[:, 1], 0.0,
                      np.full(7, 3.0), np.full(7, 1e6), np.full(7, 1.0))
    hand = np.array(cfg.robot.hand_home)
    q = np.array(cfg.robot.arm_home)
    prev = ShieldState.at_rest(q, lambda x: points.for_arm(x, hand))
    hand[3] = np.nan
    fn = lambda x: points.for_arm(x, hand)  # noqa: E731
    assert workspace_of(cfg).depths(fn(q))["index_tip"] == np.inf
    res = shield_step(lim, prev, q + 0.01, DT, workspace_of(cfg), fn)
    assert "workspace" in res.reasons and np.array_equal(res.q, q) and "not finite" in res.detail
