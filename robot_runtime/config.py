"""Typed, validated configuration.

A YAML file is loaded into the dataclasses below. Validation happens once, at start:
an unknown key, a wrong type, an out-of-range value or a missing file raises
:class:`~robot_runtime.errors.ConfigError` naming the file and the dotted key path
(for example ``config/sim.yaml: key 'twin.camera.fps': 500 is above the maximum 120``).

Device sections (``arm``, ``hand``, ``camera``) hold one backend each, chosen by their
``type`` string; each backend has its own config dataclass registered with
:func:`register_backend_config`.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from robot_runtime import description as _desc
from robot_runtime.errors import ConfigError

# --------------------------------------------------------------------------------------
# Field helpers


def rng(default: Any, lo: float | None = None, hi: float | None = None, **meta: Any):
    """A dataclass field with an inclusive numeric range (applies to each element of a sequence)."""
    kwargs = {"default_factory": (lambda d=default: list(d))} if isinstance(default, list) else {"default": default}
    return field(metadata={"range": (lo, hi), **meta}, **kwargs)


def seq(default: list, length: int | None = None, lo: float | None = None, hi: float | None = None):
    """A list field with an exact length and optional per-element range."""
    return field(default_factory=lambda d=default: list(d), metadata={"length": length, "range": (lo, hi)})


class FilePath(str):
    """A path to an existing file, relative to the config file's folder unless absolute."""


class OptionalFilePath(str):
    """Like :class:`FilePath`, but the empty string means 'none'."""


class OptionalPath(str):
    """A file or folder that must exist, relative to the config file's folder; '' means 'none'."""


class OutputDir(str):
    """A folder written to (created when needed), relative to the config file's folder; made absolute."""


class _FromFile(str):
    """A string read from a config file, remembering that file's folder: a relative path in a
    file that another one ``extends`` stays relative to the file that wrote it."""

    base_dir: Path


def path_inside(value, roots, what: str) -> Path:
    """``value`` (a path some peer asked for: a ROS parameter or service field) resolved, when it
    lies inside one of the folders ``roots`` (a relative value is taken from the first). It may
    not be empty or look like a command-line option.

    Raises:
        ValueError: naming ``what``, the value and the folders it had to be in.
    """
    text = str(value).strip()
    if not text or text.startswith("-") or "\0" in text:
        raise ValueError(f"{what} {text!r}: not a path")
    roots = [Path(r).resolve() for r in roots]
    path = (roots[0] / text).resolve()      # an absolute value stays itself
    if not any(path == r or r in path.parents for r in roots):
        raise ValueError(f"{what} {text!r} resolves to {path}, outside {' and '.join(map(str, roots))}")
    return path


