"""The MuJoCo twin of the lab cell, as a plain class that knows nothing of ROS.

:class:`TwinSimulation` steps physics, behaves like the xArm in servo mode (it tracks
the latest joint target with bounded joint speed) and like a torque-driven Allegro hand
(torques applied as given, clipped to the per-joint limit, and zeroed when they stop
coming, like the hand's own command watchdog), renders ZED-like depth, and reports
ground-truth object poses. :class:`RealTimePacer` says how many physics steps are due
at a given wall time so that ``sim_node`` runs it in real time.
"""
from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RobotConfig, TwinConfig
from robot_runtime.description.build import ARM_KP, ARM_KV
from robot_runtime.devices.base import JointSample
from robot_runtime.errors import TwinError
from robot_runtime.transforms import optical_pose_look_at
from robot_runtime.twin import scene

#: Arm targets further apart than this (s) carry no velocity to feed forward.
FF_WINDOW_S = 0.05


@dataclass(frozen=True)
class ObjectPose:
    """Object frame in the base frame: position [3] (m), orientation quaternion [4] (w, x, y, z)."""

    name: str
    position: np.ndarray
    quaternion: np.ndarray
    active: bool


def _import_mujoco():
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
    import mujoco  # noqa: PLC0415 - imported only where the twin is used

    return mujoco


#: Colour images (calibration) are rendered at this multiple of the depth resolution, as the
#: ZED's colour is sharper than its depth.
COLOR_SCALE = 4


def camera_intrinsics(cam) -> np.ndarray:
    """Pinhole K [3,3] (pixels) of the twin camera ``cam`` (a TwinCameraModel): square pixels from
    its vertical field of view, principal point at the image centre."""
    fy = 0.5 * cam.height / math.tan(math.radians(cam.fovy_deg) / 2)
    return np.array([[fy, 0.0, (cam.width - 1) / 2], [0.0, fy, (cam.height - 1) / 2], [0.0, 0.0, 1.0]])


