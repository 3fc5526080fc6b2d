"""Teleop inputs: one interface, one backend per ``teleop.input.type``.

=================  ==========================================================================
``scripted``       the twin's expert (:mod:`robot_runtime.teleop.scripted`): absolute joints
``keypoints``      a keypoint trajectory file (e.g. reconstructed offline from a human video)
``hand_tracking``  MediaPipe Hands on a webcam or a video file (mediapipe and cv2 imported here only)
``spacemouse``     pyspacemouse (imported only when chosen): wrist velocity, buttons for the hand
``keyboard``       the terminal's keys, a fallback with no extra hardware
=================  ==========================================================================

An input returns its newest unused :class:`~robot_runtime.teleop.session.TeleopSample`
(stamped when it was acquired) or None. :class:`WorldView` tells it what the robot
and, on the twin, the objects are doing.
"""
from __future__ import annotations

import copy
import importlib
import math
import select
import sys
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robot_runtime.errors import DeviceNotAvailableError, TeleopError
from robot_runtime.teleop.hand_pose import NUM_KEYPOINTS, check_keypoints
from robot_runtime.teleop.scripted import ScriptedExpert, task_success
from robot_runtime.teleop.session import TeleopSample
from robot_runtime.transforms import make_T, rot_exp


@dataclass
class WorldView:
    """What an input may look at: measured joints [23] (or None), and on the twin the task,
    its active objects and every object's (position [3], quaternion wxyz [4])."""

    q: np.ndarray | None = None
    task: str = ""
    active: tuple[str, ...] = ()
    objects: dict = field(default_factory=dict)


class TeleopInput(ABC):
    """A source of teleop samples. ``open`` may raise DeviceNotAvailableError / TeleopError."""

    def open(self) -> None:
        """Connect to the device or load the file."""

    @abstractmethod
    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        """The newest sample not returned before, or None."""

    def prepare(self, world: WorldView) -> None:
        """Slow work before an engage (a plan): the node calls it outside its loop's lock, so the
        loop keeps publishing the held targets meanwhile. Nothing :meth:`read` returns changes."""

    def on_engage(self, now: float, world: WorldView) -> None:
        """Called when the operator engages (after :meth:`prepare`); keep it quick."""

    def status(self) -> dict:
        return {}

    def close(self) -> None:
        """Release the device."""


# ------------------------------------------------------------------------------------ scripted

class ScriptedInput(TeleopInput):
    """The twin's expert. Each engage plans one demonstration from the current state
    (phase ``done`` and ``success`` when the task's motion is over), then opens the hand
    and goes home on its own (phase ``finished``)."""

    #: The robot counts as arrived at the plan's end when every joint is this close (rad).
    ARRIVED_RAD = 0.05
    #: ... or this long after the plan's end (s).
    ARRIVE_TIMEOUT_S = 3.0

    def __init__(self, cfg, model, robot_cfg, table_z: float = 0.0, max_arm_speed: float = 0.8,
                 max_hand_speed: float = 2.4):
        self.expert = ScriptedExpert(model, robot_cfg.hand_mount.xyz, robot_cfg.hand_mount.rpy, robot_cfg.hand_home,
                                     robot_cfg.arm_home, table_z, max_arm_speed, max_hand_speed).prepare()
        self.arm_home = np.asarray(robot_cfg.arm_home, dtype=float)
        self.seed = cfg.seed
        self.episodes = 0
        self.phase = "idle"
        self.success: bool | None = None
        self._t0 = 0.0
        self._start_objects: dict = {}
        self._task = ""
        self._active: tuple = ()
        self._retreating = False
        self._rng = np.random.default_rng(self.seed)
        self._pending: tuple | None = None   # (expert, rng, task, active, start objects) from prepare
        # IK takes a tenth of a second or more: never on the loop's thread, which would stall the targets
        self._planner = ThreadPoolExecutor(1, thread_name_prefix="expert-plan")
        self._retreat: Future | None = None  # the way home being planned

    def prepare(self, world: WorldView) -> None:
        """Plan the next demonstration from ``world`` on a copy of the expert (taking a tenth of a
        second or more: the loop goes on reading the current plan meanwhile)."""
        if world.q is None or not world.objects or not world.task:
            raise TeleopError("scripted expert: no joint states or object poses yet (is sim_node running?)")
        rng = np.random.default_rng(self.seed + self.episodes)
        expert = copy.copy(self.expert)
        expert.plan(world.task, world.objects, world.active, world.q, rng)
        self._pending = (expert, rng, world.task, tuple(world.active), dict(world.objects))

    def on_engage(self, now: float, world: WorldView) -> None:
        """Start the prepared plan at ``now`` (planning first if :meth:`prepare` was not called)."""
        if self._pending is None:
            self.prepare(world)
        self.expert, self._rng, self._task, self._active, self._start_objects = self._pending
        self._pending, self._retreat = None, None
        self.episodes += 1
        self._t0, self.phase, self.success, self._retreating = now, "start", None, False

    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        if self.phase in ("idle", "finished"):
            return None
        q, phase = self.expert.sample(now - self._t0)
        if phase == "done" and not self._arrived(q, now, world):
            return TeleopSample(now, joints=q)
        if phase == "done" and not self._retreating:
            if self._retreat is None:   # judge now; plan the way home on the planner's thread, holding meanwhile
                self.success = bool(task_success(self._task, self._active, self._start_objects, world.objects))
                self.phase = "done"
                self._retreat = self._planner.submit(self._plan_retreat, q)
            if not self._retreat.done():
                return TeleopSample(now, joints=q)
            self.expert, self._retreat = self._retreat.result(), None
            self._t0, self._retreating = now, True
            return TeleopSample(now, joints=q)
        if phase == "done":
            self.phase = "finished"
        elif self._retreating:
            self.phase = "retreat"
        else:
            self.phase = phase
        return TeleopSample(now, joints=q)

    def _plan_retreat(self, q) -> ScriptedExpert:
        expert = copy.copy(self.expert)
        expert.retreat(q, self.arm_home, self._rng)
        return expert

    def _arrived(self, q, now: float, world: WorldView) -> bool:
        """Whether the robot has reached the plan's last posture ``q`` (or waited long enough)."""
        late = now - self._t0 - self.expert.duration > self.ARRIVE_TIMEOUT_S
        return late or (world.q is not None and float(np.abs(world.q - q).max()) < self.ARRIVED_RAD)

    def status(self) -> dict:
        return {"phase": self.phase, "success": self.success, "episodes": self.episodes}

    def close(self) -> None:
        self._planner.shutdown(wait=True, cancel_futures=True)


