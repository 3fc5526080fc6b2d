"""Joint controllers that turn stamped 20 Hz targets into safe commands at their own rate.

Plain classes: no ROS. Time is an argument everywhere (s, ROS time), so tests step them
deterministically. One controller drives one device:

- :class:`ArmServoController` streams servo positions to an :class:`ArmDevice` (120 Hz);
- :class:`HandPDController` turns positions into PD torques for a :class:`HandDevice` (300 Hz).

Both share :class:`JointController`: two sources (``policy``, ``teleop``) of which exactly
one is active, a target buffer per source (interpolation, never extrapolation), the
watchdog (hold, then latch), an explicit arm/e-stop life cycle, and the safety shield,
whose output is the command actually sent.

Modes: ``disarmed`` at start (holding), ``armed`` (following the active source; holding
while it is stale or has not started), ``stopped`` (latched by the watchdog, an e-stop or
a device fault; only :meth:`JointController.arm` leaves it).
"""
from __future__ import annotations

import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from robot_runtime.control.pd import pd_torque
from robot_runtime.control.safety import (InterventionCounter, JointLimits, PointsFn, ShieldState,
                                          Workspace, brake, shield_step)
from robot_runtime.control.targets import Freshness, TargetBuffer, TargetRejected, freshness, select_joints
from robot_runtime.devices.base import ArmDevice, DeviceFault, HandDevice, JointSample
from robot_runtime.errors import DeviceError
from robot_runtime.interfaces import ControllerStatus, Mode, StopKind


SOURCES = ("policy", "teleop")


@dataclass(frozen=True)
class WatchdogTiming:
    """Watchdog and hand-over timing (s)."""

    hold_after_s: float = 0.1
    latch_after_s: float = 0.25
    blend_s: float = 0.5
    max_lead_s: float = 1.0


@dataclass(frozen=True)
class TickOutput:
    """One tick: the shielded command (positions [n] rad, velocities [n] rad/s; None without a
    joint state), the shield's reasons, and whether the command was sent to the device."""

    q: np.ndarray | None
    v: np.ndarray | None
    reasons: tuple[str, ...]
    mode: Mode
    freshness: Freshness | None
    sent: bool = False


def _finite(res) -> bool:
    """Whether a shield result's positions and velocities are all finite (what may be sent)."""
    return bool(np.all(np.isfinite(res.q)) and np.all(np.isfinite(res.v)))


