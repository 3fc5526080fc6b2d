"""Logging a rollout to Rerun: one class, no ROS.

:class:`RolloutLogger` writes, on the timelines ``time`` (wall clock, s) and ``step`` (policy
steps since the episode began):

- ``world/robot/box|cylinder|sphere``: the robot model (the URDF's primitives) posed from
  measured joints;
- ``world/camera``: the camera pose in the base frame and its pinhole, ``world/camera/depth``
  the depth image the policy saw (m);
- ``world/points``: the policy's point cloud in the robot base frame (m);
- ``joints/arm/target|measured`` and ``joints/hand/target|measured``: one series per joint (rad);
- ``policy/latency_ms``, ``policy/frame_age_ms``;
- ``controllers/<arm|hand>/<stat>``: loop lateness, overruns;
- ``shield/<arm|hand>``: interventions;
- ``events``: episode start and stop, success, and what the logger itself has to say
  (throttling).

:func:`rollout_blueprint` lays the views out for reviewing a rollout. Sinks: ``spawn`` a
viewer, ``connect`` to a running one (gRPC url), ``save`` an ``.rrd`` file, or ``memory``.

Under load, :class:`LogThrottle` thins the heavy entities (depth, cloud, robot pose) so that
logging stays within a share of the wall time; the scalars are always logged. It says when
it starts and stops thinning, on ``events`` and to the caller.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_runtime import description as D
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.description.geometry import RobotPrimitives

SINKS = ("spawn", "connect", "save", "memory")
DEFAULT_URL = "rerun+http://127.0.0.1:9876/proxy"


class VizError(RobotRuntimeError):
    """The Rerun logger cannot start (bad sink, unwritable file, SDK missing)."""


def _rr():
    try:
        import rerun as rr  # noqa: PLC0415 - the SDK is only needed when something is logged
    except ImportError as exc:  # pragma: no cover - the Makefile installs it
        raise VizError("the Rerun SDK is not installed: pip install rerun-sdk (the 'viz' extra)") from exc
    return rr


def rollout_blueprint():
    """The rollout-review layout: the 3D cell and the depth image on the left; target versus
    measured joints, policy timing, controller loops, shield interventions and events on the right."""
    import rerun.blueprint as rrb  # noqa: PLC0415

    return rrb.Blueprint(
        rrb.Horizontal(
            rrb.Vertical(
                rrb.Spatial3DView(origin="world", name="Robot, cloud and camera"),
                rrb.Spatial2DView(origin="world/camera", name="Depth the policy saw"),
                row_shares=[3, 2]),
            rrb.Vertical(
                rrb.TimeSeriesView(origin="joints/arm", name="Arm: target vs measured (rad)"),
                rrb.TimeSeriesView(origin="joints/hand", name="Hand: target vs measured (rad)"),
                rrb.Horizontal(
                    rrb.TimeSeriesView(origin="policy", name="Policy latency, frame age (ms)"),
                    rrb.TimeSeriesView(origin="controllers", name="Controller loops"),
                    rrb.TimeSeriesView(origin="shield", name="Shield interventions")),
                rrb.TextLogView(origin="events", name="Events"),
                row_shares=[3, 3, 2, 1]),
            column_shares=[1, 1]),
        collapse_panels=True)


@dataclass
class LogThrottle:
    """Keeps the logger's own time under ``budget`` of the wall time.

    Heavy items (images, clouds, robot poses) are logged every ``every``-th call to
    :meth:`heavy_due` (``min_every`` when there is no load); ``every`` doubles (up to
    ``max_every``) while the share of time spent logging over the last ``window_s`` exceeds
    ``budget``, and halves back once it is under half of it. :meth:`account` records how long
    one logging call took.
    """

    budget: float = 0.25
    window_s: float = 2.0
    max_every: int = 16
    min_every: int = 1
    every: int = 0
    _count: int = 0
    _busy: float = 0.0
    _t0: float | None = None

    def __post_init__(self):
        self.every = max(self.every, self.min_every, 1)

    def heavy_due(self) -> bool:
        self._count += 1
        return self._count % self.every == 0

    def account(self, seconds: float, now: float) -> str:
        """Add ``seconds`` of logging at ``now``; returns a message when the thinning changes."""
        if self._t0 is None:
            self._t0 = now
        self._busy += seconds
        span = now - self._t0
        if span < self.window_s:
            return ""
        share = self._busy / span
        self._busy, self._t0 = 0.0, now
        if share > self.budget and self.every < self.max_every:
            self.every *= 2
            return (f"viz: logging took {share:.0%} of the time (budget {self.budget:.0%}); "
                    f"images, clouds and robot poses now every {self.every} updates")
        if share < self.budget / 2 and self.every > self.min_every:
            self.every = max(self.every // 2, self.min_every)
            return f"viz: load eased ({share:.0%}); images, clouds and robot poses every {self.every} updates"
        return ""


class RolloutLogger:
    """Logs rollouts to one Rerun recording (see the module docstring).

    Args:
        sink: 'spawn', 'connect', 'save' or 'memory'.
        target: the ``.rrd`` path for 'save', the gRPC url for 'connect' (default
            :data:`DEFAULT_URL`); unused otherwise.
        app_id, recording_id: Rerun's application id and the recording's id.
        urdf: the robot description (default: the packaged xArm7 + Allegro URDF).
        joint_names: the order of the 23 joints in every ``q`` given to the logger.
        throttle: a :class:`LogThrottle` (None: log everything).
        depth_stride: depth images are logged at 1/stride resolution, in uint16 mm (a 320 x 240
            frame at stride 2 is 38 kB instead of 300 kB).

    Raises:
        VizError: unknown sink, or the file cannot be written.
    """

    def __init__(self, sink: str = "save", target: str = "", app_id: str = "robot_runtime",
                 recording_id: str | None = None, urdf=None, joint_names=D.ALL_JOINTS,
                 throttle: LogThrottle | None = None, depth_stride: int = 1):
        if sink not in SINKS:
            raise VizError(f"viz sink must be one of {', '.join(SINKS)}, not {sink!r}")
        rr = self.rr = _rr()
        self.joint_names = tuple(joint_names)
        self.robot = RobotPrimitives(urdf, self.joint_names)
        self.throttle = throttle
        self.depth_stride = max(1, int(depth_stride))
        self.sink, self.target = sink, target
        self.rec = rr.RecordingStream(app_id, recording_id=recording_id)
        bp = rollout_blueprint()
        try:
            if sink == "save":
                if not target:
                    raise VizError("viz sink 'save' needs a file path (.rrd)")
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                self.rec.save(str(target), default_blueprint=bp)
            elif sink == "spawn":
                self.rec.spawn(default_blueprint=bp)
            elif sink == "connect":
                self.rec.connect_grpc(target or DEFAULT_URL, default_blueprint=bp)
            else:
                self.memory = self.rec.memory_recording()
        except VizError:
            raise
        except Exception as exc:  # noqa: BLE001 - the SDK raises its own types
            raise VizError(f"viz sink {sink!r} {target!r} failed: {exc}") from exc
        self._log_static()
        self.messages: list[str] = []
        self.last_heavy = False   # whether the last log_step logged the heavy items

    # ------------------------------------------------------------------ static
    def _log_static(self) -> None:
        rr = self.rr
        self.rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
        self._parts = []
        for part, names in (("arm", D.ARM_JOINTS), ("hand", D.HAND_JOINTS)):
            self._parts.append((part, np.array([self.joint_names.index(n) for n in names])))
            self.rec.log(f"joints/{part}/target", rr.SeriesLines(widths=1.0, names=[f"{n} target" for n in names]),
                         static=True)
            self.rec.log(f"joints/{part}/measured", rr.SeriesLines(widths=2.0, names=[f"{n} measured" for n in names]),
                         static=True)

    # ------------------------------------------------------------------ time
    def set_time(self, t: float, step: int | None = None) -> None:
        """Everything logged next is at wall time ``t`` (s since the epoch) and policy ``step``."""
        self.rec.set_time("time", timestamp=float(t))
        if step is not None:
            self.rec.set_time("step", sequence=int(step))

    # ------------------------------------------------------------------ heavy
    def heavy_due(self) -> bool:
        """Whether this update should log the heavy items (see :class:`LogThrottle`)."""
        return True if self.throttle is None else self.throttle.heavy_due()

    def log_robot(self, q) -> None:
        """The robot model posed from measured joints ``q`` [23] (rad, ``joint_names`` order)."""
        rr = self.rr
        colour = [170, 170, 180]
        # three batches of primitives (boxes, cylinders, spheres): three log calls, not one per link
        for kind, (T, sizes) in self.robot.posed(q).items():
            centers, quats = T[:, :3, 3], mats_to_xyzw(T[:, :3, :3])
            ent = f"world/robot/{kind}"
            if kind == "box":
                self.rec.log(ent, rr.Boxes3D(centers=centers, half_sizes=sizes / 2, quaternions=quats, colors=colour,
                                             fill_mode="solid"))
            elif kind == "cylinder":
                self.rec.log(ent, rr.Cylinders3D(centers=centers, radii=sizes[:, 0], lengths=sizes[:, 1],
                                                 quaternions=quats, colors=colour, fill_mode="solid"))
            else:
                self.rec.log(ent, rr.Ellipsoids3D(centers=centers, half_sizes=np.repeat(sizes[:, :1], 3, axis=1),
                                                  colors=colour, fill_mode="solid"))

    def log_camera(self, K, T_base_camera, width: int, height: int, static: bool = True) -> None:
        """The camera: its pose in the base frame (4x4) and pinhole ``K`` [3, 3] for a ``width`` x ``height`` image."""
        rr = self.rr
        T = np.asarray(T_base_camera, float)
        s = self.depth_stride
        K = np.asarray(K, float).copy()
        K[:2] /= s
        self.rec.log("world/camera", rr.Transform3D(translation=T[:3, 3], mat3x3=T[:3, :3]), static=static)
        self.rec.log("world/camera", rr.Pinhole(image_from_camera=K, resolution=[-(-width // s), -(-height // s)],
                                                camera_xyz=rr.ViewCoordinates.RDF), static=static)

    def log_depth(self, depth) -> None:
        """The depth image [H, W] (m; 0 or NaN = no depth) the policy saw."""
        s = self.depth_stride
        d = np.asarray(depth, np.float32)[::s, ::s]
        mm = np.where(np.isfinite(d), np.clip(d * 1000.0, 0, 65535), 0).astype(np.uint16)
        self.rec.log("world/camera/depth", self.rr.DepthImage(mm, meter=1000.0, colormap="turbo"))

    def log_points(self, points) -> None:
        """The policy's point cloud [N, 3] in the robot base frame (m)."""
        self.rec.log("world/points", self.rr.Points3D(np.asarray(points, np.float32), radii=0.004,
                                                      colors=[255, 140, 0]))

    # ------------------------------------------------------------------ scalars
    def log_joints(self, measured=None, target=None) -> None:
        """Measured and target joints [23] (rad, ``joint_names`` order); either may be None."""
        rr = self.rr
        for kind, q in (("measured", measured), ("target", target)):
            if q is None:
                continue
            q = np.asarray(q, float)
            for part, idx in self._parts:
                self.rec.log(f"joints/{part}/{kind}", rr.Scalars(q[idx]))

    def log_policy(self, latency_ms: float | None = None, frame_age_ms: float | None = None) -> None:
        for name, v in (("latency_ms", latency_ms), ("frame_age_ms", frame_age_ms)):
            if v is not None and np.isfinite(v):
                self.rec.log(f"policy/{name}", self.rr.Scalars(float(v)))

    def log_controller(self, part: str, stats: dict) -> None:
        """A controller's loop statistics: {name: number}, e.g. lateness_p99_ms, overruns."""
        for k, v in stats.items():
            if v is not None and np.isfinite(float(v)):
                self.rec.log(f"controllers/{part}/{k}", self.rr.Scalars(float(v)))

    def log_shield(self, part: str, interventions: float) -> None:
        self.rec.log(f"shield/{part}", self.rr.Scalars(float(interventions)))

    def log_calibration_check(self, residual_m: np.ndarray, text: str) -> None:
        """A calibration check: the depth residual on the robot's pixels [H, W] (m, NaN off the
        robot) as an image in mm, and its summary on ``calibration/check``."""
        mm = np.nan_to_num(np.asarray(residual_m, np.float32) * 1e3)
        self.rec.log("calibration/residual_mm", self.rr.DepthImage(np.abs(mm), meter=1.0, colormap="turbo"))
        self.rec.log("calibration/check", self.rr.TextLog(text))

    def log_event(self, text: str, level: str = "INFO") -> None:
        self.rec.log("events", self.rr.TextLog(text, level=level))

    # ------------------------------------------------------------------ one step
    def log_step(self, t: float, step: int | None, measured=None, target=None, depth=None, points=None) -> str:
        """One policy step at wall time ``t``: joints always, the heavy items when due.
        Returns what the throttle has to say ('' mostly)."""
        t0 = time.perf_counter()
        self.set_time(t, step)
        self.log_joints(measured, target)
        self.last_heavy = self.heavy_due()
        if self.last_heavy:
            if measured is not None:
                self.log_robot(measured)
            if depth is not None:
                self.log_depth(depth)
            if points is not None:
                self.log_points(points)
        msg = ""
        if self.throttle is not None:
            msg = self.throttle.account(time.perf_counter() - t0, time.monotonic())
            if msg:
                self.log_event(msg, "WARN")
                self.messages.append(msg)
        return msg

    def close(self) -> None:
        """Flush and close the sink (the ``.rrd`` is complete after this)."""
        try:
            self.rec.flush(blocking=True)
        except TypeError:  # pragma: no cover - older SDKs flush without arguments
            self.rec.flush()
        self.rec.disconnect()


