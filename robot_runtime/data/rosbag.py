"""rosbag2 in and out: episodes from a ``ros2 bag record`` of the graph, episodes as MCAP bags.

Bags are read and written with `rosbags <https://gitlab.com/ternaris/rosbags>`_, a maintained
pure-Python implementation of rosbag2 (both storage plugins, sqlite3 and MCAP) with the ROS 2
message definitions built in: it needs no ROS install, so a bag recorded on the robot converts
on any training machine, and its CDR is byte for byte what rclpy puts on the wire. (``mcap`` with
``mcap-ros2-support`` reads and writes MCAP alone; rosbag2's sqlite3 bags, still the default of
many labs' ``ros2 bag record``, need rosbags.)

:func:`episode_from_bag` turns a bag of the graph's topics into an episode file through the
recorder's own pieces: the same :class:`~robot_runtime.data.recorder.GridAligner` (the newest
sample of each stream acquired at or before each grid instant), the same grid instants
(:class:`~robot_runtime.control.loop.FrameLockedInstants` on the camera's frames when
``policy.tick_lock`` is ``camera``), the same freshness rules and the same preprocessing
(:class:`~robot_runtime.data.recorder.EpisodeRecorder`). A topic the bag lacks is an error that
names it; a step without fresh inputs is dropped and counted by reason, as live.

:func:`export_bag` writes one episode as a rosbag2 bag (MCAP by default) with the original
message types and acquisition stamps: the depth (``sensor_msgs/Image`` 16UC1, millimetres, at the
recorded resolution) with its ``CameraInfo`` (K scaled to that resolution), both controllers'
joint states and sent commands (``sensor_msgs/JointState``), and the calibration as a static
transform (``/tf_static``, base to camera). ``ros2 bag info``, ``ros2 bag play`` and Foxglove
open it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_runtime import description as D
from robot_runtime.errors import RecordingError

TF_STATIC = "/tf_static"
BASE_FRAME = "link_base"
CAMERA_FRAME = "camera_depth_optical_frame"
#: samples kept per stream while converting (about a second at each stream's rate, as live)
HISTORY = {"depth": 64, "arm_state": 256, "arm_command": 256, "hand_state": 640, "hand_command": 640}
STORAGE = ("mcap", "sqlite3")


def _typestore():
    from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415 - only the bag tools need it

    return get_typestore(Stores.ROS2_JAZZY)


def _joint_topics() -> dict[str, str]:
    from robot_runtime.interfaces import COMMAND_TOPICS, STATE_TOPICS  # noqa: PLC0415

    return {"arm_state": STATE_TOPICS["arm"], "hand_state": STATE_TOPICS["hand"],
            "arm_command": COMMAND_TOPICS["arm"], "hand_command": COMMAND_TOPICS["hand"]}


def _stamp(header) -> float:
    from robot_runtime.ros_io import from_time_msg  # noqa: PLC0415

    return from_time_msg(header.stamp)


def _time(ts, t: float):
    from robot_runtime.ros_io import to_time_msg  # noqa: PLC0415

    stamp = to_time_msg(t)
    return ts.types["builtin_interfaces/msg/Time"](sec=stamp.sec, nanosec=stamp.nanosec)


def _bag_folder(bag) -> Path:
    """The rosbag2 folder of ``bag`` (the folder, or a storage file in it)."""
    bag = Path(bag)
    folder = bag.parent if bag.is_file() else bag
    if not (folder / "metadata.yaml").exists():
        raise RecordingError(f"{bag}: not a rosbag2 folder (no metadata.yaml)")
    return folder


def _first_intrinsics(reader, info_conns) -> np.ndarray | None:
    """K [3, 3] of the first usable CameraInfo on these connections, or None. The camera's
    intrinsics are static: it serves the frames stamped before it too (live, a recorder has it
    long before an episode starts)."""
    from robot_runtime import ros_io  # noqa: PLC0415

    for conn, _, raw in (reader.messages(connections=info_conns) if info_conns else ()):   # [] would be all
        try:
            return ros_io.intrinsics_from_info(reader.deserialize(raw, conn.msgtype))
        except ValueError:
            continue
    return None


def _header(ts, t: float, frame_id: str):
    return ts.types["std_msgs/msg/Header"](stamp=_time(ts, t), frame_id=frame_id)


# ------------------------------------------------------------------------------------ export

def export_bag(episode, out, storage: str = "mcap", depth_topic: str | None = None,
               info_topic: str | None = None) -> Path:
    """Write one episode file as a rosbag2 bag folder ``out`` (created; must not exist).

    Args:
        episode: an ``.episode.npz`` file.
        out: the bag folder to create.
        storage: ``mcap`` (default) or ``sqlite3``.
        depth_topic, info_topic: where the depth and its CameraInfo go (default: the
            ``camera.depth_topic`` / ``camera.info_topic`` of the config the episode was
            recorded with, so the bag converts back with that config).

    Returns:
        ``out``.
    """
    from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: PLC0415

    from robot_runtime.data.episode_file import load_episode  # noqa: PLC0415

    if storage not in STORAGE:
        raise RecordingError(f"bag storage {storage!r}: choose one of {', '.join(STORAGE)}")
    ep = load_episode(episode)
    out = Path(out)
    if out.exists():
        raise RecordingError(f"{out} exists; a bag is written to a new folder")
    camera_cfg = (ep.meta.get("config") or {}).get("camera") or {}
    depth_topic = depth_topic or camera_cfg.get("depth_topic") or "/camera/depth/image"
    info_topic = info_topic or camera_cfg.get("info_topic") or "/camera/depth/camera_info"
    ts = _typestore()
    Image, CameraInfo = ts.types["sensor_msgs/msg/Image"], ts.types["sensor_msgs/msg/CameraInfo"]
    JointState = ts.types["sensor_msgs/msg/JointState"]
    stride = int(ep.meta.get("depth_stride", 1))
    camera = ep.meta.get("camera") or {}
    if "K" not in camera:
        raise RecordingError(f"{ep.path}: the episode has no camera intrinsics (meta 'camera'); cannot write CameraInfo")
    K = np.asarray(camera["K"], float).copy()
    K[:2] /= stride   # the recorded depth is every stride-th pixel of the camera's
    P = np.zeros((3, 4))
    P[:, :3] = K
    roi = ts.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
    messages: list[tuple[float, str, object, str]] = []   # (stamp, topic, message, type)
    last: dict[str, float] = {}

    def add(topic: str, t: float, msg, msgtype: str) -> None:
        if last.get(topic) == t:   # the same sample used by two steps: it was one message
            return
        last[topic] = t
        messages.append((t, topic, msg, msgtype))

    joint_names = list(ep.meta.get("joint_names", D.ALL_JOINTS))
    arm, hand = joint_names[:len(D.ARM_JOINTS)], joint_names[len(D.ARM_JOINTS):]
    topics = _joint_topics()
    for k in range(len(ep)):
        depth = np.ascontiguousarray(ep["depth"][k], dtype="<u2")
        h, w = depth.shape
        t_depth = float(ep["depth_stamp"][k])
        add(depth_topic, t_depth, Image(header=_header(ts, t_depth, CAMERA_FRAME), height=h, width=w, encoding="16UC1",
                                        is_bigendian=0, step=w * 2, data=depth.view(np.uint8).ravel()), "sensor_msgs/msg/Image")
        add(info_topic, t_depth, CameraInfo(header=_header(ts, t_depth, CAMERA_FRAME), height=h, width=w,
                                            distortion_model="plumb_bob", d=np.zeros(5), k=K.ravel(),
                                            r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0,
                                            roi=roi),
            "sensor_msgs/msg/CameraInfo")
        q, cmd = ep["q"][k], ep["command"][k]
        for stream, names, values, t in (("arm_state", arm, q[:7], ep["arm_state_stamp"][k]),
                                         ("hand_state", hand, q[7:], ep["hand_state_stamp"][k]),
                                         ("arm_command", arm, cmd[:7], ep["command_stamp"][k][0]),
                                         ("hand_command", hand, cmd[7:], ep["command_stamp"][k][1])):
            add(topics[stream], float(t), JointState(header=_header(ts, float(t), ""), name=list(names),
                                                     position=np.asarray(values, np.float64), velocity=np.zeros(0),
                                                     effort=np.zeros(0)), "sensor_msgs/msg/JointState")
    T_bc = (ep.meta.get("calibration") or {}).get("T_base_camera")
    if T_bc is not None:
        import transforms3d.quaternions as tq  # noqa: PLC0415

        T_bc = np.asarray(T_bc, float)
        w_, x_, y_, z_ = tq.mat2quat(T_bc[:3, :3])
        t0 = min(m[0] for m in messages)
        tf = ts.types["geometry_msgs/msg/TransformStamped"](
            header=_header(ts, t0, BASE_FRAME), child_frame_id=CAMERA_FRAME,
            transform=ts.types["geometry_msgs/msg/Transform"](
                translation=ts.types["geometry_msgs/msg/Vector3"](x=T_bc[0, 3], y=T_bc[1, 3], z=T_bc[2, 3]),
                rotation=ts.types["geometry_msgs/msg/Quaternion"](x=x_, y=y_, z=z_, w=w_)))
        messages.append((t0, TF_STATIC, ts.types["tf2_msgs/msg/TFMessage"](transforms=[tf]), "tf2_msgs/msg/TFMessage"))
    messages.sort(key=lambda m: m[0])
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    with Writer(out, version=9, storage_plugin=plugin) as writer:
        conns = {}
        for t, topic, msg, msgtype in messages:
            if topic not in conns:
                conns[topic] = writer.add_connection(topic, msgtype, typestore=ts)
            writer.write(conns[topic], int(round(t * 1e9)), ts.serialize_cdr(msg, msgtype))
    return out


# ------------------------------------------------------------------------------------ import

@dataclass
class BagImport:
    """What :func:`episode_from_bag` made: the episode file, the messages read per topic, the
    steps recorded and the steps dropped by reason (as the live recorder counts them)."""

    path: Path | None
    steps: int
    messages: dict[str, int]
    dropped: dict[str, int]
    depth_dropped: dict[str, int] = field(default_factory=dict)
    calibration: str = ""

    def summary(self) -> str:
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items() if v) or "none"
        depth = ", ".join(f"{k} {v}" for k, v in self.depth_dropped.items() if v)
        return (f"{self.steps} steps -> {self.path}; dropped steps: {dropped}"
                + (f"; depth frames not used: {depth}" if depth else "")
                + f"; messages: " + ", ".join(f"{t} {n}" for t, n in self.messages.items())
                + f"; camera pose from {self.calibration}")


def _positions(msg, names: tuple[str, ...], topic: str) -> np.ndarray:
    """A JointState's positions in ``names``' order (by its names when it has them)."""
    pos = np.asarray(msg.position, float)
    if len(msg.name):
        if sorted(msg.name) != sorted(names):
            raise RecordingError(f"{topic}: joint names {list(msg.name)} are not {list(names)}")
        index = {n: i for i, n in enumerate(msg.name)}
        pos = pos[[index[n] for n in names]]
    if pos.shape != (len(names),):
        raise RecordingError(f"{topic}: {pos.shape[0]} positions, expected {len(names)}")
    return pos


def _tf_camera_pose(msg) -> np.ndarray | None:
    import transforms3d.quaternions as tq  # noqa: PLC0415

    for tf in msg.transforms:
        if tf.header.frame_id == BASE_FRAME and tf.child_frame_id == CAMERA_FRAME:
            r, t = tf.transform.rotation, tf.transform.translation
            T = np.eye(4)
            T[:3, :3] = tq.quat2mat([r.w, r.x, r.y, r.z])
            T[:3, 3] = [t.x, t.y, t.z]
            return T
    return None


def episode_from_bag(bag, task: str, out_dir, cfg, schema, calibration: dict, success: bool | None = True,
                     start_s: float | None = None, end_s: float | None = None, operator_note: str = "",
                     progress: bool = True) -> BagImport:
    """Turn a rosbag2 recording of the graph's topics into one episode file in ``out_dir``.

    Args:
        bag: the bag folder (or a single ``.mcap`` / ``.db3`` file in one).
        task: the episode's task.
        out_dir: the episode folder.
        cfg: the runtime config the graph ran with (topics, rates, freshness limits,
            ``policy.tick_lock``).
        schema: the policy's :class:`~policies.schema.PolicySchema` (its preprocessing and
            proprioception order), as ``recorder_node`` resolves it from the config.
        calibration: the config's calibration metadata (``T_base_camera``, source), used when
            the bag carries no base-to-camera transform on ``/tf_static``.
        success: the episode's success flag.
        start_s, end_s: the part of the bag to use, in seconds from its first message.

    Raises:
        RecordingError: the bag cannot be read, or a topic the recorder needs is not in it.
    """
    from rosbags.highlevel import AnyReader  # noqa: PLC0415

    from robot_runtime import ros_io  # noqa: PLC0415
    from robot_runtime.config import config_to_dict  # noqa: PLC0415
    from robot_runtime.control.loop import FrameLockedInstants  # noqa: PLC0415
    from robot_runtime.data.recorder import EpisodeRecorder, GridAligner  # noqa: PLC0415
    from robot_runtime.perception.preprocess import VisualPreprocessor  # noqa: PLC0415

    bag = _bag_folder(bag)
    joint_topics = _joint_topics()
    needed = {cfg.camera.depth_topic: "depth", cfg.camera.info_topic: "info",
              **{topic: stream for stream, topic in joint_topics.items()}}
    try:
        reader = AnyReader([bag], default_typestore=_typestore())
        reader.open()
    except Exception as exc:   # rosbags raises its own error types per storage
        raise RecordingError(f"{bag}: cannot read the bag: {exc}") from exc
    try:
        have = {c.topic for c in reader.connections}
        missing = [t for t in needed if t not in have]
        if missing:
            raise RecordingError(f"{bag}: the recorder needs topics the bag lacks: {', '.join(missing)} "
                                 f"(it has {', '.join(sorted(have)) or 'none'})")
        calibration_from = f"the config ({calibration.get('file') or calibration.get('source')})"
        t0_ns, t1_ns = reader.start_time, reader.end_time
        lo = t0_ns + int((start_s or 0.0) * 1e9)
        hi = t1_ns + 1 if end_s is None else t0_ns + int(end_s * 1e9) + 1
        tf_conns = [c for c in reader.connections if c.topic == TF_STATIC]
        for conn, _, raw in (reader.messages(connections=tf_conns) if tf_conns else ()):   # [] would be all
            T = _tf_camera_pose(reader.deserialize(raw, conn.msgtype))
            if T is not None:
                calibration = {"T_base_camera": T.tolist(), "source": f"{TF_STATIC} in {bag.name}"}
                calibration_from = f"{TF_STATIC} in the bag"
        T_bc = calibration["T_base_camera"]
        period = 1.0 / cfg.rates.policy_hz
        static = {"joint_names": list(D.ALL_JOINTS), "proprio_joint_names": list(schema.joint_names),
                  "config": config_to_dict(cfg), "calibration": calibration,
                  "source": {"bag": str(bag), "bag_span_s": [(lo - t0_ns) * 1e-9, (min(hi, t1_ns) - t0_ns) * 1e-9]}}
        recorder = EpisodeRecorder(out_dir, cfg.rates.policy_hz,
                                   VisualPreprocessor(schema.visual, None if T_bc is None else np.asarray(T_bc, float)),
                                   schema.index_in(D.ALL_JOINTS), static, cfg.recorder.depth_stride,
                                   min_free_mb=cfg.recorder.min_free_mb,
                                   max_episode_s=(hi - lo) * 1e-9 + 2 * period,
                                   max_frame_age_s=cfg.policy.max_frame_age_s,
                                   max_state_age_s=cfg.policy.max_state_age_s)
        aligner = GridAligner(period, cfg.policy.max_frame_age_s, HISTORY)
        instants = FrameLockedInstants(period) if cfg.policy.tick_lock == "camera" else None
        next_free: float | None = None
        counts = {t: 0 for t in needed}
        depth_dropped = {"no_intrinsics": 0, "malformed": 0}
        conns = [c for c in reader.connections if c.topic in needed]
        total = sum(c.msgcount for c in conns)
        bar = None
        if progress:
            from tqdm import tqdm  # noqa: PLC0415
            bar = tqdm(total=total, desc="bag", unit="msg")
        K = _first_intrinsics(reader, [c for c in reader.connections if c.topic == cfg.camera.info_topic])
        started = False
        for conn, t_ns, raw in reader.messages(connections=conns, start=lo, stop=hi):
            if bar is not None:
                bar.update(1)
            stream = needed[conn.topic]
            counts[conn.topic] += 1
            msg = reader.deserialize(raw, conn.msgtype)
            now = t_ns * 1e-9
            frames = []
            if stream == "info":
                try:
                    K = ros_io.intrinsics_from_info(msg)
                except ValueError:
                    pass   # the K before is kept, as live
            elif stream == "depth":
                if K is None:
                    depth_dropped["no_intrinsics"] += 1
                else:
                    try:
                        depth = ros_io.depth_from_msg(msg)
                    except ValueError:
                        depth_dropped["malformed"] += 1
                    else:
                        stamp = _stamp(msg.header)
                        aligner.K = K
                        aligner.add("depth", stamp, depth)
                        frames.append(stamp)
            else:
                names = D.ARM_JOINTS if stream.startswith("arm") else D.HAND_JOINTS
                aligner.add(stream, _stamp(msg.header), _positions(msg, names, conn.topic))
            if not started:   # the episode starts once every stream has a sample (as an operator would)
                if K is None or any(h.newest_t is None for h in aligner.streams.values()):
                    continue
                recorder.start(task, operator_note, now=now)
                started = True
            if instants is not None:
                for instant in instants.instants(frames, now):
                    aligner.mark(instant)
            else:
                next_free = now if next_free is None else next_free
                while now >= next_free:
                    aligner.mark(next_free)
                    next_free += period
            for t, inputs in aligner.settled(now):
                recorder.tick(t, inputs, now)
        if bar is not None:
            bar.close()
        if not started:
            empty = [t for t, n in counts.items() if n == 0]
            raise RecordingError(f"{bag}: no moment in the bag has a sample of every stream"
                                 + (f"; no messages on {', '.join(empty)}" if empty else "")
                                 + ("; no usable CameraInfo" if K is None else ""))
        end = min(hi, t1_ns) * 1e-9
        aligner.mark_through(end)
        for t, inputs in aligner.settled(end, flush=True):
            recorder.tick(t, inputs, end)
        steps, dropped = recorder.status()["steps"], dict(recorder.status()["dropped"])
        if steps == 0:
            recorder.stop(None, discard=True)
            raise RecordingError(f"{bag}: no step had fresh inputs on every topic; dropped steps: "
                                 f"{ {k: v for k, v in dropped.items() if v} }; depth frames not used: {depth_dropped}")
        path = recorder.stop(success, now=time.time())
        return BagImport(path, steps, {t: counts[t] for t in needed}, dropped, depth_dropped, calibration_from)
    finally:
        reader.close()


def read_depth_frames(bag, depth_topic: str, info_topic: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every depth frame of a rosbag2 recording: ``depth`` [N, H, W] float32 (m, NaN = none),
    ``stamps`` [N] (s, acquisition) and ``K`` [3, 3] (the first usable CameraInfo's), for the
    replay camera.

    Raises:
        RecordingError: not a bag, a topic is missing, no usable CameraInfo, or no frame.
    """
    from rosbags.highlevel import AnyReader  # noqa: PLC0415

    from robot_runtime import ros_io  # noqa: PLC0415

    folder = _bag_folder(bag)
    with AnyReader([folder], default_typestore=_typestore()) as reader:
        conns = {c.topic: c for c in reader.connections}
        missing = [t for t in (depth_topic, info_topic) if t not in conns]
        if missing:
            raise RecordingError(f"{bag}: no topic {', '.join(missing)} (it has {', '.join(sorted(conns))})")
        K = _first_intrinsics(reader, [conns[info_topic]])
        if K is None:
            raise RecordingError(f"{bag}: no usable CameraInfo on {info_topic}")
        frames, stamps = [], []
        for conn, _, raw in reader.messages(connections=[conns[depth_topic]]):
            msg = reader.deserialize(raw, conn.msgtype)
            try:
                frames.append(ros_io.depth_from_msg(msg))
            except ValueError as exc:
                raise RecordingError(f"{bag}: {depth_topic} frame {len(frames)}: {exc}") from exc
            stamps.append(_stamp(msg.header))
    if not frames:
        raise RecordingError(f"{bag}: no frames on {depth_topic}")
    order = np.argsort(stamps, kind="stable")
    return np.stack(frames)[order].astype(np.float32), np.asarray(stamps)[order], K


def bag_topics(bag) -> dict[str, tuple[str, int]]:
    """``{topic: (message type, count)}`` of a rosbag2 folder, read by rosbags."""
    from rosbags.highlevel import AnyReader  # noqa: PLC0415

    with AnyReader([Path(bag)], default_typestore=_typestore()) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}

