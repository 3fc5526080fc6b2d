"""Conversions between ROS messages and numpy, shared by the node shells.

Only standard message packages are used (sensor_msgs, std_msgs, geometry_msgs,
diagnostic_msgs), so nothing needs a message-generation build.
"""
from __future__ import annotations

import enum
import functools
import struct
import threading
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState

#: Latest-value command topics: only the newest message matters.
COMMAND_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: State streams.
STATE_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Images: a short queue so a slow reader gets the newest frame.
#: Best effort, as ROS's sensor-data profile: with a reliable image stream, a reader that died
#: (kill -9 of policy_node) left the camera's writer waiting on its acknowledgements, and the
#: depth stream stopped for every other reader for longer than 20 s (bench.faults found it). A
#: reader of these topics must be best effort too (a reliable one does not match).
IMAGE_QOS = QoSProfile(depth=2, reliability=ReliabilityPolicy.BEST_EFFORT, history=HistoryPolicy.KEEP_LAST)
#: Once-per-change facts (episode info) that late joiners must still get.
LATCHED_QOS = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL, history=HistoryPolicy.KEEP_LAST)


class PolledSubscription:
    """A subscription whose messages are taken on demand by the caller's thread.

    rclpy's executor spends about 0.4 ms of CPU per message (it rebuilds its wait set
    every time) and holds the GIL while it does; a 300 Hz loop subscribed to 300 Hz
    streams would spend a third of a core there and wake late. Taking messages straight
    from the subscription costs a fraction of that. ``node`` must never be added to an
    executor, or the executor would take the messages first.
    """

    def __init__(self, node, msg_type, topic: str, qos):
        self.msg_type, self.topic = msg_type, topic
        self.sub = node.create_subscription(msg_type, topic, self._never_called, qos)

    @staticmethod
    def _never_called(_msg) -> None:  # pragma: no cover - the node is never spun
        raise RuntimeError("a polled subscription's node must not be spun by an executor")

    def take(self):
        """The oldest waiting message, or None."""
        with self.sub.handle:
            got = self.sub.handle.take_message(self.msg_type, False)
        return None if got is None else got[0]

    def take_all(self, limit: int = 100) -> list:
        """Every waiting message, oldest first (at most ``limit``)."""
        out = []
        while len(out) < limit:
            m = self.take()
            if m is None:
                break
            out.append(m)
        return out

    def take_serialized_all(self, limit: int = 100) -> list[bytes]:
        """Every waiting message still serialized (CDR bytes), oldest first (at most ``limit``).

        Much cheaper than :meth:`take_all` for a fast stream of which only a few messages are
        used: building the Python message is most of a take's cost. Read the stamp with
        :func:`header_stamp_of_serialized` and deserialize only what is used.
        """
        out = []
        while len(out) < limit:
            with self.sub.handle:
                got = self.sub.handle.take_message(self.msg_type, True)
            if got is None:
                break
            out.append(got[0])
        return out

    def take_latest(self):
        """The newest waiting message (older ones are discarded), or None."""
        latest = None
        for _ in range(1000):
            m = self.take()
            if m is None:
                break
            latest = m
        return latest


def header_stamp_of_serialized(raw: bytes) -> float:
    """The header stamp (s) of a CDR-serialized message whose first field is a std_msgs/Header
    (JointState, Image, CameraInfo, ...), read without deserializing it.

    Raises:
        ValueError: too short, or not CDR encapsulated.
    """
    if len(raw) < 12 or raw[0] != 0 or raw[1] not in (0, 1):
        raise ValueError(f"not a CDR-serialized message with a header ({len(raw)} bytes)")
    sec, nanosec = struct.unpack_from("<iI" if raw[1] == 1 else ">iI", raw, 4)   # after the 4-byte encapsulation
    return sec + nanosec * 1e-9


