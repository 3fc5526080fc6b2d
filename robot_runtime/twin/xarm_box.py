"""An emulator of the xArm control box on loopback, for the real ``xarm-python-sdk``.

It speaks the box's private Modbus-TCP protocol on port 502 (a 6-byte header of transaction
id, protocol id and length, then the register and its parameters; answers carry a state byte
and the register's data, floats little-endian) and serves the rich report on port 30002 (the
SDK's default: the state and mode, the joint angles, the error and warning codes; 5 Hz by
default, a slow rate on purpose, so that nothing may depend on a fast report). Behind it is a kinematic xArm7 that honours the controller's documented servo
behaviour: in mode 1 (servo) with motion enabled and in state 0 (ready) it runs to the latest
servo target, spread over the time the stream takes per target, at no more than
``max_joint_speed``; after an error it drops to mode 0, state 4
and refuses motion until the error is cleared, motion enabled, the servo mode and the ready
state set again.

Implemented registers: the version and serial queries, motion enable, state and mode
(set and get), the error and warning codes (get and clean), servo-j targets and the joint
states. Any other register is answered with state 0 and zeroed data, and counted
(:attr:`XArmBox.unhandled`), so a test can tell what the SDK asked that the box did not know.

By default the arm behind the box is kinematic; ``sim_node`` serves a box whose arm is the
twin's (:class:`TwinArmLink`) when the config's arm is ``type: xarm`` at a loopback address
(``config/sim_xarm.yaml``).

Faults, raised as the controller raises them (the error code in the report and in every
answer's state byte, the arm stopped in mode 0, state 4): C23 for a servo target past a joint
limit, C60 when the servo targets ask the flange to move faster than 1 m/s (from one target
to the next over the time between them: the servo mode's linear speed limit), C31 when the
twin's arm or hand presses on the table with more than ``COLLISION_FORCE_N``, C35 for a
servo target that takes the flange outside a configured safety boundary, C22 for a servo
target that puts the wrist, hand or fingers into the base or upper arm (checked on the target,
before motion, as the controller checks its own link model; :func:`self_collision`), and on
demand :meth:`XArmBox.raise_error` for any code. Injectable: a stall of the servo call
(``stall_s`` every ``stall_every_s``, as SDK issue 154 reports for streams at 60-100 Hz),
:meth:`XArmBox.stop_answering` (a controller that hangs) and :meth:`XArmBox.drop_connections`
(the cable pulled).
"""
from __future__ import annotations

import socket
import struct
import threading
import time
from collections import Counter

import numpy as np

from robot_runtime import description as D
from robot_runtime.kinematics import UrdfModel

#: Registers (the SDK's ``XCONF.UxbusReg``).
GET_VERSION, GET_ROBOT_SN, MOTION_EN, SET_STATE, GET_STATE = 1, 2, 11, 12, 13
GET_ERROR, CLEAN_ERR, CLEAN_WAR, SET_MODE, MOVE_SERVOJ, GET_JOINT_POS = 15, 16, 17, 19, 29, 42
CONTROL_PORT, RICH_REPORT_PORT, REAL_REPORT_PORT = 502, 30002, 30003
#: The rich report's length (bytes) and the box's rate for it (Hz).
RICH_REPORT_BYTES, RICH_REPORT_HZ = 587, 5.0
#: The real-time report (the SDK's ``report_type='real'``): state and mode, joint angles, TCP pose,
#: joint torques, at 100 Hz as the vendor describes it; no error codes, no joint velocities.
REAL_REPORT_BYTES, REAL_REPORT_HZ = 87, 100.0
#: State byte bits of an answer: an error or a warning is active.
STATE_ERROR, STATE_WARNING = 0x40, 0x20
#: The answer's "not ready to move" bit (the SDK turns a motion command's answer with it into code 9).
STATE_NOT_READY = 0x10
#: The servo mode's linear (TCP) speed limit (m/s); past it the controller raises C60.
MAX_TCP_SPEED = 1.0
#: The force (N) of the robot on the table past which the box raises C31 (the real controller
#: judges a collision from its joint currents; this stands for its default sensitivity).
COLLISION_FORCE_N = 30.0