def _plain(value: Any) -> Any:
    """``value`` with :class:`_FromFile` strings turned back into plain ones."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _mark_origin(value: Any, base_dir: Path) -> Any:
    if isinstance(value, str) and not isinstance(value, _FromFile):
        out = _FromFile(value)
        out.base_dir = base_dir
        return out
    if isinstance(value, dict):
        return {k: _mark_origin(v, base_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_mark_origin(v, base_dir) for v in value]
    return value


# --------------------------------------------------------------------------------------
# Backend registry, the project's one: per family, per ``type``, the backend's config dataclass
# and the ``module:Class`` that implements it (imported only when that backend is built, so a
# vendor SDK is imported only when its backend is chosen).

_BACKEND_CONFIGS: dict[str, dict[str, type]] = {"arm": {}, "hand": {}, "camera": {}, "teleop_input": {}}


def register_backend_config(family: str, type_name: str, target: str):
    """Class decorator: register ``cls`` as the config of backend ``type_name`` of ``family``,
    implemented by ``target`` (``"module:Class"``, built as ``Class(cfg, **deps)``)."""

    def deco(cls):
        _BACKEND_CONFIGS[family][type_name] = cls
        cls.TYPE = type_name
        cls.TARGET = target
        return cls

    return deco


def backend_types(family: str) -> list[str]:
    """The registered backend type names of a device family ('arm', 'hand', 'camera')."""
    return sorted(_BACKEND_CONFIGS[family])


def backend_target(family: str, type_name: str) -> str:
    """The ``module:Class`` of backend ``type_name`` of ``family``.

    Raises:
        ConfigError: no such backend is registered.
    """
    try:
        return _BACKEND_CONFIGS[family][type_name].TARGET
    except KeyError:
        raise ConfigError(f"no {family} backend of type {type_name!r} (have {backend_types(family)})",
                          key=f"{family}.type") from None


# --------------------------------------------------------------------------------------
# Sections


@dataclass
class MountConfig:
    """Fixed transform of the hand's palm frame in the arm's flange frame (m, rad, roll-pitch-yaw)."""

    xyz: list[float] = seq([0.0, 0.0, 0.0], 3, -0.5, 0.5)
    rpy: list[float] = seq([0.0, 0.0, 0.0], 3, -2 * math.pi, 2 * math.pi)


@dataclass
class RobotConfig:
    """The robot: hand mount and home pose (rad, in description joint order)."""

    hand_mount: MountConfig = field(default_factory=lambda: MountConfig(xyz=list(_desc.DEFAULT_MOUNT_XYZ),
                                                                        rpy=list(_desc.DEFAULT_MOUNT_RPY)))
    arm_home: list[float] = seq(list(_desc.ARM_HOME), 7, -6.2832, 6.2832)
    hand_home: list[float] = seq(list(_desc.HAND_HOME), 16, -0.5, 1.8)


@dataclass
class RatesConfig:
    """Loop rates (Hz)."""

    policy_hz: float = rng(20.0, 1.0, 100.0)
    arm_hz: float = rng(120.0, 10.0, 250.0)
    hand_hz: float = rng(300.0, 50.0, 1000.0)


@register_backend_config("arm", "twin", "robot_runtime.devices.ros_topics:TopicArm")
@dataclass
class TwinArmConfig:
    """Arm served by sim_node: joint states and servo targets on ROS topics."""

    type: str = "twin"
    state_topic: str = "/arm/joint_states"
    target_topic: str = "/arm/servo_target"


@register_backend_config("arm", "xarm", "robot_runtime.devices.xarm:XArm")
@dataclass
class XArmConfig:
    """UFactory xArm7 through xarm-python-sdk (servo mode); ``ip`` is the control box address."""

    type: str = "xarm"
    ip: str = "192.168.1.222"
    connect_timeout_s: float = rng(5.0, 0.1, 60.0)
    #: How long one SDK call waits for the box's answer (the SDK's own default is 2 s): a box that
    #: stops answering ends the call after this with code 3 and the controller stops, named. Longer
    #: than the ~190 ms servo-call stalls of SDK issue 154, which the stream rides through.
    command_timeout_s: float = rng(0.5, 0.25, 5.0)


@register_backend_config("hand", "twin", "robot_runtime.devices.ros_topics:TopicHand")
@dataclass
class TwinHandConfig:
    """Allegro hand served by sim_node on the allegro_hand_ros topic shapes."""

    type: str = "twin"
    topic_prefix: str = "/allegroHand_0"


@register_backend_config("hand", "allegro_ros", "robot_runtime.devices.ros_topics:TopicHand")
@dataclass
class AllegroRosHandConfig:
    """A running Allegro driver of the allegro_hand_ros family (joint_states in, torque_cmd out)."""

    type: str = "allegro_ros"
    topic_prefix: str = "/allegroHand_0"


@register_backend_config("camera", "twin", "robot_runtime.devices.ros_topics:TopicDepthCamera")
@dataclass
class TwinCameraConfig:
    """Depth rendered by sim_node (its own ``twin.camera`` section sets the image)."""

    type: str = "twin"
    depth_topic: str = "/camera/depth/image"
    info_topic: str = "/camera/depth/camera_info"
    color_topic: str = "/camera/color/image"
    color_info_topic: str = "/camera/color/camera_info"
    #: Colour frames per second, 0 for none. Only calibration needs colour; the twin's is drawn
    #: at 4x the depth resolution (about 0.1 s a frame in software GL) and needs twin.calibration_marker.
    color_hz: float = rng(0.0, 0.0, 30.0)


@register_backend_config("camera", "zed", "robot_runtime.devices.zed:ZedCamera")
@dataclass
class ZedCameraConfig:
    """Stereolabs ZED 2 through pyzed (ships with the ZED SDK, not on PyPI)."""

    type: str = "zed"
    depth_topic: str = "/camera/depth/image"
    info_topic: str = "/camera/depth/camera_info"
    color_topic: str = "/camera/color/image"
    color_info_topic: str = "/camera/color/camera_info"
    color_hz: float = rng(0.0, 0.0, 30.0)      # left colour image frames per second, 0 for none (calibration)
    serial_number: int = rng(0, 0, None)
    resolution: Literal["HD2K", "HD1080", "HD720", "VGA"] = "VGA"
    fps: int = rng(30, 15, 100)
    depth_mode: Literal["PERFORMANCE", "QUALITY", "ULTRA", "NEURAL"] = "NEURAL"
    min_depth: float = rng(0.3, 0.1, 20.0)
    max_depth: float = rng(3.0, 0.2, 40.0)


@register_backend_config("camera", "replay", "robot_runtime.devices.replay:ReplayCamera")
@dataclass
class ReplayCameraConfig:
    """Recorded depth at its timing: an ``.npz`` (``depth`` [N,H,W] metres, ``stamps`` [N] s,
    ``K`` [3,3]) or a rosbag2 recording (a bag folder, or its ``.mcap`` / ``.db3`` file) whose
    ``bag_depth_topic`` holds the frames and ``bag_info_topic`` their CameraInfo."""

    type: str = "replay"
    path: FilePath = FilePath("")
    depth_topic: str = "/camera/depth/image"
    info_topic: str = "/camera/depth/camera_info"
    loop: bool = True
    #: a bag's depth and CameraInfo topics ("": the same as ``depth_topic`` / ``info_topic``)
    bag_depth_topic: str = ""
    bag_info_topic: str = ""


@dataclass
class TwinCameraModel:
    """The twin's ZED-like depth camera: pose in the robot base frame (m), image and rate."""

    position: list[float] = seq([0.55, -0.75, 0.45], 3, -3.0, 3.0)
    look_at: list[float] = seq([0.55, 0.0, 0.0], 3, -3.0, 3.0)
    fovy_deg: float = rng(70.0, 10.0, 150.0)
    width: int = rng(320, 16, 2208)
    height: int = rng(240, 16, 1242)
    fps: float = rng(30.0, 1.0, 120.0)
    min_depth: float = rng(0.1, 0.01, 5.0)
    max_depth: float = rng(3.0, 0.2, 40.0)