class JointController:
    """Sources, watchdog, hand-over blending and the shield for one device.

    Thread safety: target callbacks, service requests and the loop may call in from
    different threads; one lock serialises them (every method is short).

    Args:
        name: 'arm' or 'hand' (used in messages).
        joint_names: this device's joints, in device order.
        target_names: the joints every target message must name (the 23 of the robot).
        limits: the shield's joint limits.
        timing: watchdog and blending timing.
        period_s: the loop period (s), used as ``dt`` of the first tick.
        workspace, points_fn: workspace check (``points_fn`` maps this device's positions
            and the other device's measured positions [m] to named points).
        source: the initially active source.
        state_timeout_s: a measured joint state older than this (s) stops the controller.
    """

    def __init__(self, name: str, joint_names: Sequence[str], target_names: Sequence[str], limits: JointLimits,
                 timing: WatchdogTiming, period_s: float, workspace: Workspace | None = None,
                 points_fn=None, source: str = "policy", state_timeout_s: float = 0.1):
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (one of {SOURCES})")
        self.name, self.joint_names, self.target_names = name, tuple(joint_names), tuple(target_names)
        self.limits, self.timing, self.period_s = limits, timing, period_s
        self.state_timeout_s = state_timeout_s
        self.workspace, self._points_fn = workspace, points_fn
        self._lock = threading.RLock()
        self.buffers = {s: TargetBuffer(max_lead_s=timing.max_lead_s, max_age_s=timing.hold_after_s)
                        for s in SOURCES}
        self.source = source
        self.mode = Mode.DISARMED
        self.stop_kind = StopKind.NONE
        self.reason = "started disarmed: call the arm service to follow targets"
        self.interventions = InterventionCounter()
        self.rejected_targets: Counter = Counter()
        self.faults: list[str] = []
        self.context: np.ndarray | None = None  # the other device's measured positions
        self._prev: ShieldState | None = None
        self._prev_t: float | None = None
        self._engaged_at = -math.inf
        self._blend_pending = True
        self._blend_from: np.ndarray | None = None
        self._blend_start = 0.0
        self._freshness: Freshness | None = None
        self._restart_after: float | None = None   # armed at this time: restart from a state acquired since
        self._rehold_after: float | None = None    # moved by something else at this time (see rehold)
        self.last_measured: JointSample | None = None
        self.ticks = 0
        self._tick_done = threading.Condition(self._lock)

    #: On arming, start from the measured position (True) or from the held command (False). From
    #: the measured position means from a joint state acquired at or after the arm request: until
    #: one arrives nothing is sent (a state read before it may be from before the arm was moved by
    #: hand, and the first servo target would pull it back at full speed).
    RESTART_FROM_MEASURED = True

    # ------------------------------------------------------------------ inputs
    def on_target(self, source: str, names: Sequence[str], positions: Sequence[float], stamp: float,
                  received: float) -> None:
        """Validate a target message and store it for ``source``.

        Raises:
            TargetRejected: wrong names, non-finite values, or a stamp too far off; the
                rejection is counted under its reason.
        """
        with self._lock:
            try:
                if source not in SOURCES:
                    raise TargetRejected("names", f"unknown source {source!r}")
                q = select_joints(names, positions, self.target_names, self.joint_names)
                self.buffers[source].add(stamp, q, received)
            except TargetRejected as exc:
                self.rejected_targets[exc.reason] += 1
                self.interventions.add((exc.reason,), str(exc))
                raise

    def set_context(self, q_other: np.ndarray) -> bool:
        """Latest measured positions of the other device (for the workspace check).

        Values that are not a finite 1-D array (of the length the first context had) are refused,
        counted under ``context`` and the last good context kept: a NaN there made every
        fingertip's workspace check pass. Returns whether ``q_other`` was taken."""
        try:
            q = np.asarray(q_other, dtype=float)
        except (TypeError, ValueError):
            q = np.full(0, np.nan)
        with self._lock:
            if q.ndim != 1 or q.size == 0 or not np.all(np.isfinite(q)) \
                    or (self.context is not None and q.shape != self.context.shape):
                self.rejected_targets["context"] += 1
                return False
            self.context = q
            return True

    # ------------------------------------------------------------------ life cycle
    def arm(self, now: float) -> str:
        """Start following the active source from the current position (explicit operator action).

        Raises:
            DeviceError: the controller cannot arm (no joint state yet, or no context for
                the workspace check); the message says what is missing.
        """
        with self._lock:
            if self._prev is None:
                raise DeviceError(f"{self.name}: no joint state from the device yet; cannot arm")
            if self.workspace is not None and self._points_fn is not None and self.context is None:
                raise DeviceError(f"{self.name}: no joint states of the other device yet; the workspace "
                                  "check needs them")
            self.mode = Mode.ARMED
            self.stop_kind = StopKind.NONE
            self.reason = ""
            self.faults = []
            if self.RESTART_FROM_MEASURED:
                self._restart_after = now
            else:
                self._prev = self._prev.held()
            self._engage(now)
            return f"{self.name} armed, following {self.source}"

    def rehold(self, now: float) -> None:
        """The device was moved by something other than this controller at ``now`` (s): the twin's
        reset puts the robot at home at once. From the first joint state acquired since, the
        command starts there (held, at rest) in every mode, and a followed source blends in from
        it; until then the controller goes on as before. Without this, the arm's command and the
        hand's held target stayed where the robot was before the reset and drove it back there."""
        with self._lock:
            self._rehold_after = now

    def estop(self, reason: str = "e-stop") -> None:
        """Hold at once and latch a stop until re-armed."""
        with self._lock:
            self._latch(StopKind.ESTOP, reason)
            if self._prev is not None:  # hold exactly here, without braking
                self._prev = self._prev.held()

    def select_source(self, source: str, now: float) -> str:
        """Make ``source`` the one source driving this controller; the hand-over starts from
        the current command, so it never jumps."""
        if source not in SOURCES:
            raise ValueError(f"unknown source {source!r} (one of {SOURCES})")
        with self._lock:
            if source == self.source:
                return f"{self.name} already follows {source}"
            old, self.source = self.source, source
            self._engage(now)
            return f"{self.name} switched from {old} to {source}"

    def _engage(self, now: float) -> None:
        self._engaged_at = now
        self._blend_pending = True

    def _latch(self, kind: StopKind, reason: str) -> None:
        self.mode = Mode.STOPPED
        self.stop_kind = kind
        self.reason = reason

    # ------------------------------------------------------------------ loop
    _measured_q: np.ndarray

    def _bound_points(self) -> PointsFn | None:
        if self.workspace is None or self._points_fn is None or self.context is None:
            return None
        ctx = self.context
        return lambda q: self._points_fn(q, ctx)

    def step(self, now: float, measured: JointSample | None) -> TickOutput:
        """Compute this tick's command (positions) at ``now`` (s) from the measured state."""
        with self._lock:
            out = self._step(now, measured)
            self.ticks += 1
            self._tick_done.notify_all()
            return out

    def wait_for_tick(self, timeout: float) -> bool:
        """Block until the loop has run one more tick (False on timeout)."""
        with self._lock:
            start = self.ticks
            return self._tick_done.wait_for(lambda: self.ticks > start, timeout)

    def _step(self, now: float, measured: JointSample | None) -> TickOutput:
        self.last_measured = measured
        if measured is None:
            return TickOutput(None, None, (), self.mode, None)
        if not np.all(np.isfinite(measured.position)):
            bad = [n for n, v in zip(self.joint_names, measured.position) if not np.isfinite(v)]
            if self.mode is not Mode.STOPPED:
                self._latch(StopKind.MEASURED_NOT_FINITE, f"{self.name}: measured joints not finite ({', '.join(bad)})")
            return TickOutput(None, None, (), self.mode, None)
        if now - measured.t > self.state_timeout_s:
            if self.mode is Mode.ARMED:
                self._latch(StopKind.STATE_STALL, f"{self.name}: joint states stopped ({now - measured.t:.3f} s old, "
                            f"limit {self.state_timeout_s} s)")
            return TickOutput(None, None, (), self.mode, None)
        self._measured_q = measured.position
        points_fn = self._bound_points()
        if self._prev is None:
            self._prev = ShieldState.at_rest(measured.position, points_fn)
        if self._rehold_after is not None and measured.t >= self._rehold_after:
            self._prev = ShieldState.at_rest(measured.position, points_fn)
            self._rehold_after = self._restart_after = None
            if self.mode is Mode.ARMED:
                self._engage(now)
        if self._restart_after is not None and self.mode is Mode.ARMED:
            if measured.t < self._restart_after:   # no joint state read since the arm request yet
                return TickOutput(None, None, ("awaiting_state",), self.mode, None)
            self._prev = ShieldState.at_rest(measured.position, points_fn)
            self._restart_after = None
        dt = now - self._prev_t if self._prev_t is not None else self.period_s
        # The device has one period to carry out this tick's command, however late the tick is:
        # a tick after a stall that allowed the catch-up of the whole gap sent a step the arm then
        # ran at up to the per-tick step limit's speed (2.4 rad/s), and an emulated xArm raised C60.
        dt = min(max(dt, 1e-4), self.period_s)
        self._prev_t = now
        if self.mode is not Mode.ARMED:
            self._freshness = None
            res = brake(self.limits, self._prev, dt, None, points_fn)
            if not _finite(res):
                return TickOutput(None, None, ("not_finite",), self.mode, None)
            self._prev = res.state
            return TickOutput(res.q, res.v, (), self.mode, None)
        buf = self.buffers[self.source]
        newest = buf.newest
        fr = freshness(newest.received if newest else None, self._engaged_at, now, self.timing.hold_after_s,
                       self.timing.latch_after_s)
        self._freshness = fr
        if fr is Freshness.LATCH:
            self._latch(StopKind.WATCHDOG, f"watchdog: no {self.source} target for {now - newest.received:.3f} s "
                        f"(latch after {self.timing.latch_after_s} s)")
            res = brake(self.limits, self._prev, dt, "stale_hold", points_fn)
        elif fr is not Freshness.FRESH:  # waiting for a first target is expected, not an intervention
            self._blend_pending = True
            res = brake(self.limits, self._prev, dt, "stale_hold" if fr is Freshness.HOLD else None, points_fn)
        else:
            if self._blend_pending:
                self._blend_pending = False
                self._blend_from, self._blend_start = self._prev.q.copy(), now
            q_src = buf.sample(now)
            alpha = min(1.0, (now - self._blend_start) / self.timing.blend_s) if self.timing.blend_s > 0 else 1.0
            q_des = self._blend_from + alpha * (q_src - self._blend_from)
            res = shield_step(self.limits, self._prev, q_des, dt, self.workspace, points_fn)
        return self._checked(res, fr)

    def _checked(self, res, fr) -> TickOutput:
        """The shield's result as this tick's output, unless it is not finite: then nothing is sent,
        the state stays where it was and the controller stops."""
        if not _finite(res):
            self._latch(StopKind.SHIELD_NOT_FINITE, f"{self.name}: shield output not finite")
            return TickOutput(None, None, ("not_finite",), self.mode, fr)
        self.interventions.add(res.reasons, res.detail)
        self._prev = res.state
        return TickOutput(res.q, res.v, res.reasons, self.mode, fr)

    # ------------------------------------------------------------------ reporting
    def status(self) -> dict:
        """A :class:`robot_runtime.interfaces.ControllerStatus` as a dict (the latched status topic)."""
        with self._lock:
            return ControllerStatus(self.name, self.mode, self.stop_kind, self.reason, self.source,
                                    self._freshness.value if self._freshness else "none",
                                    tuple(self.faults)).to_dict()

    def diagnostics(self) -> dict:
        """Counters for /diagnostics: interventions by reason, rejected targets, mode."""
        with self._lock:
            return {"mode": self.mode.value, "stop": self.stop_kind.value, "source": self.source, "reason": self.reason,
                    "targets": self._freshness.value if self._freshness else "none",
                    **self.interventions.as_dict(),
                    "rejected_targets": int(sum(self.rejected_targets.values())),
                    "faults": "; ".join(self.faults) or "none"}