class TwinSimulation:
    """Physics of the lab cell. Not thread-safe: one thread steps, renders and reads it.

    Args:
        twin: the twin's config section (rates, camera, task, seed, limits).
        robot: the robot section (hand mount, home pose).
    """

    def __init__(self, twin: TwinConfig | None = None, robot: RobotConfig | None = None):
        self.mj = _import_mujoco()
        self.cfg = twin or TwinConfig()
        self.robot_cfg = robot or RobotConfig()
        cam = self.cfg.camera
        palm = ""
        if self.cfg.calibration_marker:
            from robot_runtime.description.marker import MarkerSpec, marker_geoms_xml  # noqa: PLC0415 - needs OpenCV

            palm = marker_geoms_xml(MarkerSpec())
        self.xml = scene.scene_xml(
            physics_hz=self.cfg.physics_hz, camera_position=cam.position, camera_look_at=cam.look_at,
            camera_fovy_deg=cam.fovy_deg, image_width=cam.width, image_height=cam.height,
            mount_xyz=self.robot_cfg.hand_mount.xyz, mount_rpy=self.robot_cfg.hand_mount.rpy,
            hand_torque_limit=self.cfg.hand_torque_limit, palm_geoms=palm,
            offscreen=(cam.width * COLOR_SCALE, cam.height * COLOR_SCALE) if palm else None)
        self.model = self.mj.MjModel.from_xml_string(self.xml)
        self.data = self.mj.MjData(self.model)
        self.dt = float(self.model.opt.timestep)
        m = self.model
        self._arm_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in D.ARM_JOINTS])
        self._arm_dadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in D.ARM_JOINTS])
        self._hand_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in D.HAND_JOINTS])
        self._hand_dadr = np.array([m.jnt_dofadr[m.joint(n).id] for n in D.HAND_JOINTS])
        self._arm_act = np.array([m.actuator(n).id for n in D.ARM_JOINTS])
        self._hand_act = np.array([m.actuator(n).id for n in D.HAND_JOINTS])
        self._arm_limits = np.array(D.ARM_LIMITS)
        self._obj_qadr = {n: m.jnt_qposadr[m.joint(f"{n}_joint").id] for n in scene.OBJECTS}
        self._obj_dadr = {n: m.jnt_dofadr[m.joint(f"{n}_joint").id] for n in scene.OBJECTS}
        self._cam_id = m.camera("zed").id
        robot_root = m.body_rootid[m.jnt_bodyid[m.joint(D.ARM_JOINTS[0]).id]]
        self._robot_geoms = {g for g in range(m.ngeom) if m.body_rootid[m.geom_bodyid[g]] == robot_root}
        self._table_geom = m.geom("table").id
        self._renderer = None
        self._color_renderer = None
        self._scene = None
        self._vopt = None
        self._vcam = None
        self.task = self.cfg.task
        self.seed = self.cfg.seed
        self.active_objects: tuple[str, ...] = ()
        self.reset(self.cfg.task, self.cfg.seed)

    # ------------------------------------------------------------------ episode
    def reset(self, task: str, seed: int) -> dict[str, ObjectPose]:
        """Put the robot at home and place the task's objects from ``seed`` (reproducible).
        ``task`` may also be :data:`scene.INTERACTION_SCENE` (two objects drawn by the seed).

        Raises:
            TwinError: ``task`` is not one of :data:`scene.TASKS` nor the interaction scene.
        """
        if task not in scene.TASKS and task != scene.INTERACTION_SCENE:
            raise TwinError(f"unknown task {task!r} (one of {', '.join(scene.TASKS)}, "
                            f"or {scene.INTERACTION_SCENE!r})")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise TwinError(f"seed must be a non-negative integer, got {seed!r}")
        mj = self.mj
        mj.mj_resetData(self.model, self.data)
        home_arm = np.array(self.robot_cfg.arm_home, float)
        home_hand = np.array(self.robot_cfg.hand_home, float)
        self.data.qpos[self._arm_qadr] = home_arm
        self.data.qpos[self._hand_qadr] = home_hand
        self._arm_target = home_arm.copy()
        self._arm_ref = home_arm.copy()
        self._arm_target_vel = np.zeros(7)
        self._arm_target_time = -math.inf
        self._hand_tau = np.zeros(16)
        self._hand_tau_time = -math.inf
        placed = scene.draw_placement(task, seed)
        for i, name in enumerate(scene.OBJECTS):
            spec = scene.OBJECTS[name]
            qa = self._obj_qadr[name]
            if name in placed:
                x, y, yaw = placed[name]
                pos = [x, y, scene.TABLE_TOP_Z + spec.rest_z + 0.0005]
            else:
                pos = list(scene.parking_position(i))
                pos[2] += spec.rest_z + 0.0005
                yaw = 0.0
            self.data.qpos[qa:qa + 3] = pos
            self.data.qpos[qa + 3:qa + 7] = [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]
        self.data.ctrl[self._arm_act] = home_arm
        self.data.ctrl[self._hand_act] = 0.0
        mj.mj_forward(self.model, self.data)
        self.task, self.seed, self.active_objects = task, int(seed), tuple(placed)
        return self.object_poses()

    def mirror_objects(self) -> dict[str, ObjectPose]:
        """Mirror the placed objects across the base's x-z plane (y -> -y, yaw negated): the cell a
        mirrored demo is replayed in. Returns the new poses."""
        for name in self.active_objects:
            qa = self._obj_qadr[name]
            self.data.qpos[qa + 1] *= -1.0
            w, x, y, z = self.data.qpos[qa + 3:qa + 7]
            self.data.qpos[qa + 3:qa + 7] = [w, -x, y, -z]
        self.mj.mj_forward(self.model, self.data)
        return self.object_poses()

    def shift_objects(self, dx: float, dy: float) -> dict[str, ObjectPose]:
        """Move the placed objects by (``dx``, ``dy``) m across the table: the cell a demo moved
        by :func:`policies.augment.shifted_cell` is replayed in. Returns the new poses."""
        for name in self.active_objects:
            qa = self._obj_qadr[name]
            self.data.qpos[qa] += dx
            self.data.qpos[qa + 1] += dy
        self.mj.mj_forward(self.model, self.data)
        return self.object_poses()

    # ------------------------------------------------------------------ commands
    def set_arm_target(self, q) -> None:
        """Latest servo target for the 7 arm joints (rad), clipped to the joint limits.

        Raises:
            ValueError: wrong shape or a non-finite value (the target is not taken).
        """
        q = np.asarray(q, dtype=float)
        if q.shape != (7,):
            raise ValueError(f"arm target has shape {q.shape}, expected (7,)")
        if not np.all(np.isfinite(q)):
            raise ValueError(f"arm target has a non-finite value: {q.tolist()}")
        q = np.clip(q, self._arm_limits[:, 0], self._arm_limits[:, 1])
        dt = self.data.time - self._arm_target_time
        vmax = self.cfg.arm_max_joint_speed
        # The target stream's velocity, fed forward so the servo has no velocity lag (the
        # real arm reaches each servo target within a tick).
        self._arm_target_vel = np.clip((q - self._arm_target) / dt, -vmax, vmax) if 0 < dt <= FF_WINDOW_S \
            else np.zeros(7)
        self._arm_target, self._arm_target_time = q, self.data.time

    def set_hand_torque(self, tau) -> None:
        """Torques for the 16 hand joints (N m, driver order), clipped to +-hand_torque_limit.

        Raises:
            ValueError: wrong shape or a non-finite value (the command is not taken).
        """
        tau = np.asarray(tau, dtype=float)
        if tau.shape != (16,):
            raise ValueError(f"hand torque has shape {tau.shape}, expected (16,)")
        if not np.all(np.isfinite(tau)):
            raise ValueError(f"hand torque has a non-finite value: {tau.tolist()}")
        lim = self.cfg.hand_torque_limit
        self._hand_tau = np.clip(tau, -lim, lim)
        self._hand_tau_time = self.data.time

    # ------------------------------------------------------------------ physics
    def robot_table_force(self) -> float:
        """The normal force (N) the table bears from the robot (arm or hand) at this instant."""
        mj, m, d = self.mj, self.model, self.data
        total, f6 = 0.0, np.zeros(6)
        for i in range(d.ncon):
            c = d.contact[i]
            pair = {int(c.geom1), int(c.geom2)}
            if self._table_geom in pair and pair & self._robot_geoms:
                mj.mj_contactForce(m, d, i, f6)
                total += abs(float(f6[0]))
        return total

    @property
    def time(self) -> float:
        """Simulated time since the last reset (s)."""
        return float(self.data.time)

    def step(self, n: int = 1) -> None:
        """Advance physics by ``n`` steps of ``dt``."""
        vmax = self.cfg.arm_max_joint_speed * self.dt
        for _ in range(n):
            self._arm_ref = self._arm_ref + np.clip(self._arm_target - self._arm_ref, -vmax, vmax)
            stale = self.data.time - self._arm_target_time > FF_WINDOW_S
            ff = 0.0 if stale else self._arm_target_vel * (ARM_KV / ARM_KP)
            self.data.ctrl[self._arm_act] = self._arm_ref + ff
            fresh = self.data.time - self._hand_tau_time <= self.cfg.hand_torque_timeout_s
            self.data.ctrl[self._hand_act] = self._hand_tau if fresh else 0.0
            self.mj.mj_step(self.model, self.data)

    # ------------------------------------------------------------------ state
    def arm_state(self) -> JointSample:
        d = self.data
        return JointSample(self.time, d.qpos[self._arm_qadr].copy(), d.qvel[self._arm_dadr].copy(),
                           d.actuator_force[self._arm_act].copy())

    def hand_state(self) -> JointSample:
        d = self.data
        return JointSample(self.time, d.qpos[self._hand_qadr].copy(), d.qvel[self._hand_dadr].copy(),
                           d.actuator_force[self._hand_act].copy())

    def object_poses(self) -> dict[str, ObjectPose]:
        """Ground-truth poses of every object (inactive ones are parked off the table)."""
        out = {}
        for name, qa in self._obj_qadr.items():
            q = self.data.qpos[qa:qa + 7]
            out[name] = ObjectPose(name, q[:3].copy(), q[3:7].copy(), name in self.active_objects)
        return out

    def site_position(self, name: str) -> np.ndarray:
        """World position (m) of a robot site: ``flange`` or ``<finger>_tip``."""
        return self.data.site(name).xpos.copy()

    # ------------------------------------------------------------------ camera
    def intrinsics(self) -> np.ndarray:
        """Pinhole K [3,3] of the depth image (pixels; principal point at the image centre)."""
        return camera_intrinsics(self.cfg.camera)

    def camera_pose(self) -> np.ndarray:
        """4x4 pose of the camera's optical frame (x right, y down, z forward) in the base frame."""
        cam = self.cfg.camera
        return optical_pose_look_at(cam.position, cam.look_at)

    def new_scene(self):
        """An empty visual scene to snapshot this simulation into (see :meth:`snapshot`)."""
        return self.mj.MjvScene(self.model, maxgeom=2000)

    def snapshot(self, scene) -> None:
        """Copy the current state's geometry, seen from the depth camera, into ``scene``.

        Cheap (well under a millisecond); the costly drawing happens in
        :class:`DepthRenderer`, which may run on another thread.
        """
        if self._vopt is None:
            self._vopt = self.mj.MjvOption()
            self._vcam = self.mj.MjvCamera()
            self._vcam.type = self.mj.mjtCamera.mjCAMERA_FIXED
            self._vcam.fixedcamid = self._cam_id
        self.mj.mjv_updateScene(self.model, self.data, self._vopt, None, self._vcam,
                                self.mj.mjtCatBit.mjCAT_ALL, scene)

    def render_depth(self) -> np.ndarray:
        """Depth image [H, W] float32 (m) of the current state, rendered on this thread."""
        if self._renderer is None:
            self._renderer = DepthRenderer(self.model, self.cfg.camera)
        return self._renderer.render(self._current_scene())

    def _current_scene(self):
        """The render thread's own scene, snapshotted now."""
        if self._scene is None:
            self._scene = self.new_scene()
        self.snapshot(self._scene)
        return self._scene

    def render_color(self) -> np.ndarray:
        """Colour image [H * s, W * s, 3] uint8 of the current state from the depth camera's
        viewpoint, at :data:`COLOR_SCALE` times the depth resolution (intrinsics:
        :meth:`color_intrinsics`); rendered on this thread. Needs ``calibration_marker`` (which
        sizes the offscreen buffer for it)."""
        if self._color_renderer is None:
            self._color_renderer = self.new_color_renderer()
        return self._color_renderer.render(self._current_scene())

    def new_color_renderer(self) -> "ColorRenderer":
        """A renderer for :meth:`render_color`'s images, for the thread that creates it.

        Raises:
            TwinError: ``calibration_marker`` is off (the offscreen buffer is too small).
        """
        if not self.cfg.calibration_marker:
            raise TwinError("colour rendering needs twin.calibration_marker: true")
        return ColorRenderer(self.model, self.cfg.camera.width * COLOR_SCALE, self.cfg.camera.height * COLOR_SCALE)

    def color_intrinsics(self) -> np.ndarray:
        """K [3, 3] of :meth:`render_color`'s images (the depth camera's, scaled)."""
        K = self.intrinsics().copy()
        K[:2] *= COLOR_SCALE
        return K

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        if self._color_renderer is not None:
            self._color_renderer.close()
            self._color_renderer = None


