import numpy as np
import pytest

from robot_runtime.config import ReplayCameraConfig, ZedCameraConfig, load_config
from robot_runtime.devices.base import make_device
from robot_runtime.devices.replay import ReplayCamera, save_depth_recording
from robot_runtime.errors import ConfigError, DeviceError, DeviceNotAvailableError
from robot_runtime.plan import node_plan


def test_sim_plan(repo):
    cfg = load_config(repo / "config" / "sim.yaml")
    plan = node_plan(cfg, "/x/sim.yaml")
    assert [s.name for s in plan] == ["sim_node", "arm_controller_node", "hand_controller_node", "policy_node"]
    args = plan[0].ros_args()
    assert "config_file:=/x/sim.yaml" in args and "task:=grasp_lift" in args
    assert plan[3].parameters["checkpoint"].endswith("policies/checkpoints/twin_grasp_lift")
    cfg.viz.enabled = True                       # the viewer joins as its own process, last
    assert node_plan(cfg, "/x/sim.yaml")[-1].module == "robot_runtime.nodes.viz_node"


def test_policy_and_demo_cannot_both_drive_the_policy_topic(repo):
    from robot_runtime.config import config_from_dict
    from robot_runtime.errors import ConfigError

    ck = str(repo / "policies" / "checkpoints" / "twin_grasp_lift")
    with pytest.raises(ConfigError, match="policy.enabled"):
        config_from_dict({"demo": {"enabled": True}, "policy": {"enabled": True, "checkpoint": ck}})
    with pytest.raises(ConfigError, match="policy.checkpoint"):
        config_from_dict({"demo": {"enabled": False}, "policy": {"enabled": True}})
    with pytest.raises(ConfigError, match="policy.checkpoint.*not found"):
        config_from_dict({"policy": {"checkpoint": "no/such/folder"}})


def test_robot_plan_has_no_twin(repo):
    cfg = load_config(repo / "config" / "robot.yaml")
    assert [s.name for s in node_plan(cfg, "r.yaml")] == ["camera_node", "arm_controller_node",
                                                          "hand_controller_node"]


def test_unknown_backend_type():
    class Cfg:
        type = "nope"
    with pytest.raises(ConfigError, match="no arm backend of type 'nope'"):
        make_device("arm", Cfg())


def test_zed_without_sdk_says_where_it_comes_from():
    cam = make_device("camera", ZedCameraConfig())
    with pytest.raises(DeviceNotAvailableError, match="ZED SDK"):
        cam.connect()


def test_replay_plays_at_recorded_timing(tmp_path):
    path = tmp_path / "rec.npz"
    depth = np.random.default_rng(0).uniform(0.3, 2.0, (3, 4, 5)).astype(np.float32)
    save_depth_recording(path, depth, [10.0, 10.1, 10.3], np.eye(3))
    now = [0.0]
    slept = []

    def sleep(dt):
        slept.append(dt)
        now[0] += dt

    cam = ReplayCamera(ReplayCameraConfig(path=str(path), loop=False), clock=lambda: now[0],
                       stamp_clock=lambda: 1000 + now[0], sleep=sleep)
    cam.connect()
    frames = [cam.read(timeout_s=1.0) for _ in range(3)]
    assert [f.t for f in frames] == pytest.approx([1000.0, 1000.1, 1000.3])
    assert np.array_equal(frames[2].depth, depth[2])
    assert cam.read() is None  # not looping: the end


def test_replay_rejects_bad_recording(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, depth=np.zeros((2, 3, 3)), stamps=[1.0, 0.5], K=np.eye(3))
    with pytest.raises(DeviceError, match="not increasing"):
        ReplayCamera(ReplayCameraConfig(path=str(p))).connect()
    p2 = tmp_path / "junk.npz"
    p2.write_bytes(b"junk")
    with pytest.raises(DeviceError, match="not a depth recording"):
        ReplayCamera(ReplayCameraConfig(path=str(p2))).connect()


