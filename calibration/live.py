"""Hand-eye calibration over a running graph's streams (no ROS here; ``calibration_node`` feeds it).

The arm's measured joints, the hand's, the colour frames and the depth frames arrive as they
are acquired, each with its acquisition stamp. :class:`SightingCollector` turns them into
marker sightings: a colour frame is used only once joint states newer than it have arrived and
the arm was still (every joint within ``still_tol``) for ``still_s`` up to it, so the joints
paired with the corners are the joints the image was taken at. :class:`PlannedMoves` drives
the arm through the planned poses (smooth moves, then a hold until the marker is seen there
or a time-out), and :class:`LiveCalibration` puts them together for both modes:

- ``planned``: the node publishes the arm targets (the teleop source) and ends back at home;
- ``operator``: the operator moves the arm; every still pose where the marker is seen and that
  differs from the earlier ones by ``min_separation_m`` or ``min_separation_deg`` is taken,
  until ``poses`` are taken (or :meth:`LiveCalibration.stop` is called with enough of them).
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from calibration.handeye import CalibrationError, MarkerSighting, detect_marker
from robot_runtime.description.marker import MarkerSpec
from robot_runtime.transforms import rot_log


class JointHistory:
    """Stamped joint vectors [n] (rad) over the last ``keep_s`` seconds, oldest first."""

    def __init__(self, keep_s: float = 10.0):
        self.keep_s = keep_s
        self._t: deque[float] = deque()
        self._q: deque[np.ndarray] = deque()

    def add(self, t: float, q) -> None:
        if self._t and t <= self._t[-1]:
            return   # a repeated or out-of-order sample
        self._t.append(float(t))
        self._q.append(np.asarray(q, float).copy())
        while self._t and self._t[0] < t - self.keep_s:
            self._t.popleft()
            self._q.popleft()

    @property
    def newest_t(self) -> float:
        return self._t[-1] if self._t else -math.inf

    @property
    def newest(self) -> np.ndarray | None:
        return self._q[-1] if self._q else None

    def at(self, t: float, max_gap_s: float = 0.05) -> np.ndarray | None:
        """The sample nearest ``t`` when one lies within ``max_gap_s`` of it, else None."""
        if not self._t:
            return None
        ts = np.fromiter(self._t, float, len(self._t))
        i = int(np.argmin(np.abs(ts - t)))
        return self._q[i] if abs(ts[i] - t) <= max_gap_s else None

    def still(self, t0: float, t1: float, tol: float, max_gap_s: float = 0.05) -> bool:
        """True when samples cover [t0, t1] (none missing for longer than ``max_gap_s``) and every
        joint stayed within ``tol`` (rad) of its range over them."""
        if not self._t or self._t[0] > t0 + max_gap_s or self._t[-1] < t1:
            return False
        ts = np.fromiter(self._t, float, len(self._t))
        sel = (ts >= t0 - max_gap_s) & (ts <= t1 + max_gap_s)
        if sel.sum() < 2 or np.diff(ts[sel]).max() > max_gap_s:
            return False
        q = np.stack([self._q[i] for i in np.flatnonzero(sel)])
        return bool((q.max(axis=0) - q.min(axis=0)).max() <= tol)


@dataclass
class StampedImage:
    """A camera frame: the image (colour [H, W, 3] uint8 or depth [H, W] float32 m), its
    intrinsics K [3, 3] and acquisition time ``t`` (s)."""

    image: np.ndarray
    K: np.ndarray
    t: float


class SightingCollector:
    """Colour frames and joint states in, marker sightings out (see the module docstring).

    Args:
        spec: the marker.
        link_pose: the marker link's pose in the base frame [4, 4] for joints [23] (rad, driver order).
        still_s, still_tol: how long (s) and how still (rad, every arm joint) the arm must be before a frame.
        min_separation_m, min_separation_deg: a sighting must differ this much from every earlier one
            (its link pose), in position or in rotation; 0 and 0 accept repeats.
        detect: the marker detector (image, spec) -> corners [4, 2] or None.
    """

    def __init__(self, spec: MarkerSpec, link_pose: Callable[[np.ndarray], np.ndarray], still_s: float = 0.6,
                 still_tol: float = 0.002, min_separation_m: float = 0.0, min_separation_deg: float = 0.0,
                 detect=detect_marker):
        self.spec, self.link_pose, self.detect = spec, link_pose, detect
        self.still_s, self.still_tol = still_s, still_tol
        self.min_sep_m, self.min_sep_deg = min_separation_m, min_separation_deg
        self.arm = JointHistory()
        self.hand_q: np.ndarray | None = None
        self.sightings: list[MarkerSighting] = []
        self.stamps: list[float] = []
        self.K: np.ndarray | None = None
        self.min_frame_t = -math.inf        # frames older than this are not used
        self.check_frame: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None   # depth, q [23], K
        self.counts = {"used": 0, "moving": 0, "not_seen": 0, "repeat": 0}
        self._color: StampedImage | None = None
        self._depth: StampedImage | None = None
        self._still_depth: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    # -------------------------------------------------------------- inputs
    def add_arm(self, t: float, q) -> None:
        """Measured arm joints [7] (rad) acquired at ``t`` (s)."""
        self.arm.add(t, q)

    def add_hand(self, q) -> None:
        """Measured hand joints [16] (rad), latest."""
        self.hand_q = np.asarray(q, float).copy()

    def add_color(self, frame: StampedImage) -> None:
        """A colour frame; only the newest waiting one is kept."""
        if self.K is not None and not np.allclose(frame.K, self.K):
            raise CalibrationError(f"the colour camera's intrinsics changed during calibration: {self.K.tolist()} "
                                   f"-> {np.asarray(frame.K).tolist()}")
        self.K = np.asarray(frame.K, float)
        self._color = frame

    def add_depth(self, frame: StampedImage) -> None:
        """A depth frame; the newest still one at a sighted pose is kept for the depth check."""
        self._depth = frame

    # -------------------------------------------------------------- processing
    def joints_at(self, t: float) -> np.ndarray | None:
        """Joints [23] (rad, driver order) at ``t``, or None without arm or hand states."""
        q_arm = self.arm.at(t)
        if q_arm is None or self.hand_q is None:
            return None
        return np.concatenate([q_arm, self.hand_q])

    def _ready(self, frame: StampedImage | None) -> bool:
        return frame is not None and self.arm.newest_t >= frame.t

    def _still_at(self, t: float) -> bool:
        return self.arm.still(t - self.still_s, t, self.still_tol)

    def poll(self) -> MarkerSighting | None:
        """Use the waiting frames whose joints have arrived; the new sighting, if one was taken."""
        if self._ready(self._depth):
            d, self._depth = self._depth, None
            q = self.joints_at(d.t)
            if q is not None and self._still_at(d.t):
                self._still_depth = (d.image, q, d.K)
                self._match_check_frame()
        if not self._ready(self._color):
            return None
        f, self._color = self._color, None
        if f.t < self.min_frame_t:
            return None
        q = self.joints_at(f.t)
        if q is None or not self._still_at(f.t):
            self.counts["moving"] += 1
            return None
        T_link = self.link_pose(q)
        if not self._distinct(T_link):
            self.counts["repeat"] += 1
            return None
        corners = self.detect(f.image, self.spec)
        if corners is None:
            self.counts["not_seen"] += 1
            return None
        s = MarkerSighting(T_link, corners, q)
        self.sightings.append(s)
        self.stamps.append(f.t)
        self.counts["used"] += 1
        self._match_check_frame()
        return s

    def _match_check_frame(self) -> None:
        """Keep the newest still depth frame taken at the last sighted pose, for the depth check."""
        if self._still_depth is None or not self.sightings:
            return
        if np.abs(self._still_depth[1][:7] - self.sightings[-1].q[:7]).max() <= self.still_tol:
            self.check_frame = self._still_depth

    def _distinct(self, T_link: np.ndarray) -> bool:
        for s in self.sightings:
            dp = np.linalg.norm(T_link[:3, 3] - s.T_base_link[:3, 3])
            dr = math.degrees(np.linalg.norm(rot_log(T_link[:3, :3].T @ s.T_base_link[:3, :3])))
            if dp < self.min_sep_m and dr < self.min_sep_deg:
                return False
        return True


def min_jerk(s: float) -> float:
    """The minimum-jerk profile 10s^3 - 15s^4 + 6s^5 for s in [0, 1] (its peak slope is 1.875)."""
    s = min(max(s, 0.0), 1.0)
    return s * s * s * (10.0 + s * (-15.0 + 6.0 * s))


def order_nearest(targets: list[np.ndarray], start) -> list[np.ndarray]:
    """``targets`` [7] reordered greedily: each next one the nearest (largest joint change) to
    the one before, starting from ``start``; the arm's moves get shorter."""
    left = [np.asarray(t, float) for t in targets]
    out, here = [], np.asarray(start, float)
    while left:
        i = int(np.argmin([np.abs(t - here).max() for t in left]))
        here = left.pop(i)
        out.append(here)
    return out