class _OffscreenRenderer:
    """An EGL context with MuJoCo's offscreen buffer at ``width`` x ``height``. One thread."""

    def __init__(self, model, width: int, height: int):
        self.mj = _import_mujoco()
        self.width, self.height = width, height
        self.gl = self.mj.GLContext(width, height)
        self.gl.make_current()
        self.con = self.mj.MjrContext(model, self.mj.mjtFontScale.mjFONTSCALE_150)
        self.mj.mjr_setBuffer(self.mj.mjtFramebuffer.mjFB_OFFSCREEN, self.con)
        self.viewport = self.mj.MjrRect(0, 0, width, height)

    def _draw(self, scene, depth_only: bool) -> None:
        self.gl.make_current()
        # depth only: no lighting or materials (segment colours)
        scene.flags[self.mj.mjtRndFlag.mjRND_SEGMENT] = depth_only
        scene.flags[self.mj.mjtRndFlag.mjRND_IDCOLOR] = depth_only
        self.mj.mjr_render(self.viewport, scene, self.con)

    def close(self) -> None:
        if self.gl is not None:
            self.con.free()
            self.gl.free()
            self.gl = None


class DepthRenderer(_OffscreenRenderer):
    """Offscreen depth rendering of snapshotted scenes (EGL). Create and use on one thread.

    Depth is metres along the optical axis; pixels nearer than ``min_depth`` or farther
    than ``max_depth`` are NaN, as the ZED reports invalid depth.
    """

    #: Facets of the context's round primitives (MuJoCo's defaults: 28 slices, 16 stacks) and its
    #: multisamples (default 4; the depth read back is the same without). Together they draw a
    #: 320 x 240 depth frame in 6 ms instead of 13 on a software renderer; the facets move 6 of its
    #: 51,000 valid pixels by more than a centimetre (edges of the cylinders).
    SLICES, STACKS, SAMPLES = 16, 8, 0

    def __init__(self, model, camera):
        quality = model.vis.quality
        kept = quality.numslices, quality.numstacks, quality.offsamples
        quality.numslices, quality.numstacks, quality.offsamples = self.SLICES, self.STACKS, self.SAMPLES
        try:   # the context tessellates its primitives when it is made; the model keeps its own
            super().__init__(model, camera.width, camera.height)
        finally:
            quality.numslices, quality.numstacks, quality.offsamples = kept
        self.min_depth, self.max_depth = camera.min_depth, camera.max_depth
        # Read depth as reversed Z (far plane = 0): precise at range with a float buffer.
        self.con.readDepthMap = self.mj.mjtDepthMap.mjDEPTH_ZEROFAR
        extent = model.stat.extent
        self.near = model.vis.map.znear * extent
        self.far = model.vis.map.zfar * extent
        self._buf = np.empty((self.height, self.width), dtype=np.float32)

    def render(self, scene) -> np.ndarray:
        """Draw ``scene`` and return its depth image [H, W] float32 (m), row 0 at the top."""
        self._draw(scene, depth_only=True)
        self.mj.mjr_readPixels(None, self._buf, self.viewport, self.con)
        # Reversed-Z depth buffer: 1 at the near plane, 0 at the far plane, hyperbolic between.
        z = np.flipud(self._buf).astype(np.float64)
        n, f = self.near, self.far
        depth = (n * f / (n + z * (f - n))).astype(np.float32)
        depth[(depth < self.min_depth) | (depth > self.max_depth)] = np.nan
        return depth


