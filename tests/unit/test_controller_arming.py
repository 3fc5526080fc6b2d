"""TwinControllerArmer's bookkeeping against the controllers' status topic, with the service
answers and status messages delivered in the orders DDS can deliver them."""
import json

from std_msgs.msg import String

from robot_runtime.interfaces import CONTROLLERS
from robot_runtime.nodes.controller_arming import TwinControllerArmer


class _Future:
    def __init__(self, success=True):
        self.success, self.callbacks = success, []

    def add_done_callback(self, cb):
        self.callbacks.append(cb)

    def result(self):
        return type("Response", (), {"success": self.success, "message": "armed"})()

    def answer(self):
        for cb in self.callbacks:
            cb(self)


class _Client:
    def __init__(self):
        self.calls = []

    def service_is_ready(self):
        return True

    def call_async(self, request):
        self.calls.append(_Future())
        return self.calls[-1]


class _Logger:
    def __init__(self):
        self.lines = []

    def info(self, m, throttle_duration_sec=None):
        self.lines.append(m)

    warn = info


class _Node:
    """Just what the armer asks of a node: clients, subscriptions, a timer and a logger."""

    def __init__(self):
        self.clients, self.subs, self.timer, self.logger = [], {}, None, _Logger()

    def create_client(self, srv, name, callback_group=None):
        self.clients.append(_Client())
        return self.clients[-1]

    def create_subscription(self, msg, topic, cb, qos, callback_group=None):
        self.subs[topic] = cb

    def create_timer(self, period, cb, callback_group=None):
        self.timer = cb

    def get_logger(self):
        return self.logger


def _status(node, i, mode, stop="none", reason=""):
    name = CONTROLLERS[i]
    node.subs[f"/{name}/status"](String(data=json.dumps({"controller": name, "mode": mode, "stop": stop,
                                                         "reason": reason})))


def test_a_stall_reported_before_the_arm_answer_is_armed_again():
    node = _Node()
    armer = TwinControllerArmer(node)
    node.timer()
    assert [len(c.calls) for c in node.clients] == [1, 1]
    for i in range(2):   # the controller armed, then its first joint states were late: stopped; then the answer
        _status(node, i, "armed")
        _status(node, i, "stopped", "state_stall", "hand: joint states stopped (0.201 s old, limit 0.1 s)")
        node.clients[i].calls[0].answer()
    assert not armer.all_armed
    node.timer()
    assert [len(c.calls) for c in node.clients] == [2, 2]        # armed again
    for i in range(2):
        node.clients[i].calls[1].answer()
        _status(node, i, "armed")
    assert armer.all_armed
    node.timer()
    assert [len(c.calls) for c in node.clients] == [2, 2]        # and left alone


def _both_armed():
    """An armer whose first arm calls were answered and whose controllers reported armed."""
    node = _Node()
    armer = TwinControllerArmer(node)
    node.timer()
    for i in range(2):
        node.clients[i].calls[0].answer()
        _status(node, i, "armed")
    return node, armer


def test_the_answer_before_the_status_marks_armed_and_an_estop_is_left_stopped():
    node, armer = _both_armed()
    assert armer.all_armed
    _status(node, 0, "stopped", "estop", "e-stop")
    node.timer()
    assert not armer.armed[0] and armer.left_stopped[0] and len(node.clients[0].calls) == 1


def test_the_stop_kind_decides_not_the_words_of_the_reason():
    """A stop is re-armed by its typed kind: a fault whose text mentions the watchdog stays stopped,
    and a status a peer garbled is dropped without touching the bookkeeping."""
    node, armer = _both_armed()
    _status(node, 0, "stopped", "device_fault", "arm fault: C23 watchdog: joint states stopped")
    _status(node, 1, "stopped", "watchdog", "no target for 1.2 s")
    node.timer()
    assert armer.left_stopped == [True, False] and [len(c.calls) for c in node.clients] == [1, 2]
    node.clients[1].calls[1].answer()
    _status(node, 1, "armed")
    for bad in ("{", '{"mode": "flying"}', '["armed"]', '{"mode": "stopped", "stop": "bored"}'):
        node.subs[f"/{CONTROLLERS[1]}/status"](String(data=bad))
    assert armer.left_stopped == [True, False] and any("message dropped" in m for m in node.logger.lines)