class ArmServoController(JointController):
    """The arm: streams shielded servo targets to an :class:`ArmDevice` while armed.

    While disarmed or stopped nothing is streamed (the arm holds its last target). A device
    fault or a failed send latches a stop, stops the arm and is reported by name. Arming
    starts from the measured position: the arm may have moved while nothing was streamed,
    and it runs to each servo target at full speed.
    """

    def __init__(self, device: ArmDevice, **kwargs):
        super().__init__("arm", **kwargs)
        self.device = device
        self._stopped_device = False
        #: Each tick's time in the device's calls (ms): the read and the send (with the xarm
        #: backend, the SDK's two round trips), over the last 2400 ticks (20 s at 120 Hz; their
        #: percentiles are taken once a second on the loop's thread).
        self.device_ms: deque[float] = deque(maxlen=2400)

    def tick(self, now: float) -> TickOutput:
        """Read the arm, check its faults, compute and send one command."""
        t0 = time.perf_counter()
        try:
            measured = self.device.read_state()
            faults = self.device.faults()
        except DeviceError as exc:
            measured, faults = None, [DeviceFault(None, f"arm read failed: {exc}")]
        io_s = time.perf_counter() - t0
        errors = [str(f) for f in faults if f.error]
        with self._lock:
            self.faults = [str(f) for f in faults]
            if errors and self.mode is not Mode.STOPPED:
                self._latch(StopKind.DEVICE_FAULT, f"arm fault: {'; '.join(errors)}")
            out = self.step(now, measured)
            if out.q is not None and out.mode is Mode.ARMED:
                t1 = time.perf_counter()
                try:
                    self.device.send_servo_target(out.q)
                    self._stopped_device = False
                    out = replace(out, sent=True)
                except DeviceError as exc:
                    self._latch(StopKind.DEVICE_ERROR, f"arm send failed: {exc}")
                    out = replace(out, mode=self.mode)
                io_s += time.perf_counter() - t1
            self.device_ms.append(io_s * 1e3)
            if self.mode is Mode.STOPPED and not self._stopped_device:
                self._stopped_device = True
                try:
                    self.device.stop()
                except DeviceError as exc:
                    self.faults = self.faults + [f"stop failed: {exc}"]
            return out

    def diagnostics(self) -> dict:
        """The joint controller's counters and the device calls' time per tick (ms)."""
        out = super().diagnostics()
        with self._lock:
            io = list(self.device_ms)
        if io:
            p50, p99 = np.percentile(io, (50, 99))
            out.update(device_io_p50_ms=round(float(p50), 3), device_io_p99_ms=round(float(p99), 3))
        return out

    def arm(self, now: float) -> str:
        """Re-enable the device (clear errors, servo mode, ready) and arm."""
        self.device.enable()
        with self._lock:
            msg = super().arm(now)
            self._stopped_device = False
            return msg