class ColorRenderer(_OffscreenRenderer):
    """Offscreen colour rendering of snapshotted scenes (EGL), lit and shaded. One thread."""

    def __init__(self, model, width: int, height: int):
        super().__init__(model, width, height)
        self._buf = np.empty((height, width, 3), dtype=np.uint8)

    def render(self, scene) -> np.ndarray:
        """Draw ``scene``; the RGB image [H, W, 3] uint8, row 0 at the top."""
        self._draw(scene, depth_only=False)
        self.mj.mjr_readPixels(self._buf, None, self.viewport, self.con)
        return np.flipud(self._buf).copy()


class RealTimePacer:
    """Keeps simulated time in step with wall time.

    Call :meth:`steps_due` with the wall time; it returns how many physics steps to take
    now. When the simulation falls more than ``max_lag_s`` behind, the excess is dropped
    (counted in :attr:`dropped_s`) instead of being chased, and the real-time factor
    shows it.

    Args:
        dt: physics step (s).
        max_lag_s: largest backlog to catch up (s).
        window_s: span over which :meth:`real_time_factor` is measured (s).
    """

    def __init__(self, dt: float, max_lag_s: float = 0.05, window_s: float = 1.0):
        self.dt = dt
        self.max_lag_s = max_lag_s
        self.window_s = window_s
        self._t0: float | None = None
        self.steps_done = 0
        self.dropped_s = 0.0
        self._hist: deque[tuple[float, float]] = deque()

    def start(self, wall_now: float) -> None:
        self._t0 = wall_now
        self.steps_done = 0
        self.dropped_s = 0.0
        self._hist.clear()
        self._hist.append((wall_now, 0.0))

    def steps_due(self, wall_now: float) -> int:
        if self._t0 is None:
            self.start(wall_now)
        elapsed = wall_now - self._t0 - self.dropped_s
        due = int(math.floor(elapsed / self.dt + 1e-9)) - self.steps_done
        max_steps = max(1, int(round(self.max_lag_s / self.dt)))
        if due > max_steps:
            self.dropped_s += (due - max_steps) * self.dt
            due = max_steps
        return max(due, 0)

    def record(self, steps: int, wall_now: float) -> None:
        """Note that ``steps`` were taken, finishing at ``wall_now``."""
        self.steps_done += steps
        self._hist.append((wall_now, self.steps_done * self.dt))
        while len(self._hist) > 2 and wall_now - self._hist[1][0] >= self.window_s:
            self._hist.popleft()

    def real_time_factor(self) -> float:
        """Simulated seconds per wall second over the last window (1.0 = real time)."""
        if len(self._hist) < 2:
            return 0.0
        (w0, s0), (w1, s1) = self._hist[0], self._hist[-1]
        return (s1 - s0) / (w1 - w0) if w1 > w0 else 0.0