@dataclass
class TwinConfig:
    """The MuJoCo twin of the lab cell."""

    physics_hz: float = rng(500.0, 500.0, 5000.0)
    task: Literal["grasp_drop", "grasp_pour", "grasp_lift"] = "grasp_lift"
    seed: int = rng(0, 0, None)
    arm_max_joint_speed: float = rng(3.14, 0.1, 3.14)
    arm_state_hz: float = rng(250.0, 10.0, 1000.0)
    hand_state_hz: float = rng(333.0, 10.0, 1000.0)
    object_pose_hz: float = rng(30.0, 1.0, 500.0)
    hand_torque_timeout_s: float = rng(0.1, 0.005, 5.0)
    hand_torque_limit: float = rng(0.7, 0.05, 5.0)
    #: SCHED_FIFO priority of the physics thread (0: do not ask). The twin stands in for the
    #: robot, whose own computers the host's load never slows; sim_teleop.yaml (recording) sets
    #: 35: above the teleop loop (30) and the recorder (25), below the controllers (40).
    #: sim.yaml leaves it at 0: with the physics at real-time priority the policy loop (30,
    #: 16% of a core) missed deadlines on a loaded 2-core machine.
    realtime_priority: int = rng(0, 0, 99)
    #: An ArUco marker plate on the palm's side, for hand-eye calibration (``robot-runtime
    #: calibrate`` turns it on; the policies are trained without it).
    calibration_marker: bool = False
    camera: TwinCameraModel = field(default_factory=TwinCameraModel)


@dataclass
class DemoConfig:
    """Scripted reach-and-grasp targets shown by ``make sim`` (runs on the twin only): published
    at the policy rate on the policy topic, through the controllers like a policy's."""

    enabled: bool = True
    cycle_s: float = rng(10.0, 2.0, 120.0)


@dataclass
class ArmControlConfig:
    """Arm safety limits (rad, rad/s, rad/s^2; rad per tick), per joint joint1..joint7."""

    position_margin: float = rng(0.02, 0.0, 0.3)
    max_velocity: list[float] = seq([1.5] * 7, 7, 0.01, 3.1)
    max_acceleration: list[float] = seq([20.0] * 7, 7, 0.1, 200.0)
    max_step: list[float] = seq([0.02] * 7, 7, 0.0001, 0.05)


@dataclass
class HandControlConfig:
    """Allegro PD gains (N m/rad, N m s/rad), torque limits (N m) and safety limits, per joint
    in the driver's order (index, middle, ring, thumb)."""

    kp: list[float] = seq([3.0, 3.0, 3.0, 5.0] * 3 + [5.0, 5.0, 5.0, 3.0], 16, 0.0, 100.0)
    kd: list[float] = seq([0.1] * 16, 16, 0.0, 10.0)
    torque_limit: list[float] = seq([0.7] * 16, 16, 0.01, 5.0)
    velocity_cutoff_hz: float = rng(50.0, 1.0, 500.0)
    position_margin: float = rng(0.02, 0.0, 0.2)
    max_velocity: list[float] = seq([4.0] * 16, 16, 0.01, 20.0)
    max_acceleration: list[float] = seq([80.0] * 16, 16, 0.1, 2000.0)
    max_step: list[float] = seq([0.02] * 16, 16, 0.0001, 0.2)


@dataclass
class WorkspaceConfig:
    """Where the flange and fingertips may go (m, robot base frame), and the flange's top speed (m/s)."""

    table_z: float = rng(0.0, -1.0, 1.0)
    flange_clearance: float = rng(0.05, 0.0, 1.0)
    fingertip_clearance: float = rng(0.0, -0.05, 0.5)
    box_min: list[float] = seq([-0.3, -0.8, -0.1], 3, -3.0, 3.0)
    box_max: list[float] = seq([1.2, 0.8, 1.2], 3, -3.0, 3.0)
    max_flange_speed: float = rng(0.5, 0.01, 1.0)