def test_topic_camera_refuses_a_camera_info_without_intrinsics():
    """An uncalibrated driver publishes K = 0; back-projecting with it would give the policy
    a cloud of infinities. The backend warns and uses no frame until a usable K arrives."""
    import rclpy

    from robot_runtime import ros_io
    from robot_runtime.config import TwinCameraConfig
    from robot_runtime.devices.ros_topics import TopicDepthCamera

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("camera_info_check", context=context)
    try:
        cam = TopicDepthCamera(TwinCameraConfig(), node)
        cam.connect()
        depth = ros_io.depth_image_msg(np.full((4, 6), 0.5, np.float32), 1.0, "camera")
        cam.input.on_info(ros_io.camera_info_msg(np.zeros((3, 3)), 6, 4, 1.0, "camera"))
        assert cam.input.K is None
        cam.input._deliver(depth, cam._on_frame)
        assert cam.latest() is None and cam.read(timeout_s=0.0) is None
        assert cam.input.dropped == {"no_intrinsics": 1}
        K = np.array([[5.0, 0, 3], [0, 5.0, 2], [0, 0, 1]])
        cam.input.on_info(ros_io.camera_info_msg(K, 6, 4, 1.0, "camera"))
        cam.input._deliver(depth, cam._on_frame)
        frame = cam.read(timeout_s=0.0)
        assert frame is not None and np.array_equal(frame.K, K) and frame.depth.shape == (4, 6)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def test_one_registry_names_each_backend_config_and_its_implementation():
    """Each backend is registered once, with its config dataclass and the class that implements
    it; make_device and make_input both build from that registration."""
    import importlib

    from robot_runtime.config import backend_target, backend_types
    from robot_runtime.devices.base import ArmDevice, DepthCamera, HandDevice
    from robot_runtime.teleop.inputs import TeleopInput

    bases = {"arm": ArmDevice, "hand": HandDevice, "camera": DepthCamera, "teleop_input": TeleopInput}
    for family, base in bases.items():
        assert backend_types(family)
        for t in backend_types(family):
            module, name = backend_target(family, t).split(":")
            assert issubclass(getattr(importlib.import_module(module), name), base), (family, t)
    with pytest.raises(ConfigError, match="no camera backend of type 'kinect'"):
        backend_target("camera", "kinect")


def test_an_xarm_at_a_loopback_address_is_the_twin_behind_the_emulated_box(repo):
    """config/sim_xarm.yaml: the arm is an xArm at 127.0.0.2, so sim_node serves the box (and the
    twin-only conveniences stay allowed); the lab's robot.yaml xArm is not on the twin."""
    from robot_runtime.config import load_config
    from robot_runtime.plan import node_plan

    cfg = load_config(repo / "config" / "sim_xarm.yaml")
    assert cfg.arm.type == "xarm" and cfg.arm_on_emulated_box and cfg.robot_on_twin
    assert "sim_node" in [s.name for s in node_plan(cfg, str(repo / "config" / "sim_xarm.yaml"))]
    robot = load_config(repo / "config" / "robot.yaml")
    assert not robot.arm_on_emulated_box and not robot.robot_on_twin


def test_replay_after_a_stall_gives_the_newest_due_frame_not_a_burst(tmp_path):
    """The reader stalls 0.31 s at 30 Hz: the next read is the frame due now (the eight it missed
    are skipped and counted), and the one after comes a frame spacing later, as from a camera."""
    path = tmp_path / "rec.npz"
    depth = np.stack([np.full((2, 2), float(i), np.float32) for i in range(20)])
    save_depth_recording(path, depth, np.arange(20) / 30.0, np.eye(3))
    now = [0.0]

    def sleep(dt):
        now[0] += dt

    cam = ReplayCamera(ReplayCameraConfig(path=str(path), loop=False), clock=lambda: now[0],
                       stamp_clock=lambda: now[0], sleep=sleep)
    cam.connect()
    assert cam.read(timeout_s=1.0).depth[0, 0] == 0.0
    now[0] += 0.31                                    # the stall
    late = cam.read(timeout_s=1.0)
    nxt = cam.read(timeout_s=1.0)
    assert late.depth[0, 0] == 9.0 and cam.skipped == 8 and late.t == pytest.approx(0.31)
    assert nxt.depth[0, 0] == 10.0 and nxt.t - late.t == pytest.approx(10 / 30 - 0.31)