# ------------------------------------------------------------------------------------ keypoints

def load_keypoints_file(path) -> tuple[np.ndarray, np.ndarray]:
    """(t [T] s from 0, keypoints [T, 21, 3] m) from an ``.npz`` with ``keypoints`` and ``t`` (or ``fps``).

    Raises:
        TeleopError: a missing file or key, a wrong shape, non-finite values, or times not increasing.
    """
    path = Path(path)
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise TeleopError(f"{path}: not a readable .npz keypoints file: {exc}") from exc
    if "keypoints" not in data:
        raise TeleopError(f"{path}: no 'keypoints' array (found {sorted(data)})")
    kp = np.asarray(data["keypoints"], dtype=float)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3) or len(kp) == 0:
        raise TeleopError(f"{path}: 'keypoints' has shape {kp.shape}, expected (T, {NUM_KEYPOINTS}, 3)")
    if "t" in data:
        t = np.asarray(data["t"], dtype=float)
    elif "fps" in data:
        t = np.arange(len(kp)) / float(data["fps"])
    else:
        raise TeleopError(f"{path}: needs 't' (s) or 'fps'")
    if t.shape != (len(kp),) or np.any(np.diff(t) <= 0) or not np.all(np.isfinite(t)):
        raise TeleopError(f"{path}: 't' must hold {len(kp)} increasing times")
    bad = np.flatnonzero(~np.isfinite(kp).all(axis=(1, 2)))
    if len(bad):
        raise TeleopError(f"{path}: frames {bad[:5].tolist()} hold non-finite keypoints")
    return t - t[0], kp


class KeypointsInput(TeleopInput):
    """Plays a keypoint trajectory in real time from the moment it is opened (or engaged)."""

    def __init__(self, cfg):
        self.path = Path(cfg.file)
        self.left = cfg.left_hand
        self.loop = cfg.loop
        self.t = np.zeros(0)
        self.kp = np.zeros((0, NUM_KEYPOINTS, 3))
        self._t0: float | None = None
        self._last: tuple[float, int] | None = None   # (lap start, frame) of the last sample given
        self.finished = False

    def open(self) -> None:
        self.t, self.kp = load_keypoints_file(self.path)

    def on_engage(self, now: float, world: WorldView) -> None:
        if self._t0 is None or self.finished:
            self._t0, self._last, self.finished = now, None, False

    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        if self._t0 is None:
            self._t0 = now
        el, start = now - self._t0, self._t0
        if self.loop and len(self.t) > 1:
            cycle = self.t[-1] + (self.t[-1] - self.t[-2])
            laps = math.floor(el / cycle)
            el, start = el - laps * cycle, start + laps * cycle   # each lap's frames keep their own times
        i = int(np.searchsorted(self.t, el, side="right")) - 1
        if i >= len(self.t) - 1 and not self.loop:
            self.finished = True
        if i < 0 or (start, i) == self._last:
            return None
        self._last = (start, i)
        return TeleopSample(start + self.t[i], keypoints=self.kp[i], left=self.left)

    def status(self) -> dict:
        return {"file": self.path.name, "frame": self._last[1] if self._last else -1, "frames": len(self.t),
                "finished": self.finished}