@dataclass
class ControlConfig:
    """The arm and hand controllers: target topics, watchdog, loop scheduling, limits."""

    source: Literal["policy", "teleop"] = "policy"
    policy_topic: str = "/policy/joint_targets"
    teleop_topic: str = "/teleop/joint_targets"
    #: A target stream that stops (a policy killed mid-grasp) is held within 100 ms: the hold comes
    #: 1.75 periods (87.5 ms at 20 Hz) after the last target plus up to one controller tick. At 2
    #: periods it came 100-109 ms after the last target, so after more than 100 ms in about one
    #: kill in six (bench.faults). Targets arrive 50 ms apart, p99 52 ms, on a 2-core machine.
    hold_after_periods: float = rng(1.75, 1.0, 20.0)
    latch_after_s: float = rng(0.25, 0.02, 5.0)
    blend_s: float = rng(0.5, 0.0, 10.0)
    max_target_lead_s: float = rng(1.0, 0.01, 10.0)
    device_state_timeout_s: float = rng(0.1, 0.01, 5.0)
    realtime_priority: int = rng(40, 0, 99)
    spin_us: float = rng(100.0, 0.0, 2000.0)
    #: Measured joint states and sent commands are republished at most this often (Hz; every
    #: tick of a loop slower than it): the policy and the recorder use 20 Hz, the other
    #: controller's workspace check a recent pose; the 300 Hz hand republishing every tick to
    #: each of its four readers cost CPU a loaded 2-core machine does not have.
    state_publish_hz: float = rng(100.0, 1.0, 1000.0)
    arm: ArmControlConfig = field(default_factory=ArmControlConfig)
    hand: HandControlConfig = field(default_factory=HandControlConfig)
    workspace: WorkspaceConfig = field(default_factory=WorkspaceConfig)


@dataclass
class PolicyConfig:
    """policy_node: the closed-loop policy (rates.policy_hz) and its checkpoint."""

    enabled: bool = False
    checkpoint: OptionalPath = OptionalPath("")   # checkpoint folder (policy.json + model.safetensors)
    # finetune_node writes its jobs only in here; a job's base is in here or beside `checkpoint`
    finetune_dir: OutputDir = OutputDir("../runs/checkpoints")
    runner: Literal["onnxruntime", "torch"] = "onnxruntime"
    max_frame_age_s: float = rng(0.1, 0.005, 2.0)    # an older newest depth frame: no action that tick
    # Older joint states: no action that tick. 0.1 s, as control.device_state_timeout_s: over 324
    # instants of the live twin graph on a 2-core machine the newest joint states were 4.8 ms old
    # at the median, 24.5 ms at p99 and 64.6 ms at worst, so the earlier 0.05 s skipped ticks.
    max_state_age_s: float = rng(0.1, 0.005, 1.0)
    warmup_steps: int = rng(10, 0, 1000)             # inferences on zeros before the first action
    autostart: bool = True                           # start an episode as soon as the node is up
    arm_controllers: bool = False                    # twin only: arm the controllers for each episode
    calibration_file: OptionalFilePath = OptionalFilePath("")  # camera pose for point-cloud policies
    realtime_priority: int = rng(35, 0, 99)           # SCHED_FIFO priority of the policy loop (0: do not ask)
    #: ``camera``: while the camera's rate is a whole multiple of rates.policy_hz (measured from
    #: the stamps: a 60 Hz camera and 20 Hz), each tick runs as soon as the frame on the grid
    #: arrives, the grid following the frames' stamps (control.loop.FrameLockedGrid); otherwise,
    #: and with ``free``, ticks run on a free 20 Hz grid and use the newest frame.
    tick_lock: Literal["camera", "free"] = "camera"


@register_backend_config("teleop_input", "scripted", "robot_runtime.teleop.inputs:ScriptedInput")
@dataclass
class ScriptedInputConfig:
    """Twin only: an expert that solves the twin's task from ground-truth object poses."""

    type: str = "scripted"
    seed: int = rng(0, 0, None)          # variation of the first episode; each later one adds 1


@register_backend_config("teleop_input", "keypoints", "robot_runtime.teleop.inputs:KeypointsInput")
@dataclass
class KeypointsInputConfig:
    """A file of hand keypoint trajectories (.npz: ``keypoints`` [T, 21, 3] m, ``t`` [T] s), played in time."""

    type: str = "keypoints"
    file: FilePath = FilePath("")
    left_hand: bool = False              # a left hand drives the right Allegro hand as its mirror image
    loop: bool = False


@register_backend_config("teleop_input", "hand_tracking", "robot_runtime.teleop.inputs:HandTrackingInput")
@dataclass
class HandTrackingInputConfig:
    """MediaPipe Hands on a webcam (``source`` a device index such as "0") or a video file."""

    type: str = "hand_tracking"
    source: str = "0"
    fov_deg: float = rng(60.0, 20.0, 150.0)      # horizontal field of view, for the wrist's depth estimate
    left_hand: bool = False
    model_complexity: int = rng(1, 0, 1)
    min_detection_confidence: float = rng(0.5, 0.0, 1.0)


@register_backend_config("teleop_input", "spacemouse", "robot_runtime.teleop.inputs:SpaceMouseInput")
@dataclass
class SpaceMouseInputConfig:
    """A 3Dconnexion SpaceMouse (pyspacemouse): wrist velocity; the buttons close and open the hand."""

    type: str = "spacemouse"
    max_speed: float = rng(0.1, 0.001, 1.0)          # m/s at full deflection
    max_angular_speed: float = rng(0.6, 0.01, 3.0)   # rad/s at full deflection
    deadzone: float = rng(0.05, 0.0, 0.5)