def to_time_msg(t: float) -> Time:
    """Seconds (float, ROS/epoch time) to builtin_interfaces/Time."""
    sec = int(np.floor(t))
    return Time(sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def from_time_msg(stamp: Time) -> float:
    """builtin_interfaces/Time to seconds (float)."""
    return stamp.sec + stamp.nanosec * 1e-9


def joint_state_msg(names: Sequence[str], stamp: float, position=None, velocity=None, effort=None) -> JointState:
    msg = JointState()
    msg.header.stamp = to_time_msg(stamp)
    msg.name = list(names)
    if position is not None:
        msg.position = [float(v) for v in position]
    if velocity is not None:
        msg.velocity = [float(v) for v in velocity]
    if effort is not None:
        msg.effort = [float(v) for v in effort]
    return msg


class JointStateWriter:
    """Publishes JointState messages for one fixed list of joints from a loop, reusing one
    message whose names are set once (building a fresh message with its names costs as much
    as publishing it; rclpy serializes on ``publish``, so the reuse is safe).

    Args:
        publisher: an rclpy publisher of JointState.
        names: the joints, in the order of the values given to :meth:`publish`.
    """

    def __init__(self, publisher, names: Sequence[str]):
        self.publisher = publisher
        self._msg = JointState()
        self._msg.name = list(names)

    def publish(self, stamp: float, position=None, velocity=None, effort=None) -> None:
        """Publish the values (each [n] or None for an empty field) stamped ``stamp`` (s)."""
        m = self._msg
        m.header.stamp = to_time_msg(stamp)
        m.position = [] if position is None else np.asarray(position, dtype=float).tolist()
        m.velocity = [] if velocity is None else np.asarray(velocity, dtype=float).tolist()
        m.effort = [] if effort is None else np.asarray(effort, dtype=float).tolist()
        self.publisher.publish(m)


@functools.lru_cache(maxsize=64)
def _order_index(msg_names: tuple[str, ...], expected: tuple[str, ...]) -> np.ndarray:
    """Where each of ``expected`` is in ``msg_names`` (cached: a stream names its joints the same
    way every message). Raises ValueError when the names are not a permutation of ``expected``."""
    if sorted(msg_names) != sorted(expected):
        missing = sorted(set(expected) - set(msg_names))
        extra = sorted(set(msg_names) - set(expected))
        raise ValueError(f"joint names do not match: missing {missing}, unexpected {extra}")
    index = {n: i for i, n in enumerate(msg_names)}
    return np.array([index[n] for n in expected], dtype=int)


def ordered_values(msg_names: Sequence[str], values: Sequence[float], expected: Sequence[str], field: str,
                   allow_unnamed: bool = False) -> np.ndarray:
    """Values of a JointState field reordered to ``expected`` joint names.

    Raises:
        ValueError: names do not match ``expected`` (missing, extra or duplicated), the
            field's length differs from the names', or a value is not finite.
    """
    values = np.asarray(values, dtype=float)
    if not msg_names:
        if not allow_unnamed:
            raise ValueError(f"JointState has no joint names; expected {list(expected)}")
        if values.shape != (len(expected),):
            raise ValueError(f"unnamed JointState.{field} has {values.size} values, expected {len(expected)}")
        out = values
    else:
        if len(msg_names) != len(values):
            raise ValueError(f"JointState has {len(msg_names)} names but {len(values)} {field} values")
        out = values[_order_index(tuple(msg_names), tuple(expected))]
    if not np.all(np.isfinite(out)):
        raise ValueError(f"JointState.{field} has a non-finite value: {out.tolist()}")
    return out


def _image_msg(pixels: np.ndarray, encoding: str, stamp: float, frame_id: str) -> Image:
    """An Image of contiguous ``pixels`` [H, W, ...] (little-endian, unpadded rows)."""
    msg = Image()
    msg.header.stamp = to_time_msg(stamp)
    msg.header.frame_id = frame_id
    msg.height, msg.width = pixels.shape[:2]
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = pixels.strides[0]
    msg.data = pixels.tobytes()
    return msg


def depth_image_msg(depth: np.ndarray, stamp: float, frame_id: str) -> Image:
    """A 32FC1 depth image (metres) message from an [H, W] float32 array."""
    return _image_msg(np.ascontiguousarray(depth, dtype=np.float32), "32FC1", stamp, frame_id)


#: Depth encodings :func:`depth_from_msg` reads: numpy dtype, and units per metre.
DEPTH_ENCODINGS = {"32FC1": ("f4", 1.0), "16UC1": ("u2", 1000.0)}
#: The largest depth image accepted (pixels a side): a bigger one is a malformed message.
MAX_IMAGE_SIDE = 8192


def depth_from_msg(msg: Image) -> np.ndarray:
    """[H, W] float32 metres from a 32FC1 Image (``16UC1`` millimetres is converted, 0 becoming NaN).

    Rows may be padded (``step``), and either byte order is read (``is_bigendian``).

    Raises:
        ValueError: another encoding, a size out of range, or a ``step`` or data length that
            does not hold ``height`` rows of ``width`` pixels; the message says which.
    """
    enc = DEPTH_ENCODINGS.get(msg.encoding)
    if enc is None:
        raise ValueError(f"unsupported depth encoding {msg.encoding!r} (expected 32FC1 or 16UC1)")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if not (0 < h <= MAX_IMAGE_SIDE and 0 < w <= MAX_IMAGE_SIDE):
        raise ValueError(f"depth image of {w}x{h} pixels (each side 1..{MAX_IMAGE_SIDE})")
    dtype = np.dtype((">" if msg.is_bigendian else "<") + enc[0])
    if step < w * dtype.itemsize or step % dtype.itemsize:
        raise ValueError(f"depth image step {step} bytes does not hold a row of {w} {msg.encoding} pixels")
    if len(msg.data) != step * h:
        raise ValueError(f"depth image of {len(msg.data)} bytes, expected {h} rows of {step} = {step * h}")
    raw = np.frombuffer(msg.data, dtype=dtype).reshape(h, step // dtype.itemsize)[:, :w]
    if msg.encoding == "32FC1":
        return raw if raw.dtype.isnative and step == w * 4 else np.ascontiguousarray(raw, dtype=np.float32)
    out = raw.astype(np.float32) / np.float32(enc[1])
    out[raw == 0] = np.nan
    return out


def color_image_msg(rgb: np.ndarray, stamp: float, frame_id: str) -> Image:
    """An rgb8 image message from an [H, W, 3] uint8 array."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"a colour image is [H, W, 3], got shape {rgb.shape}")
    return _image_msg(rgb, "rgb8", stamp, frame_id)


def color_from_msg(msg: Image) -> np.ndarray:
    """[H, W, 3] uint8 RGB from an rgb8, bgr8 or bgra8 Image (rows may be padded)."""
    channels = {"rgb8": 3, "bgr8": 3, "bgra8": 4}.get(msg.encoding)
    if channels is None:
        raise ValueError(f"unsupported colour encoding {msg.encoding!r} (expected rgb8, bgr8 or bgra8)")
    if msg.step < msg.width * channels or len(msg.data) < msg.step * msg.height:
        raise ValueError(f"colour image of {len(msg.data)} bytes does not hold {msg.height} rows of step {msg.step}")
    rows = np.frombuffer(msg.data, dtype=np.uint8)[:msg.step * msg.height].reshape(msg.height, msg.step)
    px = rows[:, :msg.width * channels].reshape(msg.height, msg.width, channels)
    return np.ascontiguousarray(px if msg.encoding == "rgb8" else px[:, :, 2::-1])


def intrinsics_from_info(msg: CameraInfo) -> np.ndarray:
    """K [3, 3] from a CameraInfo. Raises ValueError when K is not finite or a focal length
    is not positive (an uncalibrated driver publishes K = 0)."""
    K = np.asarray(msg.k, dtype=float).reshape(3, 3)
    if not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"CameraInfo has no usable intrinsics: K = {K.tolist()}")
    return K


def usable_intrinsics(msg: CameraInfo, logger, topic: str) -> np.ndarray | None:
    """:func:`intrinsics_from_info`, or None with a warning (at most every 5 s) naming ``topic``:
    for subscribers, which keep the K they had rather than stop on one bad message."""
    try:
        return intrinsics_from_info(msg)
    except ValueError as exc:
        logger.warn(f"{topic}: {exc}", throttle_duration_sec=5.0)
        return None


class DepthDrop(str, enum.Enum):
    """Why :class:`DepthInput` did not hand on a depth frame."""

    NO_INTRINSICS = "no_intrinsics"   # no usable CameraInfo yet: the frame cannot be projected
    MALFORMED = "malformed"           # wrong encoding, size, step or data length


class DepthInput:
    """A camera's depth stream and its CameraInfo, polled from a loop.

    Frames are handed on decoded (``[H, W]`` float32 metres) with their acquisition stamp (s)
    and the newest usable intrinsics ``K`` [3, 3]. Until a CameraInfo with usable intrinsics
    arrives every frame is dropped (no guessed K ever projects a cloud), and a malformed image
    is skipped; both are counted in :attr:`dropped` and warned about at most every 5 s.

    A loop polls it (:meth:`take_latest`, :meth:`take_all`: the node must never be spun); a node
    spun by an executor passes ``on_frame`` instead, called with (stamp, depth, K) for each frame
    handed on.

    Args:
        node: the node to subscribe on.
        depth_topic, info_topic: the camera's topics.
        logger: where the warnings go.
        depth_qos: the depth subscription's QoS (a recorder keeps a deeper queue).
        on_frame: for a spun node, the callback of each frame handed on.
    """

    def __init__(self, node, depth_topic: str, info_topic: str, logger, depth_qos=IMAGE_QOS, on_frame=None):
        self.depth_topic, self.info_topic, self.logger = depth_topic, info_topic, logger
        self.K: np.ndarray | None = None
        self.dropped: Counter = Counter()
        self.last_drop = ""
        self.node = node
        if on_frame is None:
            self.sub_depth = PolledSubscription(node, Image, depth_topic, depth_qos)
            self.sub_info = PolledSubscription(node, CameraInfo, info_topic, IMAGE_QOS)
            self._subs = [self.sub_depth.sub, self.sub_info.sub]
        else:
            self._subs = [node.create_subscription(CameraInfo, info_topic, self.on_info, IMAGE_QOS),
                          node.create_subscription(Image, depth_topic, lambda m: self._deliver(m, on_frame), depth_qos)]

    def destroy(self) -> None:
        """Unsubscribe (the node stays)."""
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []

    def on_info(self, msg: CameraInfo) -> None:
        """A CameraInfo: its K is used from now on if usable (else the one before is kept)."""
        K = usable_intrinsics(msg, self.logger, self.info_topic)
        if K is not None:
            self.K = K

    def on_depth(self, msg: Image) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(stamp s, depth [H, W] m, K [3, 3]) of a depth image, or None when it is dropped."""
        if self.K is None:
            return self._drop(DepthDrop.NO_INTRINSICS, f"no usable CameraInfo on {self.info_topic} yet")
        try:
            depth = depth_from_msg(msg)
        except ValueError as exc:
            return self._drop(DepthDrop.MALFORMED, str(exc))
        return from_time_msg(msg.header.stamp), depth, self.K

    def _deliver(self, msg: Image, on_frame) -> None:
        frame = self.on_depth(msg)
        if frame is not None:
            on_frame(*frame)

    def _drop(self, why: DepthDrop, detail: str) -> None:
        self.dropped[why.value] += 1
        self.last_drop = f"{why.value}: {detail}"
        self.logger.warn(f"{self.depth_topic}: depth frame dropped ({why.value}): {detail}",
                         throttle_duration_sec=5.0)

    def _update_K(self) -> None:
        info = self.sub_info.take_latest()
        if info is not None:
            self.on_info(info)

    def take_latest(self) -> tuple[float, np.ndarray, np.ndarray] | None:
        """(stamp s, depth [H, W] m, K [3, 3]) of the newest waiting frame (older ones are discarded),
        or None: none waiting, or it was dropped."""
        self._update_K()
        msg = self.sub_depth.take_latest()
        return None if msg is None else self.on_depth(msg)

    def take_all(self, limit: int = 100) -> list[tuple[float, np.ndarray, np.ndarray]]:
        """Every waiting frame, oldest first (at most ``limit``), as :meth:`take_latest` gives one."""
        self._update_K()
        out = []
        for msg in self.sub_depth.take_all(limit):
            got = self.on_depth(msg)
            if got is not None:
                out.append(got)
        return out


def guarded(callback, logger, topic: str):
    """``callback`` for a subscription to ``topic`` that drops a message it cannot use (it raises
    ValueError, KeyError, TypeError or AttributeError: bad JSON, a missing field, a wrong type),
    with a warning at most every 5 s, instead of ending the node: any DDS peer can publish."""
    def on_message(msg) -> None:
        try:
            callback(msg)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            logger.warn(f"{topic}: message dropped: {exc!r}", throttle_duration_sec=5.0)
    return on_message


def camera_info_msg(K: np.ndarray, width: int, height: int, stamp: float, frame_id: str) -> CameraInfo:
    msg = CameraInfo()
    msg.header.stamp = to_time_msg(stamp)
    msg.header.frame_id = frame_id
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in np.ravel(K)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = [float(v) for v in np.ravel(P)]
    return msg


def diagnostics_msg(stamp: float, name: str, hardware_id: str, values: dict, level: int = 0,
                    message: str = "ok") -> DiagnosticArray:
    """A DiagnosticArray with one status; ``values`` become key/value strings."""
    arr = DiagnosticArray()
    arr.header.stamp = to_time_msg(stamp)
    st = DiagnosticStatus(level=bytes([level]), name=name, message=message, hardware_id=hardware_id)
    st.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in values.items()]
    arr.status = [st]
    return arr


def diagnostic_values(arr: DiagnosticArray, name: str) -> dict[str, str] | None:
    """The key/values of the status called ``name`` in ``arr``, or None."""
    for st in arr.status:
        if st.name == name:
            return {kv.key: kv.value for kv in st.values}
    return None


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


#: Fast DDS shared-memory segment (bytes) for a process that publishes images. The default
#: segment is 512 KiB; with it a 1 MB depth frame (ZED VGA, 32FC1) at 30 Hz reached each of two
#: readers at 6-15 Hz (a 720p frame at 0-5 Hz), and a SIGKILLed reader held the twin's 320x240
#: stream to the others at 19-22 Hz for about 2 s (bench.faults found it). With 32 MiB every case
#: ran at 30 Hz; 32 MiB holds four 1080p depth frames.
IMAGE_SHM_SEGMENT_BYTES = 32 * 1024 * 1024
_PROFILE_VARS = ("FASTRTPS_DEFAULT_PROFILES_FILE", "FASTDDS_DEFAULT_PROFILES_FILE")


def image_publisher_transport(segment_bytes: int = IMAGE_SHM_SEGMENT_BYTES) -> str | None:
    """Give this process's Fast DDS participant a shared-memory segment large enough for images.

    Must run before ``rclpy.init``. Writes a Fast DDS profile (shared memory with
    ``segment_bytes``, then UDPv4) and points ``FASTRTPS_DEFAULT_PROFILES_FILE`` at it. Nothing
    is changed when another RMW is chosen or a profile file is already set (the user's wins).

    Returns:
        The profile's path, or None when nothing was changed.
    """
    import os
    import tempfile
    from pathlib import Path

    if os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp") != "rmw_fastrtps_cpp":
        return None
    if any(os.environ.get(v) for v in _PROFILE_VARS):
        return None
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<dds xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>image_shm</transport_id>
        <type>SHM</type>
        <segment_size>{int(segment_bytes)}</segment_size>
      </transport_descriptor>
      <transport_descriptor>
        <transport_id>udp</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="robot_runtime_image_publisher" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>image_shm</transport_id>
          <transport_id>udp</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""
    path = Path(tempfile.gettempdir()) / f"robot_runtime_fastdds_{os.getuid()}_{int(segment_bytes)}.xml"
    if not path.is_file() or path.read_text() != xml:
        tmp = path.with_name(f"{path.name}.{os.getpid()}")
        tmp.write_text(xml)
        tmp.replace(path)
    os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = str(path)
    return str(path)


class SpunNode:
    """An rclpy node in a context of its own, spun by a daemon thread: what a probe or monitor
    beside the graph uses (the launcher's monitor, the fault bench's probe, the tests' probe).

    Attributes:
        context, node, executor: the context, the node and the single-threaded executor
            spinning it every ``spin_timeout_s`` at most.
    """

    def __init__(self, name: str, spin_timeout_s: float = 0.02):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spin_timeout_s = spin_timeout_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=f"{name}-spin", daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            self.executor.spin_once(timeout_sec=self._spin_timeout_s)

    def close(self) -> None:
        """Stop spinning, then destroy the node and shut the context down."""
        import rclpy

        self._stop.set()
        self._thread.join(2.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def spin_ros_main(node_factory, args: Iterable[str] | None = None) -> int:
    """Run one node until SIGINT/SIGTERM or shutdown; a RobotRuntimeError at start prints one
    line and exits 2.

    Once the node is built, SIGINT and SIGTERM only set a flag that the spin loop checks
    between callbacks (at least every 0.1 s). Python's default SIGINT handler raises
    KeyboardInterrupt wherever the main thread happens to be, and when that is inside
    rclpy taking a message, the binding turns it into a ``RuntimeError`` ("Unable to
    convert call argument") and the node dies with a traceback instead of stopping. With the flag, the node always stops
    the same way: its ``close()`` runs (stops its device, sends a last safe command, saves
    its files) while the ROS context is still valid, and it exits 0.

    A node started by the launcher (its pid in :data:`~robot_runtime.launcher.LAUNCHER_PID_ENV`) also stops when its
    parent is no longer that process: the launcher died and the SIGINT the kernel sends then was
    lost (it came before the handler was in place, or the start swallowed it).

    A node class with ``publishes_images = True`` gets the shared-memory segment of
    :func:`image_publisher_transport` (set up before ``rclpy.init``).

    A node with ``executor_threads`` above 1 is spun by a multi-threaded executor with that many
    threads: its callbacks in separate callback groups then run side by side (policy_node's
    services answer while a hot-swap loads in its parameter callback).
    """
    import os
    import signal
    import sys
    import threading

    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    from robot_runtime.errors import RobotRuntimeError
    from robot_runtime.launcher import LAUNCHER_PID_ENV

    if getattr(node_factory, "publishes_images", False):
        image_publisher_transport()
    stop = threading.Event()
    building = True
    launcher = os.environ.get(LAUNCHER_PID_ENV, "")
    launcher_pid = int(launcher) if launcher.isdigit() else None

    def orphaned() -> bool:
        # started by the launcher and it is gone: the SIGINT its death sends (PR_SET_PDEATHSIG) can
        # be lost (it came before the handler, or the start swallowed it), the new parent cannot
        return launcher_pid is not None and os.getppid() != launcher_pid

    def on_signal(*_):
        stop.set()
        if building:
            raise KeyboardInterrupt   # a slow start is still interrupted (nothing to clean up yet)

    previous = {}
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    node = executor = None
    code = 0
    try:
        # The flag is set even when the start swallows the KeyboardInterrupt (a library that
        # catches every exception while it initialises): the node then stops instead of
        # spinning on with its stop signal lost.
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        node = node_factory()
        building = False
        threads = int(getattr(node, "executor_threads", 1))
        executor = MultiThreadedExecutor(num_threads=threads) if threads > 1 else SingleThreadedExecutor()
        executor.add_node(node)
        while not stop.is_set() and executor.context.ok() and not orphaned():
            executor.spin_once(timeout_sec=0.1)
    except RobotRuntimeError as exc:
        print(f"[{getattr(node_factory, '__name__', 'node')}] error: {exc}", file=sys.stderr, flush=True)
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                close()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