class VelocityFilter:
    """Joint velocity from a first-order low-pass filtered difference of measured positions.

    Args:
        cutoff_hz: filter cut-off (Hz).
    """

    def __init__(self, cutoff_hz: float):
        self.cutoff_hz = cutoff_hz
        self._t: float | None = None
        self._q: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def update(self, t: float, q: np.ndarray) -> np.ndarray:
        """Velocity estimate [n] (rad/s) after a sample of positions ``q`` [n] taken at ``t`` (s)."""
        q = np.asarray(q, dtype=float)
        if self._t is None:
            self._t, self._q, self.v = t, q.copy(), np.zeros_like(q)
            return self.v
        dt = t - self._t
        if dt <= 0:  # same sample again
            return self.v
        raw = (q - self._q) / dt
        alpha = 1.0 - math.exp(-2.0 * math.pi * self.cutoff_hz * dt)
        self.v = self.v + alpha * (raw - self.v)
        self._t, self._q = t, q.copy()
        return self.v


@dataclass(frozen=True)
class HandTickOutput(TickOutput):
    """A hand tick adds the torques sent [16] (N m)."""

    torque: np.ndarray | None = None


class HandPDController(JointController):
    """The hand: PD torque tau = Kp (q* - q) - Kd q' toward the shielded target q*.

    Torques are sent every tick, in every mode: a disarmed or stopped hand holds its
    position rather than going limp, and arming continues from that held target, so the
    command never steps.

    Args:
        device: the hand.
        kp, kd, torque_limit: per-joint gains [16] (N m/rad, N m s/rad) and limits [16] (N m).
        velocity_cutoff_hz: cut-off of the velocity filter (Hz).
    """

    RESTART_FROM_MEASURED = False

    def __init__(self, device: HandDevice, kp, kd, torque_limit, velocity_cutoff_hz: float = 50.0, **kwargs):
        super().__init__("hand", **kwargs)
        self.device = device
        self.kp, self.kd = np.asarray(kp, float), np.asarray(kd, float)
        self.torque_limit = np.asarray(torque_limit, float)
        self.velocity = VelocityFilter(velocity_cutoff_hz)

    def tick(self, now: float) -> HandTickOutput:
        """Read the hand, compute and send one torque command. A failed read or send latches a stop
        and is reported as a fault (the loop goes on: the next tick tries again)."""
        try:
            measured = self.device.read_state()
        except DeviceError as exc:
            measured = None
            with self._lock:
                self.faults = [f"hand read failed: {exc}"]
                if self.mode is not Mode.STOPPED:
                    self._latch(StopKind.DEVICE_ERROR, f"hand read failed: {exc}")
        with self._lock:
            out = self.step(now, measured)
            if out.q is None:
                if measured is not None:  # state stopped arriving: do not push on stale positions
                    self._send(np.zeros(len(self.joint_names)))
                return HandTickOutput(None, None, out.reasons, out.mode, out.freshness)
            qd = self.velocity.update(measured.t, measured.position)
            tau = pd_torque(out.q, measured.position, qd, self.kp, self.kd, self.torque_limit)
            if not np.all(np.isfinite(tau)):
                self._latch(StopKind.SHIELD_NOT_FINITE, "hand: torque not finite")
                tau = np.zeros(len(self.joint_names))
            if np.any(np.abs(tau) >= self.torque_limit):
                self.interventions.add(("torque",))
            sent = self._send(tau)
            return HandTickOutput(out.q, out.v, out.reasons, self.mode, out.freshness, sent, tau)

    def _send(self, tau: np.ndarray) -> bool:
        try:
            self.device.send_torque(tau)
            return True
        except DeviceError as exc:
            self.faults = [f"hand send failed: {exc}"]
            if self.mode is not Mode.STOPPED:
                self._latch(StopKind.DEVICE_ERROR, f"hand send failed: {exc}")
            return False