@register_backend_config("teleop_input", "keyboard", "robot_runtime.teleop.inputs:KeyboardInput")
@dataclass
class KeyboardInputConfig:
    """Keys on the terminal: w/s a/d r/f move the wrist, q/e turn it, g/h close/open the hand."""

    type: str = "keyboard"
    step_m: float = rng(0.01, 0.001, 0.1)
    step_rad: float = rng(0.05, 0.005, 0.5)


@dataclass
class TeleopConfig:
    """teleop_node: an input device -> joint targets on ``control.teleop_topic``."""

    enabled: bool = False
    rate_hz: float = rng(30.0, 5.0, 120.0)
    input: Any = field(default_factory=ScriptedInputConfig, metadata={"backend": "teleop_input"})
    input_rpy: list[float] = seq([0.0, 0.0, 0.0], 3)    # the input frame's orientation in the base frame (rad)
    motion_scale: float = rng(1.0, 0.05, 5.0)           # robot wrist displacement per operator displacement
    filter_cutoff_hz: float = rng(5.0, 0.1, 60.0)       # low-pass on the commanded flange pose
    max_flange_speed: float = rng(0.3, 0.01, 1.0)       # m/s
    max_flange_angular_speed: float = rng(1.5, 0.05, 6.0)   # rad/s
    max_arm_joint_speed: float = rng(1.0, 0.05, 3.0)    # rad/s, every target step
    max_hand_joint_speed: float = rng(3.0, 0.1, 10.0)   # rad/s
    retarget_scaling: float = rng(1.6, 0.5, 3.0)        # Allegro / human hand size
    input_timeout_s: float = rng(0.5, 0.05, 10.0)       # no input for this long: disengage (hold)
    arm_controllers: bool = False                       # twin only: select teleop and arm the controllers
    autoengage: bool = False                            # engage as soon as the node is up
    realtime_priority: int = rng(30, 0, 99)             # SCHED_FIFO of the loop thread (0: do not ask)


@dataclass
class RecorderConfig:
    """recorder_node: episodes on the policy grid (rates.policy_hz), one file each."""

    enabled: bool = False
    out_dir: OutputDir = OutputDir("episodes")   # relative to the config file's folder unless absolute
    depth_stride: int = rng(2, 1, 16)        # raw depth kept at 1/stride resolution (uint16 mm)
    min_free_mb: float = rng(500.0, 1.0, None)
    max_episode_s: float = rng(120.0, 1.0, 3600.0)
    realtime_priority: int = rng(35, 0, 99)


@dataclass
class VizConfig:
    """viz_node: the graph live in Rerun (its own process; see README, Watching rollouts)."""

    enabled: bool = False
    sink: Literal["spawn", "connect", "save"] = "save"
    target: str = ""                          # .rrd path ('save'; default runs/viz/<time>.rrd) or gRPC url ('connect')
    rate_hz: float = rng(20.0, 1.0, 100.0)    # joints, targets, timing
    heavy_hz: float = rng(10.0, 0.5, 100.0)   # depth, cloud, robot pose at most this often
    depth_stride: int = rng(2, 1, 8)
    budget: float = rng(0.25, 0.01, 1.0)      # share of wall time logging may take before it thins itself
    nice: int = rng(10, 0, 19)                # added to the node's niceness: the control loops come first


@dataclass
class MarkerConfig:
    """The ArUco marker on the hand (see robot_runtime/description/marker.py for where it sits on the palm)."""

    dictionary: str = "DICT_4X4_50"
    id: int = rng(7, 0, 999)
    cell: float = rng(0.011, 0.002, 0.1)       # one bit's edge (m); the black square is (bits + 2) cells across


@dataclass
class CalibrationConfig:
    """calibration_node: hand-eye calibration of the camera over the running graph (README: Camera calibration)."""

    enabled: bool = False
    #: planned: the node drives the arm through ``poses`` planned poses (teleop source);
    #: operator: the operator moves the arm (teleop, or the xArm's manual mode) and every
    #: still pose where the marker is seen, distinct from the earlier ones, is taken.
    mode: Literal["planned", "operator"] = "planned"
    poses: int = rng(15, 6, 100)
    seed: int = rng(0, 0, None)                # planned poses' random draw
    out_dir: OutputDir = OutputDir("../runs/calibration")   # <camera serial>_<UTC time>.yaml and .png
    joint_speed: float = rng(0.4, 0.05, 1.5)   # rad/s, the fastest joint of a planned move
    still_s: float = rng(0.6, 0.1, 5.0)        # the arm still this long before a frame is used
    still_tol: float = rng(0.002, 0.0001, 0.05)   # rad: 'still' is every arm joint within this of its value
    capture_timeout_s: float = rng(4.0, 0.5, 60.0)  # planned: give up on a pose where the marker is not seen
    min_separation_m: float = rng(0.03, 0.0, 1.0)   # operator: a new pose's marker moved this far ...
    min_separation_deg: float = rng(8.0, 0.0, 180.0)  # ... or turned this much from every earlier one
    camera_guess_position: list[float] = seq([], None, -3.0, 3.0)   # planned, no calibration yet: rough camera
    camera_guess_look_at: list[float] = seq([], None, -3.0, 3.0)    # position and a point it looks at (m, base)
    arm_controllers: bool = False              # twin only: select the teleop source and arm the controllers
    marker: MarkerConfig = field(default_factory=MarkerConfig)


