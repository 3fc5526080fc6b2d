"""Calibration over live streams without ROS: which frames become sightings (still arm, joints
newer than the frame, distinct poses), the planned moves' timing, operator mode on the twin's
rendered colour, the colour message round trip and the config checks."""
from dataclasses import replace

import numpy as np
import pytest

from calibration.handeye import CalibrationError, pose_error
from calibration.live import (JointHistory, LiveCalibration, PlannedMoves, SightingCollector, StampedImage,
                              min_jerk, order_nearest)
from robot_runtime.config import config_from_dict, load_config
from robot_runtime.description.marker import MarkerSpec
from robot_runtime.errors import ConfigError
from robot_runtime.transforms import make_T
from tests.ros_probe import REPO

K = np.array([[700.0, 0, 640], [0, 700.0, 480], [0, 0, 1]])
CORNERS = np.array([[600.0, 400], [680, 400], [680, 480], [600, 480]])


def _collector(detections, **kw):
    """A collector whose link pose is the arm's first joint as x (m) and whose detector returns
    the next of ``detections`` (None: not seen)."""
    seen = iter(detections)
    return SightingCollector(MarkerSpec(), lambda q: make_T(np.eye(3), [q[0], 0.0, 0.0]),
                             detect=lambda image, spec: next(seen), **kw)


def _q(x):
    """Arm joints [7]: the first at ``x``, the rest at 0."""
    return np.array([x, 0, 0, 0, 0, 0, 0], float)


def _feed_arm(c, t0, t1, q, hz=250.0):
    for t in np.arange(t0, t1, 1.0 / hz):
        c.add_arm(float(t), q(t) if callable(q) else q)


def test_joint_history_still_needs_cover_and_no_motion():
    h = JointHistory()
    for t in np.arange(0.0, 2.0, 0.004):
        h.add(t, _q(0.5 if t < 1.0 else 0.5 + (t - 1.0) * 0.1))
    assert h.still(0.2, 0.9, 0.002)
    assert not h.still(0.5, 1.5, 0.002)           # moved 0.05 rad
    assert not h.still(-0.5, 0.5, 0.002)          # before the first sample
    assert not h.still(1.0, 2.5, 1.0)             # after the last
    assert h.at(0.5)[0] == pytest.approx(0.5) and h.at(7.0) is None


def test_a_frame_becomes_a_sighting_only_once_newer_joints_show_the_arm_was_still():
    c = _collector([CORNERS, CORNERS], still_s=0.5, still_tol=0.002)
    c.add_hand(np.zeros(16))
    _feed_arm(c, 0.0, 1.0, lambda t: _q(min(t, 0.8) * 0.2))   # moving until 0.8 s
    c.add_color(StampedImage(np.zeros((4, 4, 3), np.uint8), K, 1.1))
    assert c.poll() is None and c.counts == {"used": 0, "moving": 0, "not_seen": 0, "repeat": 0}   # joints not there yet
    _feed_arm(c, 1.0, 1.2, _q(0.16))
    assert c.poll() is None and c.counts["moving"] == 1      # still only since 0.8 s: 0.3 s before the frame
    _feed_arm(c, 1.2, 1.5, _q(0.16))
    c.add_color(StampedImage(np.zeros((4, 4, 3), np.uint8), K, 1.4))
    s = c.poll()
    assert s is not None and s.T_base_link[0, 3] == pytest.approx(0.16) and len(s.q) == 23
    assert c.stamps == [1.4]


def test_operator_mode_refuses_repeats_and_counts_unseen_markers():
    c = _collector([CORNERS, None, CORNERS], still_s=0.2, min_separation_m=0.03, min_separation_deg=8.0)
    c.add_hand(np.zeros(16))
    t = 0.0
    for x, expect in ((0.10, "used"), (0.11, "repeat"), (0.20, "not_seen"), (0.30, "used")):
        _feed_arm(c, t, t + 0.5, _q(x))
        c.add_color(StampedImage(np.zeros((4, 4, 3), np.uint8), K, t + 0.45))
        _feed_arm(c, t + 0.5, t + 0.55, _q(x))
        before = dict(c.counts)
        c.poll()
        assert c.counts[expect] == before[expect] + 1, (x, c.counts)
        t += 1.0
    assert [s.T_base_link[0, 3] for s in c.sightings] == pytest.approx([0.10, 0.30])


def test_intrinsics_that_change_mid_run_are_refused():
    c = _collector([])
    c.add_color(StampedImage(np.zeros((4, 4, 3), np.uint8), K, 0.0))
    with pytest.raises(CalibrationError, match="intrinsics changed"):
        c.add_color(StampedImage(np.zeros((4, 4, 3), np.uint8), K * 1.01, 0.1))