def mats_to_xyzw(R: np.ndarray) -> np.ndarray:
    """Rotation matrices [N, 3, 3] -> unit quaternions [N, 4] (x, y, z, w), w >= 0."""
    R = np.asarray(R, float)
    d0, d1, d2 = R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]
    w = np.sqrt(np.maximum(0.0, 1.0 + d0 + d1 + d2)) / 2
    x = np.copysign(np.sqrt(np.maximum(0.0, 1.0 + d0 - d1 - d2)) / 2, R[:, 2, 1] - R[:, 1, 2])
    y = np.copysign(np.sqrt(np.maximum(0.0, 1.0 - d0 + d1 - d2)) / 2, R[:, 0, 2] - R[:, 2, 0])
    z = np.copysign(np.sqrt(np.maximum(0.0, 1.0 - d0 - d1 + d2)) / 2, R[:, 1, 0] - R[:, 0, 1])
    q = np.stack([x, y, z, w], axis=1)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def rrd_rows(path) -> dict[str, int]:
    """Rows logged per entity path in an ``.rrd`` file (read back with the Rerun SDK; static
    rows included)."""
    _rr()
    from rerun.chunk import RrdReader  # noqa: PLC0415

    if not Path(path).is_file():
        raise VizError(f"{path}: no such .rrd file")
    rows: dict[str, int] = {}
    for c in RrdReader(path).stream().to_chunks():
        rows[c.entity_path] = rows.get(c.entity_path, 0) + c.num_rows
    return rows


def rrd_entities(path) -> set[str]:
    """The entity paths recorded in an ``.rrd`` file."""
    return set(rrd_rows(path))