@dataclass
class RuntimeConfig:
    """The whole runtime's configuration (one YAML file)."""

    robot: RobotConfig = field(default_factory=RobotConfig)
    rates: RatesConfig = field(default_factory=RatesConfig)
    arm: Any = field(default_factory=TwinArmConfig, metadata={"backend": "arm"})
    hand: Any = field(default_factory=TwinHandConfig, metadata={"backend": "hand"})
    camera: Any = field(default_factory=TwinCameraConfig, metadata={"backend": "camera"})
    control: ControlConfig = field(default_factory=ControlConfig)
    twin: TwinConfig = field(default_factory=TwinConfig)
    demo: DemoConfig = field(default_factory=DemoConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    teleop: TeleopConfig = field(default_factory=TeleopConfig)
    recorder: RecorderConfig = field(default_factory=RecorderConfig)
    viz: VizConfig = field(default_factory=VizConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    source_file: str = field(default="", metadata={"internal": True})

    @property
    def uses_twin(self) -> bool:
        """True when any device is served by the twin (then sim_node is part of the graph)."""
        return "twin" in (self.arm.type, self.hand.type, self.camera.type) or self.arm_on_emulated_box

    @property
    def arm_on_emulated_box(self) -> bool:
        """The arm is an xArm at a loopback address: sim_node's emulated control box, the twin's
        arm behind it (``config/sim_xarm.yaml``)."""
        return self.arm.type == "xarm" and str(getattr(self.arm, "ip", "")).startswith("127.")

    @property
    def robot_on_twin(self) -> bool:
        """Both arm and hand are the twin's (the arm directly, or behind the emulated xArm box)."""
        return (self.arm.type == "twin" or self.arm_on_emulated_box) and self.hand.type == "twin"


# --------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path) -> RuntimeConfig:
    """Load and validate a runtime config YAML file.

    Raises:
        ConfigError: the file is missing or not YAML, or a key or value is bad;
            the message names the file and the key.
    """
    path = Path(path)
    data = _read_yaml(path, ())
    cfg = config_from_dict(data, file=str(path), base_dir=path.parent)
    cfg.source_file = str(path.resolve())
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error (PyYAML
    keeps the last one silently: a test config once loaded ``latch_after_s`` 4.0 that way)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # '<<: *anchor' keys may be overridden
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:   # an unhashable key: the base class reports it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def parse_yaml(text: str, file: str | Path) -> object:
    """``text`` parsed as YAML with keys unique in every mapping.

    Raises:
        ConfigError: not valid YAML, or a key given twice; names ``file``, the line and column.
    """
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", file=str(file)) from exc


def _read_yaml(path: Path, chain: tuple) -> dict:
    """A config file's mapping, with ``extends: <file>`` (relative to it) merged underneath."""
    if not path.is_file():
        raise ConfigError("config file not found", file=str(path))
    if path.resolve() in chain:
        raise ConfigError("'extends' loops back to this file", file=str(path), key="extends")
    data = parse_yaml(path.read_text(), path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__}", file=str(path), key="<top level>")
    base = data.pop("extends", None)
    data = _mark_origin(data, path.parent)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"expected a file name, got {base!r}", file=str(path), key="extends")
    base_path = Path(base) if Path(base).is_absolute() else path.parent / base
    if not base_path.is_file():
        raise ConfigError(f"file not found: {base_path}", file=str(path), key="extends")
    return _merge(_read_yaml(base_path, chain + (path.resolve(),)), data)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and "type" not in v \
            else v
    return out


def config_from_dict(data: Any, file: str = "<dict>", base_dir: Path | None = None) -> RuntimeConfig:
    """Validate a plain dict (as YAML would give) into a :class:`RuntimeConfig`."""
    cfg = _build(RuntimeConfig, data, "", file, base_dir or Path.cwd())
    _check_cross_fields(cfg, file)
    return cfg


def config_to_dict(cfg: Any) -> dict:
    """The plain-dict form of a config dataclass (round-trips through :func:`config_from_dict`)."""
    out = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("internal"):
            continue
        v = getattr(cfg, f.name)
        if dataclasses.is_dataclass(v):
            v = config_to_dict(v)
        elif isinstance(v, (list, tuple)):
            v = list(v)
        elif isinstance(v, str):
            v = str(v)   # plain str, not a path marker subclass
        out[f.name] = v
    return out


def _check_cross_fields(cfg: RuntimeConfig, file: str) -> None:
    cam = cfg.twin.camera
    if cam.max_depth <= cam.min_depth:
        raise ConfigError(f"max_depth {cam.max_depth} must exceed min_depth {cam.min_depth}",
                          file=file, key="twin.camera.max_depth")
    if cfg.camera.type == "zed" and cfg.camera.max_depth <= cfg.camera.min_depth:
        raise ConfigError("max_depth must exceed min_depth", file=file, key="camera.max_depth")
    if cfg.demo.enabled and not cfg.robot_on_twin:
        raise ConfigError("the scripted demo motion runs on the twin only; set demo.enabled: false "
                          "for real hardware", file=file, key="demo.enabled")
    pol = cfg.policy
    if pol.enabled and cfg.demo.enabled:
        raise ConfigError("the scripted demo and the policy would both publish on control.policy_topic; "
                          "enable one of them", file=file, key="policy.enabled")
    if pol.enabled and not pol.checkpoint:
        raise ConfigError("the policy is enabled but no checkpoint is given", file=file, key="policy.checkpoint")
    if pol.arm_controllers and not cfg.robot_on_twin:
        raise ConfigError("arming the controllers from the policy node is for the twin only; on the robot "
                          "arming is the operator's action", file=file, key="policy.arm_controllers")
    twin_only = cfg.robot_on_twin
    if cfg.teleop.enabled and cfg.teleop.input.type == "scripted" and not twin_only:
        raise ConfigError("the scripted expert needs the twin's object poses; choose a real input on the robot",
                          file=file, key="teleop.input.type")
    if cfg.teleop.arm_controllers and not twin_only:
        raise ConfigError("arming the controllers from the teleop node is for the twin only", file=file,
                          key="teleop.arm_controllers")
    if cfg.teleop.arm_controllers and cfg.policy.arm_controllers:
        raise ConfigError("the policy and teleop nodes would both arm the controllers; let one of them",
                          file=file, key="teleop.arm_controllers")
    _check_calibration(cfg, file, twin_only)
    ctl = cfg.control
    hold_s = ctl.hold_after_periods / cfg.rates.policy_hz
    if ctl.latch_after_s <= hold_s:
        raise ConfigError(f"{ctl.latch_after_s} s must exceed the hold time, {ctl.hold_after_periods} policy periods "
                          f"= {hold_s:.3f} s", file=file, key="control.latch_after_s")
    ws = ctl.workspace
    for i, (lo, hi) in enumerate(zip(ws.box_min, ws.box_max)):
        if hi <= lo:
            raise ConfigError(f"box_max[{i}] {hi} must exceed box_min[{i}] {lo}", file=file,
                              key=f"control.workspace.box_max[{i}]")
    if ctl.policy_topic == ctl.teleop_topic:
        raise ConfigError("the policy and teleop sources need different topics", file=file,
                          key="control.teleop_topic")
    for i, (q, (lo, hi)) in enumerate(zip(cfg.robot.arm_home, _desc.ARM_LIMITS)):
        if not lo <= q <= hi:
            raise ConfigError(f"{q} is outside joint {_desc.ARM_JOINTS[i]}'s limits [{lo}, {hi}]",
                              file=file, key=f"robot.arm_home[{i}]")
    for i, (q, (lo, hi)) in enumerate(zip(cfg.robot.hand_home, _desc.HAND_LIMITS)):
        if not lo <= q <= hi:
            raise ConfigError(f"{q} is outside joint {_desc.HAND_JOINTS[i]}'s limits [{lo}, {hi}]",
                              file=file, key=f"robot.hand_home[{i}]")


def _check_calibration(cfg: RuntimeConfig, file: str, twin_only: bool) -> None:
    if cfg.camera.type == "twin" and cfg.camera.color_hz > 0 and not cfg.twin.calibration_marker:
        raise ConfigError("the twin draws colour for calibration only: set twin.calibration_marker: true",
                          file=file, key="camera.color_hz")
    cal = cfg.calibration
    if not cal.enabled:
        return
    if cfg.camera.type not in ("twin", "zed") or cfg.camera.color_hz <= 0:
        raise ConfigError("calibration needs the camera's colour stream: set camera.color_hz (e.g. 2)", file=file,
                          key="camera.color_hz")
    if cal.mode == "planned":
        if cfg.policy.enabled or cfg.teleop.enabled:
            raise ConfigError("planned calibration drives the arm on control.teleop_topic; disable the policy and "
                              "teleop nodes (or use calibration.mode: operator)", file=file,
                              key="policy.enabled" if cfg.policy.enabled else "teleop.enabled")
        if cfg.control.source != "teleop":
            raise ConfigError("planned calibration publishes on control.teleop_topic: set control.source: teleop",
                              file=file, key="control.source")
    if cfg.camera.type == "twin" and cal.marker != MarkerConfig():
        raise ConfigError("the twin carries the default marker (DICT_4X4_50 id 7, 11 mm cells); leave "
                          "calibration.marker out on the twin", file=file, key="calibration.marker")
    if cal.arm_controllers and not twin_only:
        raise ConfigError("arming the controllers from the calibration node is for the twin only", file=file,
                          key="calibration.arm_controllers")
    if cal.arm_controllers and (cfg.policy.arm_controllers or cfg.teleop.arm_controllers):
        raise ConfigError("another node already arms the controllers", file=file, key="calibration.arm_controllers")
    for k in ("camera_guess_position", "camera_guess_look_at"):
        if len(getattr(cal, k)) not in (0, 3):
            raise ConfigError("expected 3 values (x, y, z in m) or none", file=file, key=f"calibration.{k}")
    if bool(cal.camera_guess_position) != bool(cal.camera_guess_look_at):
        raise ConfigError("give both camera_guess_position and camera_guess_look_at, or neither", file=file,
                          key="calibration.camera_guess_look_at")
    try:
        import cv2  # noqa: PLC0415
    except ImportError:
        return
    if not hasattr(cv2.aruco, cal.marker.dictionary):
        raise ConfigError(f"unknown ArUco dictionary {cal.marker.dictionary!r}", file=file,
                          key="calibration.marker.dictionary")


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a number"
    if tp is int:
        return "an integer"
    if tp is bool:
        return "true or false"
    if tp is str or tp in (FilePath, OptionalFilePath, OptionalPath):
        return "a string"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, data: Any, prefix: str, file: str, base_dir: Path):
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping, got {type(data).__name__} {data!r}", file=file,
                          key=prefix.rstrip(".") or "<top level>")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(f"unknown key (known keys here: {', '.join(sorted(fields))})",
                          file=file, key=prefix + str(unknown[0]))
    kwargs = {}
    for name, f in fields.items():
        key = prefix + name
        if name not in data:
            if hints[name] is FilePath and not getattr(cls, name, ""):
                raise ConfigError("required file path is missing", file=file, key=key)
            if hints[name] is OutputDir:   # the default folder is relative to the config file too
                kwargs[name] = _convert(OutputDir, getattr(cls, name), key, f.metadata, file, base_dir)
            elif dataclasses.is_dataclass(hints[name]) and not f.metadata.get("backend"):
                kwargs[name] = _build(hints[name], {}, key + ".", file, base_dir)   # its defaults, resolved
            continue
        value = data[name]
        family = f.metadata.get("backend")
        if family:
            kwargs[name] = _build_backend(family, value, key, file, base_dir)
            continue
        kwargs[name] = _convert(hints[name], value, key, f.metadata, file, base_dir)
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - dataclass construction is fully checked above
        raise ConfigError(str(exc), file=file, key=prefix.rstrip(".")) from exc