class PlannedMoves:
    """Arm targets [7] (rad) over time through planned poses: a minimum-jerk move to each (its
    fastest joint peaking at ``joint_speed`` rad/s), then a hold until :meth:`sighted` or until
    ``capture_timeout_s`` after the arm should have settled (the pose is then skipped), and a
    last move to ``home``."""

    def __init__(self, targets, home, joint_speed: float = 0.4, still_s: float = 0.6,
                 capture_timeout_s: float = 4.0, min_move_s: float = 0.5):
        self.targets = [np.asarray(t, float) for t in targets] + [np.asarray(home, float)]
        self.speed, self.still_s, self.timeout = joint_speed, still_s, capture_timeout_s
        self.min_move_s = min_move_s
        self.index = -1                  # the pose moved to or held (len(targets) - 1: home)
        self.skipped: list[int] = []
        self._from: np.ndarray | None = None
        self._t0 = 0.0
        self._duration = 0.0
        self._now = -math.inf

    @property
    def n_poses(self) -> int:
        return len(self.targets) - 1

    @property
    def homing(self) -> bool:
        return self.index == self.n_poses

    @property
    def done(self) -> bool:
        """Home reached after the last pose."""
        return self.homing and self._now >= self.arrived_at()

    def arrived_at(self) -> float:
        """When the current move ends (s); frames from before it belong to another pose."""
        return self._t0 + self._duration

    def _start_move(self, now: float, q_from) -> None:
        self.index += 1
        self._from = np.asarray(q_from, float).copy()
        span = float(np.abs(self.targets[self.index] - self._from).max())
        self._t0 = now
        self._duration = max(self.min_move_s, 1.875 * span / self.speed)

    def command(self, now: float, q_measured) -> np.ndarray:
        """The arm target [7] for ``now`` (s), given the measured arm joints [7]."""
        self._now = now
        if self._from is None:
            self._start_move(now, q_measured)
        elif not self.homing and now > self.arrived_at() + self.still_s + self.timeout:
            self.skipped.append(self.index)
            self._start_move(now, self.targets[self.index])
        goal = self.targets[self.index]
        s = min_jerk((now - self._t0) / self._duration)
        return self._from + s * (goal - self._from)

    def restart(self, now: float, q_measured) -> None:
        """Move to the current pose again from the measured joints [7] (after the controllers
        were stopped and armed again: the planned path's clock ran on meanwhile)."""
        if self._from is None:
            return
        self.index -= 1
        self._start_move(now, q_measured)

    def sighted(self, now: float) -> None:
        """The marker was seen at the current pose: move on."""
        if not self.homing:
            self._start_move(now, self.targets[self.index])