def test_planned_moves_peak_at_the_joint_speed_hold_skip_and_go_home():
    home = np.zeros(7)
    targets = [np.full(7, 0.5), np.full(7, -0.3)]
    m = PlannedMoves(targets, home, joint_speed=0.4, still_s=0.5, capture_timeout_s=2.0)
    dt = 0.01
    qs = [m.command(0.0, home)]                                  # the first call starts the first move
    qs += [m.command(k * dt, home) for k in range(1, int(m.arrived_at() / dt) + 2)]
    v = np.abs(np.diff(np.array(qs)[:, 0])) / dt
    assert v.max() == pytest.approx(0.4, rel=0.02)              # min-jerk's peak, as configured
    assert qs[-1] == pytest.approx(targets[0])
    assert m.index == 0 and not m.done
    t_arrive = m.arrived_at()
    m.command(t_arrive + 0.5 + 2.0 + 0.01, qs[-1])              # never seen there: skipped
    assert m.skipped == [0] and m.index == 1
    m.sighted(t_arrive + 3.0)                                   # seen at pose 1: home next
    assert m.homing
    t = m.arrived_at()
    assert m.command(t + 0.01, targets[1]) == pytest.approx(home) and m.done
    assert min_jerk(0.5) == pytest.approx(0.5) and min_jerk(2.0) == 1.0


def test_poses_are_visited_nearest_first():
    a, b, c = np.full(7, 1.0), np.full(7, 0.1), np.full(7, 0.5)
    assert [t[0] for t in order_nearest([a, b, c], np.zeros(7))] == [0.1, 0.5, 1.0]