def _build_backend(family: str, value: Any, key: str, file: str, base_dir: Path):
    registry = _BACKEND_CONFIGS[family]
    if not isinstance(value, dict):
        raise ConfigError(f"expected a mapping with a 'type' ({', '.join(sorted(registry))})", file=file, key=key)
    if "type" not in value:
        raise ConfigError(f"missing 'type' (one of {', '.join(sorted(registry))})", file=file, key=key + ".type")
    type_name = value["type"]
    if type_name not in registry:
        raise ConfigError(f"unknown {family} backend {type_name!r} (one of {', '.join(sorted(registry))})",
                          file=file, key=key + ".type")
    return _build(registry[type_name], value, key + ".", file, base_dir)


def _convert(tp: Any, value: Any, key: str, meta: typing.Mapping, file: str, base_dir: Path):
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".", file, base_dir)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, key, meta, file, base_dir)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{value!r} is not {_type_name(tp)}", file=file, key=key)
        return _plain(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", file=file, key=key)
        length = meta.get("length")
        if length is not None and len(value) != length:
            raise ConfigError(f"expected {length} values, got {len(value)}", file=file, key=key)
        (elem,) = get_args(tp)[:1] or (Any,)
        return [_convert(elem, v, f"{key}[{i}]", meta, file, base_dir) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", file=file, key=key)
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            raise ConfigError(f"expected {_type_name(tp)}, got {value!r}", file=file, key=key)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", file=file, key=key)
        lo, hi = meta.get("range", (None, None))
        if lo is not None and value < lo:
            raise ConfigError(f"{value} is below the minimum {lo}", file=file, key=key)
        if hi is not None and value > hi:
            raise ConfigError(f"{value} is above the maximum {hi}", file=file, key=key)
        return tp(value)
    if tp in (str, FilePath, OptionalFilePath, OptionalPath, OutputDir):
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", file=file, key=key)
        base_dir = getattr(value, "base_dir", base_dir)   # the folder of the file that wrote it
        if tp is OutputDir:
            p = Path(value).expanduser()
            return tp(str((p if p.is_absolute() else base_dir / p).resolve()))
        if tp is OptionalPath and value:
            p = Path(value).expanduser()
            p = p if p.is_absolute() else base_dir / p
            if not p.exists():
                raise ConfigError(f"not found: {p}", file=file, key=key)
            return tp(str(p.resolve()))
        if tp is FilePath or (tp is OptionalFilePath and value):
            p = Path(value).expanduser()
            if not p.is_absolute():
                p = base_dir / p
            if not p.is_file():
                raise ConfigError(f"file not found: {p}", file=file, key=key)
            return tp(str(p))
        return tp(value)
    if tp is Any:
        return _plain(value)
    raise ConfigError(f"unsupported config type {tp!r}", file=file, key=key)  # pragma: no cover