class LiveCalibration:
    """One calibration over live streams, in the mode ``cfg.calibration.mode`` (module docstring).

    Feed it with :meth:`on_arm`, :meth:`on_hand`, :meth:`on_color` and :meth:`on_depth` as
    messages arrive, call :meth:`tick` at the command rate (it returns the joint targets [23]
    to publish in planned mode), and :meth:`finish` once :attr:`finished`.

    Args:
        cfg: the runtime config (its ``calibration`` section, robot home and hand mount).
        T_camera_guess: a rough camera pose in the base frame [4, 4]; planned mode needs it to
            keep the marker in view (a few cm and degrees off do not matter).
    """

    def __init__(self, cfg, T_camera_guess: np.ndarray | None = None):
        from calibration.session import marker_spec  # noqa: PLC0415
        from robot_runtime import description as D  # noqa: PLC0415
        from robot_runtime.kinematics import UrdfModel  # noqa: PLC0415

        self.cfg, self.cal = cfg, cfg.calibration
        if self.cal.mode == "planned" and T_camera_guess is None:
            raise CalibrationError("planned calibration needs a rough camera pose to keep the marker in view: give "
                                   "calibration.camera_guess_position and camera_guess_look_at (or an earlier "
                                   "policy.calibration_file), or use calibration.mode: operator")
        self.T_camera_guess = T_camera_guess
        self.spec = marker_spec(cfg)
        self.model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
        self.order = np.array([D.ALL_JOINTS.index(n) for n in self.model.joint_names])
        operator = self.cal.mode == "operator"
        self.collector = SightingCollector(
            self.spec, lambda q: self.model.link_pose(np.asarray(q, float)[self.order], self.spec.link),
            self.cal.still_s, self.cal.still_tol, self.cal.min_separation_m if operator else 0.0,
            self.cal.min_separation_deg if operator else 0.0)
        self.moves: PlannedMoves | None = None
        self._paused = False
        self.color_size: tuple[int, int] | None = None     # (width, height) px
        self.depth_K: np.ndarray | None = None
        self.hand_home = np.asarray(cfg.robot.hand_home, float)

    # ------------------------------------------------------------------ inputs
    def on_arm(self, t: float, q) -> None:
        self.collector.add_arm(t, q)

    def on_hand(self, q) -> None:
        self.collector.add_hand(q)

    def on_color(self, frame: StampedImage) -> None:
        self.color_size = (frame.image.shape[1], frame.image.shape[0])
        self.collector.add_color(frame)

    def on_depth(self, frame: StampedImage) -> None:
        self.depth_K = np.asarray(frame.K, float)
        self.collector.add_depth(frame)

    # ------------------------------------------------------------------ progress
    @property
    def sightings(self) -> list[MarkerSighting]:
        return self.collector.sightings

    @property
    def waiting_for(self) -> str:
        """What has not arrived yet ('' when every stream has)."""
        c = self.collector
        missing = [name for name, ok in (("arm joint states", c.arm.newest is not None),
                                         ("hand joint states", c.hand_q is not None),
                                         ("colour frames", c.K is not None),
                                         ("depth frames", self.depth_K is not None)) if not ok]
        return ", ".join(missing)

    @property
    def finished(self) -> bool:
        """Planned: back home after the last pose; operator: ``poses`` sightings taken."""
        if self.moves is not None:
            return self.moves.done
        return self.cal.mode == "operator" and len(self.sightings) >= self.cal.poses

    def plan(self) -> list[np.ndarray]:
        """The planned poses' arm targets [7] (rad); needs the colour intrinsics and image size."""
        from calibration.session import plan_for_robot  # noqa: PLC0415

        return plan_for_robot(self.cfg, self.model, self.spec, self.T_camera_guess, self.collector.K,
                              self.color_size, self.cal.poses, self.cal.seed)

    def tick(self, now: float, drive: bool = True) -> np.ndarray | None:
        """Use what arrived; in planned mode, once every stream is in and while ``drive`` (the
        controllers are armed on this source), the joint targets [23] (rad, driver order) for
        ``now``; else None (publish nothing)."""
        s = self.collector.poll()
        if self.cal.mode == "operator" or self.waiting_for:
            return None
        if not drive:
            self._paused = self.moves is not None
            return None
        if self._paused:   # the controllers were stopped and armed again: go on from where the arm is
            self._paused = False
            self.moves.restart(now, self.collector.arm.newest)
            return None
        if self.moves is None:   # planning takes a moment: the first move starts next tick
            targets = order_nearest(self.plan(), self.collector.arm.newest)
            self.moves = PlannedMoves(targets, self.cfg.robot.arm_home, self.cal.joint_speed, self.cal.still_s,
                                      self.cal.capture_timeout_s)
            return None
        if s is not None:
            self.moves.sighted(now)
        q_arm = self.moves.command(now, self.collector.arm.newest)
        # only frames taken after the arm reached this pose (and, home, none) make sightings
        self.collector.min_frame_t = math.inf if self.moves.homing else self.moves.arrived_at()
        return np.concatenate([q_arm, self.hand_home])

    def finish(self, seconds: float = 0.0):
        """Solve and check: a :class:`calibration.session.CalibrationRun`.

        Raises:
            CalibrationError: too few sightings, or no still depth frame at a sighted pose.
        """
        from calibration.session import CalibrationRun, solve_and_check  # noqa: PLC0415

        planned = self.moves.n_poses if self.moves is not None else len(self.sightings)
        if len(self.sightings) < 6:
            raise CalibrationError(
                f"the marker was seen at {len(self.sightings)} of {planned} poses (frames {self.collector.counts}); "
                f"hand-eye calibration needs at least 6. Is the marker (calibration.marker) on the hand, lit, and in "
                f"the colour image?")
        if self.collector.check_frame is None:
            raise CalibrationError(f"no depth frame was taken still at a sighted pose ({len(self.sightings)} "
                                   f"sightings); the depth check needs one")
        depth, q, K = self.collector.check_frame
        result, check = solve_and_check(self.sightings, self.collector.K, self.spec, depth, q, K)
        return CalibrationRun(result, check, list(self.sightings), planned, seconds, depth, q)