#: The self-collision model: capsules (radius m) between frames of the robot description.
#: Each part of ``SELF_COLLISION_PAIRS``' first group is checked against each of its second.
CAPSULES: dict[str, tuple[str, str, float]] = {
    "base": ("link_base", "link2", 0.075),
    "upper_arm": ("link2", "link4", 0.06),
    "forearm": ("link4", "link5", 0.05),
    "wrist": ("link6", "flange", 0.05),
    "hand": ("flange", "palm", 0.06),
    "index": ("palm", "index_tip", 0.025),
    "middle": ("palm", "middle_tip", 0.025),
    "ring": ("palm", "ring_tip", 0.025),
    "thumb": ("palm", "thumb_tip", 0.025),
}
SELF_COLLISION_PAIRS = ((("wrist", "hand", "index", "middle", "ring", "thumb"), ("base", "upper_arm")),
                        (("forearm",), ("base",)))


def _segment_distance(p0, p1, q0, q1) -> float:
    """Shortest distance (m) between the segments p0-p1 and q0-q1 (each a point [3])."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a, e, f = float(d1 @ d1), float(d2 @ d2), float(d2 @ r)
    if a < 1e-12 and e < 1e-12:
        return float(np.linalg.norm(r))
    if a < 1e-12:
        s, t = 0.0, min(max(f / e, 0.0), 1.0)
    else:
        c = float(d1 @ r)
        if e < 1e-12:
            s, t = min(max(-c / a, 0.0), 1.0), 0.0
        else:
            b = float(d1 @ d2)
            den = a * e - b * b
            s = min(max((b * f - c * e) / den, 0.0), 1.0) if den > 1e-12 else 0.0
            t = (b * s + f) / e
            if t < 0.0:
                s, t = min(max(-c / a, 0.0), 1.0), 0.0
            elif t > 1.0:
                s, t = min(max((b - c) / a, 0.0), 1.0), 1.0
    return float(np.linalg.norm((p0 + d1 * s) - (q0 + d2 * t)))


def self_collision(model: UrdfModel, q_arm, q_hand=None) -> tuple[str, str, float] | None:
    """The first pair of :data:`CAPSULES` that touch at arm joints ``q_arm`` [7] (rad) and hand
    joints ``q_hand`` [16] (zeros by default), with their clearance (m, negative: overlap), or None."""
    hand = np.zeros(16) if q_hand is None else np.asarray(q_hand, float)
    frames = model.forward(np.concatenate([np.asarray(q_arm, float), hand]))
    seg = {n: (frames[a][:3, 3], frames[b][:3, 3], r) for n, (a, b, r) in CAPSULES.items()}
    for moving, fixed in SELF_COLLISION_PAIRS:
        for m in moving:
            for f in fixed:
                (p0, p1, r1), (q0, q1, r2) = seg[m], seg[f]
                gap = _segment_distance(p0, p1, q0, q1) - r1 - r2
                if gap < 0.0:
                    return m, f, gap
    return None
VERSION = "7,7,XI1303EMU0001,AC1303EMU0001,v2.5.0"
SERIAL = "XI1303EMU0001"


class TwinArmLink:
    """The twin's arm behind a box: the box's servo setpoints go to the twin's arm (``command``,
    a function of q [7]) and its joints are the twin's (:meth:`on_state` is fed the twin's arm
    states, as sim_node publishes them)."""

    def __init__(self, command):
        self.command = command
        self._lock = threading.Lock()
        self._q: np.ndarray | None = None
        self._v = np.zeros(7)
        self.contact_force = 0.0   # N the table bears from the robot, as the twin last saw it

    def on_state(self, position, velocity, contact_force: float = 0.0) -> None:
        with self._lock:
            self._q, self._v = np.asarray(position, float).copy(), np.asarray(velocity, float).copy()
            self.contact_force = float(contact_force)

    def measured(self) -> tuple[np.ndarray, np.ndarray] | None:
        with self._lock:
            return None if self._q is None else (self._q.copy(), self._v.copy())


class XArmBox:
    """The emulated control box, serving on ``host`` (a loopback address of the caller's).

    Args:
        host: e.g. ``127.0.0.17``; one address per box (the ports are fixed).
        q0: the arm's joints at power-on [7] (rad).
        max_joint_speed: the servo's joint speed cap (rad/s).
        rate_hz: the box's own control rate.
        arm: a :class:`TwinArmLink` (the twin's arm) instead of the kinematic one.
        stall_s, stall_every_s: an injected stall of the servo call (s; 0: none) and its period (s).
        boundary: the flange's safety boundary ((min xyz), (max xyz), m); a target outside raises C35.
    """

    def __init__(self, host: str, q0=D.ARM_HOME, max_joint_speed: float = 3.14, rate_hz: float = 250.0,
                 arm: TwinArmLink | None = None, stall_s: float = 0.0, stall_every_s: float = 10.0,
                 boundary=None):
        self.host = host
        self.arm = arm
        #: The safety boundary the box is configured with: ((x, y, z) min, (x, y, z) max) of the
        #: flange in the base frame (m), or None (off, the box's default).
        self.boundary = None if boundary is None else (np.asarray(boundary[0], float), np.asarray(boundary[1], float))
        self.stall_s, self.stall_every_s = float(stall_s), float(stall_every_s)
        self._next_stall = time.monotonic() + self.stall_every_s
        self.stalls = 0
        #: Per stall: how long (ms) after the servo call blocked the arm stood still (it runs on
        #: to the last target it was given, then holds).
        self.stall_to_hold_ms: list[float] = []
        self._stall_t: float | None = None
        self._model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
        self._conns: list[socket.socket] = []
        self._last_servo: tuple[np.ndarray, float] | None = None   # the last servo target and when
        self._servo_speed = np.full(7, float(max_joint_speed))   # per joint (rad/s), set by the stream
        self.q = np.asarray(q0, float).copy()
        self.v = np.zeros(7)
        self.target = self.q.copy()
        self.max_joint_speed, self.period = float(max_joint_speed), 1.0 / rate_hz
        self.mode, self.state, self.enabled = 0, 4, False
        self.error_code = self.warn_code = 0
        self._persistent_error = 0
        self.stop_requests = 0      # set_state(4) calls: the client stopping the arm
        self.servo_targets = 0
        self.answering = True
        #: When a deque: (time.monotonic() s, q [7] rad) of each of the box's control cycles, for
        #: measuring how old a client's view of the joints is (bench.xarm).
        self.history = None
        self.unhandled: Counter = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._servers: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ life cycle
    def start(self) -> "XArmBox":
        self._listen()
        self._spawn(self._run_arm)
        return self

    def _listen(self) -> None:
        for port, handler in ((CONTROL_PORT, self._serve_commands), (RICH_REPORT_PORT, self._serve_reports),
                              (REAL_REPORT_PORT, self._serve_real_reports)):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((self.host, port))
            s.listen(4)
            s.settimeout(0.2)
            self._servers.append(s)
            self._spawn(self._accept, s, handler)

    def close(self) -> None:
        self._stop.set()
        for s in self._servers:
            s.close()
        for t in self._threads:
            t.join(2.0)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name=f"xarm-box-{fn.__name__}")
        t.start()
        self._threads.append(t)

    def _accept(self, server: socket.socket, handler) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:   # closed: the cable pulled or the box closed (it once spun here)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._conns.append(conn)
            self._spawn(handler, conn)

    def inject_stalls(self, stall_s: float, every_s: float) -> None:
        """From now on, block the servo call for ``stall_s`` (s) once every ``every_s`` (s)."""
        self.stall_s, self.stall_every_s = float(stall_s), float(every_s)
        self._next_stall = time.monotonic() + self.stall_every_s

    def stop_answering(self, stopped: bool = True) -> None:
        """From now on (until called with False) read requests but answer none, the connections
        left open: a controller that hangs."""
        self.answering = not stopped

    def drop_connections(self) -> None:
        """The cable pulled: every connection is closed and no new one is taken (until
        :meth:`plug_in`)."""
        servers, self._servers = self._servers, []
        for s in servers:
            s.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def plug_in(self) -> None:
        """The cable back: connections are taken again (the arm and its state as they were)."""
        if not self._servers:
            self._listen()

    # ------------------------------------------------------------------ the arm
    def raise_error(self, code: int, persists: bool = False) -> None:
        """The controller reports error ``code``: the arm stops and drops to mode 0, state 4.
        With ``persists`` the cause remains (an arm still outside its boundary, say): clearing the
        error leaves it raised until :meth:`remove_cause`."""
        with self._lock:
            self._raise(code)
            self._persistent_error = int(code) if persists else 0

    def raise_warning(self, code: int) -> None:
        """The controller reports warning ``code``: reported, the arm goes on."""
        with self._lock:
            self.warn_code = int(code)

    def stop_from_outside(self) -> None:
        """Someone stops the arm outside the client (the pendant, UFactory Studio): state 4."""
        with self._lock:
            self.state = 4

    def arm_history(self) -> list:
        """A copy of :attr:`history` (empty when it is not kept)."""
        with self._lock:
            return list(self.history or ())

    def remove_cause(self) -> None:
        """The cause of a persisting error is gone: the next clear clears it."""
        with self._lock:
            self._persistent_error = 0

    def _raise(self, code: int) -> None:
        self._last_servo = None
        self.error_code = int(code)
        self.mode, self.state = 0, 4
        self.target = self.q.copy()
        self.v[:] = 0.0

    def _flange(self, q) -> np.ndarray:
        """The flange's position [3] (m, base frame) at arm joints ``q`` [7]."""
        return self._model.link_pose(np.concatenate([q, np.zeros(16)]), D.FLANGE_FRAME)[:3, 3]

    def _tcp_speed(self, q_from, q_to, dt: float) -> float:
        """The flange's speed (m/s) moving from ``q_from`` to ``q_to`` [7] in ``dt`` (s)."""
        return float(np.linalg.norm(self._flange(q_to) - self._flange(q_from))) / dt

    def _run_arm(self) -> None:
        next_t = time.monotonic()
        setpoint = None   # with the twin's arm: the servo setpoint last sent to it
        while not self._stop.is_set():
            with self._lock:
                if self.arm is not None:   # the twin's joints are the arm's
                    m = self.arm.measured()
                    if m is not None:
                        self.q, self.v = m
                    if self.arm.contact_force > COLLISION_FORCE_N and not self.error_code:
                        self._raise(31)   # the arm or hand pressed on the table
                moving = self.mode == 1 and self.state in (0, 1) and self.enabled and not self.error_code
                if not moving:
                    # holding where it is: a servo stream that starts later starts from here
                    self.target, setpoint, self._last_servo = self.q.copy(), None, None
                    self._servo_speed = np.full(7, self.max_joint_speed)
                    if self.arm is None:
                        self.v[:] = 0.0
                else:
                    base = self.q if setpoint is None else setpoint
                    speed = np.maximum(self._servo_speed, 1e-3)
                    step = np.clip(self.target - base, -speed * self.period, speed * self.period)
                    if self.arm is None:
                        self.q = self.q + step
                        self.v = step / self.period
                    else:
                        setpoint = base + step
                        self.arm.command(setpoint)
                    if self._stall_t is not None and not np.any(step) and \
                            len(self.stall_to_hold_ms) < self.stalls:   # still, while the call is blocked
                        self.stall_to_hold_ms.append((time.monotonic() - self._stall_t) * 1e3)
                if self.history is not None:
                    self.history.append((time.monotonic(), self.q.copy()))
            next_t += self.period
            self._stop.wait(max(0.0, next_t - time.monotonic()))

    def _state_byte(self) -> int:
        not_ready = self.state in (4, 5) or not self.enabled
        return ((STATE_ERROR if self.error_code else 0) | (STATE_WARNING if self.warn_code else 0)
                | (STATE_NOT_READY if not_ready else 0))

    def _handle(self, reg: int, params: bytes) -> bytes:
        """The data answering register ``reg`` (the box's state is locked by the caller)."""
        if reg == GET_VERSION:
            return VERSION.encode().ljust(40, b"\0")
        if reg == GET_ROBOT_SN:
            return SERIAL.encode().ljust(40, b"\0")
        if reg == MOTION_EN:
            self.enabled = bool(params[1]) if len(params) > 1 else False
            return b""
        if reg == SET_STATE:
            value = params[0] if params else 0
            if value == 0 and (self.error_code or not self.enabled):
                return b""   # refused silently by the box: the state stays; the report shows it
            self.state = int(value)
            if self.state == 4:
                self.stop_requests += 1
            if self.state in (3, 4):
                self.target = self.q.copy()
            return b""
        if reg == GET_STATE:
            return bytes([self.state])
        if reg == SET_MODE:
            if not self.error_code:
                self.mode = int(params[0]) if params else 0
            return b""
        if reg == GET_ERROR:
            return bytes([self.error_code, self.warn_code])
        if reg == CLEAN_ERR:
            self.error_code = self._persistent_error
            return b""
        if reg == CLEAN_WAR:
            self.warn_code = 0
            return b""
        if reg == MOVE_SERVOJ:
            q = np.array(struct.unpack("<7f", params[:28]), float)
            lo, hi = np.asarray(D.ARM_LIMITS).T
            if self.mode == 1 and self.enabled and not self.error_code and np.any((q < lo - 1e-4) | (q > hi + 1e-4)):
                self._raise(23)
                return b""
            if self.mode == 1 and self.enabled and not self.error_code and self_collision(self._model, q):
                self._raise(22)
                return b""
            if self.boundary is not None and self.mode == 1 and self.enabled and not self.error_code:
                p = self._flange(q)
                if np.any(p < self.boundary[0]) or np.any(p > self.boundary[1]):
                    self._raise(35)
                    return b""
            if self.mode == 1 and self.state in (0, 1) and self.enabled and not self.error_code:
                # the commanded flange speed, from the last target over the time between them
                now = time.monotonic()
                if self._last_servo is not None:
                    q_prev, t_prev = self._last_servo
                    gap = min(max(now - t_prev, self.period), 0.1)
                    if self._tcp_speed(q_prev, q, gap) > MAX_TCP_SPEED:
                        self._raise(60)
                        return b""
                    # the arm moves to the new target over the time the stream takes per target,
                    # as a servo that interpolates the stream (not at full speed, then waiting)
                    self._servo_speed = np.minimum(np.abs(q - q_prev) / gap, self.max_joint_speed)
                self._last_servo = (q, now)
                self.target = q
                self.state = 1
                self.servo_targets += 1
            return b""
        if reg == GET_JOINT_POS:
            num = params[0] if params else 1
            rows = [self.q, self.v, np.zeros(7)][:num & 0x0F]
            return b"".join(struct.pack("<7f", *r) for r in rows)
        self.unhandled[reg] += 1
        return bytes(64)

    # ------------------------------------------------------------------ the sockets
    def _serve_commands(self, conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while len(buf) >= 7:
                    tid, pid, length = struct.unpack(">HHH", buf[:6])
                    if len(buf) < 6 + length:
                        break
                    reg, params, buf = buf[6], buf[7:6 + length], buf[6 + length:]
                    if reg == MOVE_SERVOJ and self.stall_s > 0 and time.monotonic() >= self._next_stall:
                        self.stalls += 1   # the servo call blocks, as SDK issue 154 reports
                        self._stall_t = time.monotonic()
                        self._stop.wait(self.stall_s)
                        self._stall_t = None
                        self._next_stall = time.monotonic() + self.stall_every_s
                    if not self.answering:
                        continue
                    with self._lock:
                        out = self._handle(reg, params)
                        state = self._state_byte()
                    try:
                        conn.sendall(struct.pack(">HHHBB", tid, pid, len(out) + 2, reg, state) + out)
                    except OSError:
                        return

    def rich_report(self) -> bytes:
        """One rich report: the documented prefix filled, the rest zero."""
        with self._lock:
            head = struct.pack(">IBH", RICH_REPORT_BYTES, (self.mode << 4) | (self.state & 0x0F),
                               self.servo_targets & 0xFFFF)
            body = struct.pack("<7f", *self.q) + bytes(24) + bytes(28) + bytes([0, 0x7F if self.enabled else 0,
                                                                                  self.error_code, self.warn_code])
        out = head + body
        out += bytes(145 - len(out))                       # tcp offset, payload, sensitivities, gravity
        out += bytes([5, 7, 0, 0, 0, 0])                   # robot type 5 (xArm7), 7 axes, ids
        return out + bytes(RICH_REPORT_BYTES - len(out))

    def real_report(self) -> bytes:
        """One real-time report: state and mode, command count, joint angles (rad), the flange's
        position (mm; orientation left zero) and zero torques."""
        with self._lock:
            q = self.q.copy()
            head = struct.pack(">IBH", REAL_REPORT_BYTES, (self.mode << 4) | (self.state & 0x0F),
                               self.servo_targets & 0xFFFF)
        pose = np.concatenate([self._flange(q) * 1000.0, np.zeros(3)])
        return head + struct.pack("<7f", *q) + struct.pack("<6f", *pose) + bytes(28)

    def _serve_real_reports(self, conn: socket.socket) -> None:
        self._stream_reports(conn, self.real_report, REAL_REPORT_HZ)

    def _serve_reports(self, conn: socket.socket) -> None:
        self._stream_reports(conn, self.rich_report, RICH_REPORT_HZ)

    def _stream_reports(self, conn: socket.socket, make, hz: float) -> None:
        """Send ``make()`` at ``hz`` (absolute deadlines) until closed or the peer goes."""
        period, due = 1.0 / hz, time.monotonic()
        with conn:
            while not self._stop.is_set():
                try:
                    conn.sendall(make())
                except OSError:
                    return
                due += period
                self._stop.wait(max(0.0, due - time.monotonic()))