# ------------------------------------------------------------------------------------ hand tracking

def keypoints_in_camera(image_lm: np.ndarray, world_lm: np.ndarray, width: int, height: int,
                        fov_deg: float) -> np.ndarray:
    """MediaPipe landmarks -> keypoints [21, 3] (m) in the camera's optical frame.

    ``world_lm`` are metric but centred on the hand; the wrist's place comes from the
    image: its pixel, and its depth from how long the palm (wrist to middle knuckle) looks
    in pixels against its metric length (pinhole, square pixels, ``fov_deg`` horizontal).
    """
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    px = image_lm[:, :2] * [width, height]
    palm_px = float(np.linalg.norm(px[9] - px[0]))
    palm_m = float(np.linalg.norm(world_lm[9] - world_lm[0]))
    if palm_px < 1.0 or palm_m < 1e-3:
        raise TeleopError("hand too small in the image to place it")
    z = f * palm_m / palm_px
    wrist = np.array([(px[0, 0] - width / 2) * z / f, (px[0, 1] - height / 2) * z / f, z])
    return world_lm - world_lm[0] + wrist


class HandTrackingInput(TeleopInput):
    """MediaPipe Hands (the models inside mediapipe==0.10.21) on a webcam or a video file.

    Frames are grabbed on a thread of their own into a latest-frame slot (a video file is
    paced at its own frame rate) and stamped when grabbed; :meth:`read` runs the hand
    model on the newest one.
    """

    def __init__(self, cfg):
        self.cfg = cfg
        self._cap = None
        self._hands = None
        self._slot: tuple[float, np.ndarray] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames = 0
        self.detections = 0
        self.ended = False
        self.last_error = ""

    def open(self) -> None:
        try:
            import cv2  # noqa: PLC0415 - only this backend needs OpenCV and MediaPipe
            import mediapipe as mp  # noqa: PLC0415
        except ImportError as exc:
            raise DeviceNotAvailableError(f"hand tracking needs mediapipe==0.10.21 and OpenCV: {exc}") from exc
        src = self.cfg.source
        is_file = not src.isdigit()
        if is_file and not Path(src).is_file():
            raise TeleopError(f"teleop.input.source: video file not found: {src}")
        self._cap = cv2.VideoCapture(src if is_file else int(src))
        if not self._cap.isOpened():
            raise DeviceNotAvailableError(f"teleop.input.source {src!r}: cannot open the camera or video")
        self._fps = self._cap.get(cv2.CAP_PROP_FPS) if is_file else 0.0
        self._cv2 = cv2
        self._hands = mp.solutions.hands.Hands(static_image_mode=False, max_num_hands=1,
                                               model_complexity=self.cfg.model_complexity,
                                               min_detection_confidence=self.cfg.min_detection_confidence)
        self._thread = threading.Thread(target=self._grab, name="hand-tracking-grab", daemon=True)
        self._thread.start()

    def _grab(self) -> None:
        period = 1.0 / self._fps if self._fps and self._fps > 0 else 0.0
        next_t = time.monotonic()
        while not self._stop.is_set():
            ok, frame = self._cap.read()
            t = time.time()
            if not ok:
                self.ended = True
                return
            with self._lock:
                self._slot = (t, frame)
            if period:
                next_t += period
                self._stop.wait(max(0.0, next_t - time.monotonic()))

    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        with self._lock:
            slot, self._slot = self._slot, None
        if slot is None:
            return None
        t, frame = slot
        self.frames += 1
        rgb = self._cv2.cvtColor(frame, self._cv2.COLOR_BGR2RGB)
        res = self._hands.process(rgb)
        if not res.multi_hand_landmarks or not res.multi_hand_world_landmarks:
            return None
        img = np.array([[p.x, p.y, p.z] for p in res.multi_hand_landmarks[0].landmark])
        wld = np.array([[p.x, p.y, p.z] for p in res.multi_hand_world_landmarks[0].landmark])
        try:
            kp = check_keypoints(keypoints_in_camera(img, wld, frame.shape[1], frame.shape[0], self.cfg.fov_deg))
        except TeleopError as exc:
            self.last_error = str(exc)
            return None
        self.detections += 1
        return TeleopSample(t, keypoints=kp, left=self.cfg.left_hand)

    def status(self) -> dict:
        return {"frames": self.frames, "detections": self.detections, "ended": self.ended, "error": self.last_error}

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(1.0)
        if self._cap is not None:
            self._cap.release()
        if self._hands is not None:
            self._hands.close()


