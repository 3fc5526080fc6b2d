"""finetune_node: start a finetuning job from ROS and follow it.

The job runs as ``robot-runtime finetune`` in its own process (lower priority, one thread
fewer than the machine has on the CPU), so the control loops keep their cores
(:class:`policies.finetune.FinetuneSubprocess`).

Parameters (read when a job starts): ``episodes`` (episode folders, comma-separated),
``out`` (the output checkpoint folder), ``base`` (checkpoint to start from; empty: the
config's ``policy.checkpoint``), ``steps``, ``promote`` (hot-swap the result into the
running policy_node when done). Services (std_srvs/Trigger): ``~/start``, ``~/cancel``.
Topic: ``~/progress`` (latched JSON: state, step, steps, loss, val_loss, eta_s, checkpoint,
message).
"""
from __future__ import annotations

import json

from rclpy.node import Node
from std_msgs.msg import String
from std_srvs.srv import Trigger

from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.errors import RobotRuntimeError

NAME = "finetune_node"


class FinetuneNode(Node):
    def __init__(self):
        super().__init__(NAME)
        from policies.finetune import FinetuneSubprocess  # noqa: PLC0415

        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.declare_parameter("episodes", str(cfg.recorder.out_dir))
        self.declare_parameter("out", "")
        self.declare_parameter("base", str(cfg.policy.checkpoint or ""))
        self.declare_parameter("steps", 2000)
        self.declare_parameter("promote", False)
        self.pub = self.create_publisher(String, f"/{NAME}/progress", ros_io.LATCHED_QOS)
        self.job = FinetuneSubprocess(self._publish)
        self.create_service(Trigger, f"/{NAME}/start", self._on_start)
        self.create_service(Trigger, f"/{NAME}/cancel", self._on_cancel)
        self._publish(self.job.status)

    def _publish(self, status: dict) -> None:
        self.pub.publish(String(data=json.dumps(status)))
        if status.get("state") in ("done", "failed", "cancelled"):
            log = self.get_logger().info if status["state"] == "done" else self.get_logger().error
            log(f"finetuning {status['state']}: {status.get('checkpoint') or ''} {status.get('message', '')}")

    def _on_start(self, request, response):
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        episodes = [e.strip() for e in str(p("episodes")).split(",") if e.strip()]
        return self._answer(response, lambda: self.job.start(episodes, p("out"), p("base"), int(p("steps")),
                                                              bool(p("promote"))))

    def _on_cancel(self, request, response):
        return self._answer(response, self.job.cancel)

    def _answer(self, response, action):
        try:
            response.success, response.message = True, action()
        except RobotRuntimeError as exc:
            response.success, response.message = False, str(exc)
        self.get_logger().info(response.message)
        return response

    def close(self) -> None:
        if self.job.running:
            self.job.cancel()


def main(args=None) -> int:
    return ros_io.spin_ros_main(FinetuneNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