def test_operator_mode_on_the_twin_recovers_the_camera():
    """An 'operator' moves the twin's arm through poses; frames are taken while it moves and twice
    at each pose. Only still, distinct poses count, and they recover the camera pose."""
    pytest.importorskip("cv2")
    from calibration.extrinsics import camera_pose_for
    from calibration.session import plan_for_robot
    from robot_runtime.twin.drive import ShieldedTwinDrive
    from robot_runtime.twin.sim import TwinSimulation

    cfg = load_config(REPO / "config" / "sim_calibrate.yaml")
    cfg.calibration.mode, cfg.calibration.poses = "operator", 8
    live = LiveCalibration(cfg)
    sim = TwinSimulation(replace(cfg.twin, calibration_marker=True), cfg.robot)
    try:
        sim.reset(cfg.twin.task, 0)
        r = cfg.robot
        Kc = sim.color_intrinsics()
        targets = plan_for_robot(cfg, live.model, live.spec, sim.camera_pose(), Kc, (1280, 960), 8, seed=5)
        drive = ShieldedTwinDrive(sim, cfg, 2 * sim.dt)   # joint states at half the physics rate

        def run(q_arm, seconds, frames_at=()):
            for k in range(int(round(seconds / drive.period))):
                drive.step(np.concatenate([q_arm, r.hand_home]))
                live.on_arm(sim.time, sim.arm_state().position)
                live.on_hand(sim.hand_state().position)
                if k in frames_at:
                    live.on_color(StampedImage(sim.render_color(), Kc, sim.time))
                    live.on_depth(StampedImage(sim.render_depth(), sim.intrinsics(), sim.time))
                live.tick(sim.time)

        for q in targets:
            steps = int(round(3.0 / drive.period))
            run(q, 3.0, frames_at=(steps // 8, steps - 5, steps - 3))   # moving, then twice at rest
        run(targets[-1], 0.05)
    finally:
        sim.close()
    counts = live.collector.counts
    assert counts["moving"] >= 8 and counts["repeat"] >= 7, counts
    assert live.finished and len(live.sightings) == 8
    run_ = live.finish()
    dp, dr = pose_error(run_.result.T_base_camera, camera_pose_for(load_config(REPO / "config" / "sim.yaml")))
    assert dp < 5.0 and dr < 0.5, (dp, dr)
    assert run_.check.median_abs_m < 0.003 and run_.check.robot_pixels > 1000


def test_colour_messages_round_trip_and_bad_ones_are_named():
    from sensor_msgs.msg import Image

    from robot_runtime import ros_io

    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    msg = ros_io.color_image_msg(rgb, 12.5, "cam")
    assert msg.encoding == "rgb8" and ros_io.from_time_msg(msg.header.stamp) == pytest.approx(12.5)
    assert np.array_equal(ros_io.color_from_msg(msg), rgb)
    bgra = Image(height=6, width=5, encoding="bgra8", step=24)   # 4 bytes of row padding
    rows = np.zeros((6, 24), np.uint8)
    rows[:, :20] = np.concatenate([rgb[:, :, ::-1], np.full((6, 5, 1), 255, np.uint8)], axis=2).reshape(6, 20)
    bgra.data = rows.tobytes()
    assert np.array_equal(ros_io.color_from_msg(bgra), rgb)
    with pytest.raises(ValueError, match="mono8"):
        ros_io.color_from_msg(Image(height=1, width=1, encoding="mono8", step=1, data=b"\0"))


@pytest.mark.parametrize("section, key", [
    ({"calibration": {"enabled": True}}, "camera.color_hz"),
    ({"camera": {"type": "twin", "color_hz": 2.0}}, "camera.color_hz"),          # no marker on the twin
    ({"camera": {"type": "twin", "color_hz": 2.0}, "twin": {"calibration_marker": True},
      "policy": {"enabled": True, "checkpoint": str(REPO / "policies" / "checkpoints" / "twin_grasp_lift")},
      "calibration": {"enabled": True}}, "policy.enabled"),                       # the policy would drive too
    ({"camera": {"type": "twin", "color_hz": 2.0}, "twin": {"calibration_marker": True},
      "calibration": {"enabled": True}}, "control.source"),
    ({"camera": {"type": "twin", "color_hz": 2.0}, "twin": {"calibration_marker": True}, "policy": {"enabled": False},
      "control": {"source": "teleop"}, "calibration": {"enabled": True, "camera_guess_position": [1, 2, 3]}},
     "calibration.camera_guess_look_at"),
    ({"camera": {"type": "zed", "color_hz": 2.0}, "control": {"source": "teleop"},
      "calibration": {"enabled": True, "marker": {"dictionary": "DICT_9X9"}}}, "calibration.marker.dictionary"),
    ({"camera": {"type": "twin", "color_hz": 2.0}, "twin": {"calibration_marker": True},
      "control": {"source": "teleop"}, "calibration": {"enabled": True, "marker": {"id": 3}}},
     "calibration.marker"),                                                       # the twin's marker is id 7
    ({"arm": {"type": "xarm"}, "demo": {"enabled": False}, "camera": {"type": "zed", "color_hz": 2.0},
      "control": {"source": "teleop"},
      "calibration": {"enabled": True, "arm_controllers": True}}, "calibration.arm_controllers"),
])
def test_calibration_config_mistakes_name_their_key(section, key):
    pytest.importorskip("cv2")
    with pytest.raises(ConfigError) as err:
        config_from_dict(section)
    assert err.value.key == key, str(err.value)


def test_planned_calibration_without_a_camera_guess_says_what_to_give():
    cfg = load_config(REPO / "config" / "sim_calibrate.yaml")
    with pytest.raises(CalibrationError, match="camera_guess_position"):
        LiveCalibration(cfg, None)


def test_the_robot_calibration_config_plans_the_real_graph_and_a_camera_guess():
    from robot_runtime.nodes.calibration_node import camera_guess, camera_serial
    from robot_runtime.plan import node_plan

    cfg = load_config(REPO / "config" / "robot_calibrate.yaml")
    names = [s.name for s in node_plan(cfg, "robot_calibrate.yaml")]
    assert names == ["camera_node", "arm_controller_node", "hand_controller_node", "calibration_node"]
    T = camera_guess(cfg)
    assert T[:3, 3] == pytest.approx(cfg.calibration.camera_guess_position)
    assert T[:3, 2] @ (np.array(cfg.calibration.camera_guess_look_at) - T[:3, 3]) > 0   # optical axis toward it
    assert camera_serial(cfg) == "zed" and cfg.camera.color_hz == 2.0
    live = LiveCalibration(cfg, T)
    assert live.waiting_for == "arm joint states, hand joint states, colour frames, depth frames"


def test_a_planned_run_that_never_sees_the_marker_says_so():
    cfg = load_config(REPO / "config" / "sim_calibrate.yaml")
    live = LiveCalibration(cfg, np.eye(4))
    live.moves = PlannedMoves([np.zeros(7)] * 3, np.zeros(7))
    with pytest.raises(CalibrationError, match="seen at 0 of 3 poses .* at least 6. Is the marker"):
        live.finish()


def test_a_planned_run_paused_by_a_stall_starts_the_move_over_from_where_the_arm_is():
    cfg = load_config(REPO / "config" / "sim_calibrate.yaml")
    live = LiveCalibration(cfg, np.eye(4))
    live.collector.add_hand(np.zeros(16))
    live.collector.add_color(StampedImage(np.zeros((960, 1280, 3), np.uint8), K, 0.0))
    live.depth_K = K
    live.moves = PlannedMoves([np.full(7, 0.6)], np.zeros(7), joint_speed=0.4)
    live.collector.add_arm(0.0, np.zeros(7))
    live.tick(0.0)
    q1 = live.tick(1.0)[:7]
    assert 0 < q1[0] < 0.6
    live.collector.add_arm(1.0, q1)
    assert live.tick(1.5, drive=False) is None       # controllers stopped: nothing is published
    live.collector.add_arm(9.0, q1)                  # armed again much later; the arm stayed at q1
    assert live.tick(9.0) is None                    # the move restarts from the measured joints ...
    q2 = live.tick(9.05)[:7]
    assert q1[0] <= q2[0] < q1[0] + 0.01             # ... instead of jumping to where the old clock says
    assert live.moves.index == 0 and live.moves.skipped == []
