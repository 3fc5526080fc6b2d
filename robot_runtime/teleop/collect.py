"""Collect demonstrations on a running graph: twin reset, record, engage, save, go home.

A client of the running nodes (``sim_node``, ``teleop_node`` with the scripted expert,
``recorder_node``, both controllers), used by ``robot-runtime teleop collect``, the node
tests and ``bench.teleop``. Each episode:

1. sets ``sim_node``'s seed and resets the twin (new object placement);
2. starts a recording (task from the twin) once both controllers are armed;
3. engages the teleop node (the expert plans from the state it sees);
4. when the expert reports the task motion done, stops the recording with the expert's
   success verdict (from ground-truth object poses);
5. waits for the expert to open the hand and go home, then disengages.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import rclpy
import yaml
from rcl_interfaces.srv import SetParameters
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger

from robot_runtime import ros_io
from robot_runtime.data.recorder import WAITING_FOR_INPUTS
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.interfaces import CONTROLLERS


def write_twin_collect_config(folder, config_dir, **sections) -> Path:
    """A config in ``folder`` that extends ``config_dir/sim_teleop.yaml`` and records to
    ``folder/episodes``; ``sections`` (``teleop={...}``, ...) are merged over it."""
    folder = Path(folder)
    data = {"extends": str((Path(config_dir) / "sim_teleop.yaml").resolve()),
            "recorder": {"out_dir": str(folder / "episodes")}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    path = folder / "teleop.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class CollectError(RobotRuntimeError):
    """A step of the collection did not happen in time, or a node refused it."""


@dataclass
class CollectedEpisode:
    seed: int
    success: bool
    file: str
    dropped: dict


class DemoCollector:
    """Drives the graph through episodes (see the module docstring). Not thread-safe."""

    def __init__(self, context=None, timeout_s: float = 30.0):
        self.context = context or rclpy.Context()
        if not self.context.ok():
            rclpy.init(context=self.context)
        self.node = rclpy.create_node("robot_runtime_collector", context=self.context)
        self.ex = SingleThreadedExecutor(context=self.context)
        self.ex.add_node(self.node)
        self.timeout = timeout_s
        self.status: dict[str, dict] = {}
        for topic in ["/teleop_node/status", "/recorder_node/status", "/twin/episode",
                      *[f"/{c}/status" for c in CONTROLLERS]]:
            self.node.create_subscription(String, topic, lambda m, t=topic: self._on(t, m), ros_io.LATCHED_QOS)
        self._clients: dict[str, object] = {}

    def _on(self, topic: str, msg: String) -> None:
        self.status[topic] = json.loads(msg.data)

    def wait(self, what: str, predicate, timeout: float | None = None) -> None:
        end = time.monotonic() + (timeout or self.timeout)
        while not predicate():
            if time.monotonic() > end:
                raise CollectError(f"timed out waiting for {what}; last status: "
                                   f"{json.dumps({k: v for k, v in self.status.items()})[:600]}")
            self.ex.spin_once(timeout_sec=0.02)

    def call(self, srv_type, name: str, request):
        client = self._clients.get(name)
        if client is None:
            client = self._clients[name] = self.node.create_client(srv_type, name)
        if not client.wait_for_service(timeout_sec=self.timeout):
            raise CollectError(f"service {name} not available (is the node running?)")
        fut = client.call_async(request)
        self.wait(f"an answer from {name}", fut.done)
        return fut.result()

    def set_params(self, node: str, **values) -> None:
        req = SetParameters.Request(parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        res = self.call(SetParameters, f"/{node}/set_parameters", req)
        bad = [r.reason for r in res.results if not r.successful]
        if bad:
            raise CollectError(f"{node} refused parameters {values}: {bad}")

    def _trigger(self, name: str, retry_on: str = "") -> str:
        """Call a Trigger service; while it refuses with ``retry_on`` in its message, ask again."""
        end = time.monotonic() + self.timeout
        while True:
            res = self.call(Trigger, name, Trigger.Request())
            if res.success:
                return res.message
            if not (retry_on and retry_on in res.message) or time.monotonic() > end:
                raise CollectError(f"{name} refused: {res.message}")
            self.ex.spin_once(timeout_sec=0.05)

    def episode(self, seed: int, note: str = "") -> CollectedEpisode:
        """Collect one episode of the twin's current task with object placement ``seed``."""
        self.set_params("sim_node", seed=seed)
        self._trigger("/twin/reset")
        self.wait("the twin's new episode", lambda: self.status.get("/twin/episode", {}).get("seed") == seed)
        task = self.status["/twin/episode"]["task"]
        self.wait("both controllers armed", lambda: all(
            self.status.get(f"/{c}/status", {}).get("mode") == "armed" for c in CONTROLLERS))
        self.set_params("recorder_node", task=task, operator_note=note or f"scripted expert, seed {seed}")
        self._trigger("/recorder_node/start_episode", retry_on=WAITING_FOR_INPUTS)
        before = self.status.get("/teleop_node/status", {}).get("episodes", 0)

        def teleop(key):
            st = self.status.get("/teleop_node/status", {})
            return st.get(key) if st.get("episodes", 0) > before else None

        try:
            self._trigger("/teleop_node/engage", retry_on="waiting for object poses")
            self.wait("the expert to start", lambda: teleop("phase") not in (None, "idle", "finished"))
            self.wait("the expert to finish the task", lambda: teleop("phase") in ("done", "retreat", "finished"))
            st = self.status.get("/recorder_node/status", {})
            if st.get("recording") and st.get("steps", 0) == 0 and not st.get("dropped"):
                raise CollectError(f"the expert finished before the recorder took a step: {self.status}")
        except BaseException:
            self.call(Trigger, "/recorder_node/discard_episode", Trigger.Request())
            raise
        success = bool(teleop("success"))
        res = self.call(SetBool, "/recorder_node/stop_episode", SetBool.Request(data=success))
        if not res.success:
            raise CollectError(f"recorder refused to save: {res.message}")
        saved = json.loads(res.message)
        self.wait("the expert back home", lambda: teleop("phase") == "finished")
        self._trigger("/teleop_node/disengage")
        return CollectedEpisode(seed, success, saved["file"], saved["dropped"])

    def close(self) -> None:
        self.node.destroy_node()
        if self.context.ok():
            rclpy.shutdown(context=self.context)
