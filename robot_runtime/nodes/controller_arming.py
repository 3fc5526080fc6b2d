"""Arming the controllers on the twin, for nodes that drive them there (demo motion, policy).

On the robot, arming is the operator's action. On the twin a node may do it for the
user: :class:`TwinControllerArmer` calls ``/<controller>/arm`` on both controllers while
``wanted`` is set, and arms a controller again when its watchdog or a joint-state stall
stopped it (a loaded machine can stall the twin for a moment). After an e-stop or a
device fault it leaves the controller stopped.
"""
from __future__ import annotations

import json

from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import ros_io

CONTROLLERS = ("arm_controller_node", "hand_controller_node")


def is_stall(reason: str) -> bool:
    """A controller stop from late joint states or targets (the watchdog), not an e-stop or a fault."""
    return reason.startswith("watchdog") or "joint states stopped" in reason


class TwinControllerArmer:
    """Keeps both controllers armed while :attr:`wanted` (checks every ``period_s``)."""

    def __init__(self, node, period_s: float = 0.5, wanted: bool = True):
        self.node = node
        self._wanted = wanted
        self.left_stopped = [False] * len(CONTROLLERS)   # e-stop or fault: not armed again until wanted anew
        self.clients = [node.create_client(Trigger, f"/{n}/arm") for n in CONTROLLERS]
        self.armed = [False] * len(CONTROLLERS)
        self._arming = [False] * len(CONTROLLERS)
        self._mode = [""] * len(CONTROLLERS)    # each controller's latest reported mode
        for i, n in enumerate(CONTROLLERS):
            node.create_subscription(String, f"/{n}/status", lambda m, i=i: self._on_status(i, m), ros_io.LATCHED_QOS)
        node.create_timer(period_s, self._arm)

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
        status = json.loads(msg.data)
        self._mode[i] = status["mode"]
        if status["mode"] == "armed":
            self.armed[i] = True
        if status["mode"] != "stopped":
            return
        reason = status["reason"]
        log = self.node.get_logger()
        stall = is_stall(reason)
        if not stall and self.wanted:
            # An e-stop or a fault, even one that lands while a stall's re-arm is pending: stays stopped.
            if not self.left_stopped[i]:
                log.warn(f"{status['controller']} stopped ({reason}); left stopped")
            self.left_stopped[i], self.armed[i] = True, False
            return
        if not self.armed[i]:
            return
        if self.wanted:   # a stall: the timer calls the service again
            log.warn(f"{status['controller']} stopped ({reason}); arming it again")
        else:             # stopped between episodes: armed again when the next one starts
            log.warn(f"{status['controller']} stopped ({reason}); left stopped")
        self.armed[i] = False

    def _done(self, i: int, future) -> None:
        self._arming[i] = False
        res = future.result()
        if res is not None and res.success:
            # The status topic is the truth: a stop reported while the call was in flight (the
            # twin's first states are late) may arrive before this answer; then the timer arms
            # again, and the controller's own 'armed' status marks it armed.
            if self._mode[i] != "stopped":
                self.armed[i] = True
            self.node.get_logger().info(res.message)