# ------------------------------------------------------------------------------------ 6-DoF devices

class _IntegratedPose:
    """A wrist pose integrated from velocity commands (input frame = base frame)."""

    def __init__(self):
        self.T = np.eye(4)
        self.grasp = 0.0

    def integrate(self, v, w, dt: float) -> None:
        self.T[:3, 3] += np.asarray(v) * dt
        self.T[:3, :3] = rot_exp(np.asarray(w) * dt) @ self.T[:3, :3]


class SpaceMouseInput(TeleopInput):
    """pyspacemouse: translation/rotation deflection [-1, 1] -> wrist velocity; button 0 closes
    the hand, button 1 opens it."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.pose = _IntegratedPose()
        self._t: float | None = None
        self._dev = None

    def open(self) -> None:
        try:
            import pyspacemouse  # noqa: PLC0415 - the HID stack is needed only for this backend
        except ImportError as exc:
            raise DeviceNotAvailableError(f"the spacemouse input needs pyspacemouse "
                                          f"(pip install -e '.[spacemouse]'): {exc}") from exc
        self._dev = pyspacemouse
        if not pyspacemouse.open():
            raise DeviceNotAvailableError("no SpaceMouse found (is it plugged in, and is the hidraw device readable?)")

    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        s = self._dev.read()
        dt = 0.0 if self._t is None else min(now - self._t, 0.1)
        self._t = now

        def dz(x):
            return 0.0 if abs(x) < self.cfg.deadzone else x

        v = np.array([dz(s.x), dz(s.y), dz(s.z)]) * self.cfg.max_speed
        w = np.array([dz(s.roll), dz(s.pitch), dz(s.yaw)]) * self.cfg.max_angular_speed
        self.pose.integrate(v, w, dt)
        if s.buttons and s.buttons[0]:
            self.pose.grasp = 1.0
        elif len(s.buttons) > 1 and s.buttons[1]:
            self.pose.grasp = 0.0
        return TeleopSample(now, wrist=self.pose.T.copy(), grasp=self.pose.grasp)

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()


KEYS = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1)}


class KeyboardInput(TeleopInput):
    """Single keys from stdin (no Enter needed on a terminal): w/s x, a/d y, r/f z,
    q/e yaw, g close, h open. Each key press is one step."""

    def __init__(self, cfg, stream=None):
        self.cfg = cfg
        self.stream = stream or sys.stdin
        self.pose = _IntegratedPose()
        self._old = None

    def open(self) -> None:
        if self.stream.isatty():
            import termios  # noqa: PLC0415
            import tty  # noqa: PLC0415

            self._old = termios.tcgetattr(self.stream.fileno())
            tty.setcbreak(self.stream.fileno())

    def read(self, now: float, world: WorldView) -> TeleopSample | None:
        changed = False
        while select.select([self.stream], [], [], 0)[0]:
            ch = self.stream.read(1)
            if not ch:
                break
            changed = self.apply_key(ch) or changed
        return TeleopSample(now, wrist=self.pose.T.copy(), grasp=self.pose.grasp) if changed else None

    def apply_key(self, ch: str) -> bool:
        """Apply one key; True if it meant something."""
        if ch in KEYS:
            axis, sign = KEYS[ch]
            self.pose.T[axis, 3] += sign * self.cfg.step_m
        elif ch in "qe":
            turn = make_T(rot_exp([0.0, 0.0, self.cfg.step_rad * (1 if ch == "q" else -1)]))
            self.pose.T[:3, :3] = turn[:3, :3] @ self.pose.T[:3, :3]
        elif ch in "gh":
            self.pose.grasp = 1.0 if ch == "g" else 0.0
        else:
            return False
        return True

    def close(self) -> None:
        if self._old is not None:
            import termios  # noqa: PLC0415

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._old)


def make_input(cfg, model=None, robot_cfg=None, table_z: float = 0.0, max_arm_speed: float = 0.8,
               max_hand_speed: float = 2.4) -> TeleopInput:
    """The backend for ``cfg.type`` (a teleop input config from :mod:`robot_runtime.config`, whose
    registration names the class)."""
    from robot_runtime.config import backend_target  # noqa: PLC0415
    from robot_runtime.errors import ConfigError  # noqa: PLC0415

    try:
        module, name = backend_target("teleop_input", cfg.type).split(":")
    except ConfigError as exc:
        raise TeleopError(f"unknown teleop input type {cfg.type!r}: {exc}") from exc
    cls = getattr(importlib.import_module(module), name)
    if cls is ScriptedInput:   # the expert plans with the robot and the session's speed limits
        return cls(cfg, model, robot_cfg, table_z, max_arm_speed, max_hand_speed)
    return cls(cfg)
