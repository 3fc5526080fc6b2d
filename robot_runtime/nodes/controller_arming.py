"""Arming the controllers on the twin, for nodes that drive them there (demo motion, policy).

On the robot, arming is the operator's action. On the twin a node may do it for the
user: :class:`TwinControllerArmer` calls ``/<controller>/arm`` on both controllers while
``wanted`` is set, and arms a controller again when its watchdog or a joint-state stall
stopped it (a loaded machine can stall the twin for a moment). After an e-stop or a
device fault it leaves the controller stopped.
"""
from __future__ import annotations

from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import ros_io
from robot_runtime.interfaces import CONTROLLERS, ControllerStatus, Mode, status_topic


class TwinControllerArmer:
    """Keeps both controllers armed while :attr:`wanted` (checks every ``period_s``)."""

    def __init__(self, node, period_s: float = 0.5, wanted: bool = True, callback_group=None):
        self.node = node
        self._wanted = wanted
        self.left_stopped = [False] * len(CONTROLLERS)   # e-stop or fault: not armed again until wanted anew
        self.clients = [node.create_client(Trigger, f"/{n}/arm", callback_group=callback_group) for n in CONTROLLERS]
        self.armed = [False] * len(CONTROLLERS)
        self._arming = [False] * len(CONTROLLERS)
        self._mode: list[Mode | None] = [None] * len(CONTROLLERS)    # each controller's latest reported mode
        for i, n in enumerate(CONTROLLERS):
            topic = status_topic(n)
            node.create_subscription(String, topic, ros_io.guarded(lambda m, i=i: self._on_status(i, m),
                                                                   node.get_logger(), topic), ros_io.LATCHED_QOS,
                                     callback_group=callback_group)
        node.create_timer(period_s, self._arm, callback_group=callback_group)

    @property
    def wanted(self) -> bool:
        return self._wanted

    @wanted.setter
    def wanted(self, value: bool) -> None:
        if value and not self._wanted:   # a new episode: arming again is the user's request
            self.left_stopped = [False] * len(CONTROLLERS)
        self._wanted = value

    @property
    def all_armed(self) -> bool:
        return all(self.armed)

    def _arm(self) -> None:
        if not self.wanted:
            return
        for i, client in enumerate(self.clients):
            if self.armed[i] or self._arming[i] or self.left_stopped[i] or not client.service_is_ready():
                continue
            self._arming[i] = True
            client.call_async(Trigger.Request()).add_done_callback(lambda f, i=i: self._done(i, f))

    def _on_status(self, i: int, msg: String) -> None:
        status = ControllerStatus.from_json(msg.data)
        self._mode[i] = status.mode
        if status.mode is Mode.ARMED:
            self.armed[i] = True
        if status.mode is not Mode.STOPPED:
            return
        reason = status.reason
        log = self.node.get_logger()
        if not status.stop.is_stall and self.wanted:
            # An e-stop or a fault, even one that lands while a stall's re-arm is pending: stays stopped.
            if not self.left_stopped[i]:
                log.warn(f"{status.controller} stopped ({reason}); left stopped")
            self.left_stopped[i], self.armed[i] = True, False
            return
        if not self.armed[i]:
            return
        if self.wanted:   # a stall: the timer calls the service again
            log.warn(f"{status.controller} stopped ({reason}); arming it again")
        else:             # stopped between episodes: armed again when the next one starts
            log.warn(f"{status.controller} stopped ({reason}); left stopped")
        self.armed[i] = False

    def _done(self, i: int, future) -> None:
        self._arming[i] = False
        res = future.result()
        if res is not None and res.success:
            # The status topic is the truth: a stop reported while the call was in flight (the
            # twin's first states are late) may arrive before this answer; then the timer arms
            # again, and the controller's own 'armed' status marks it armed.
            if self._mode[i] is not Mode.STOPPED:
                self.armed[i] = True
            self.node.get_logger().info(res.message)
