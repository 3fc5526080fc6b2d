"""finetune_node: start a finetuning job from ROS and follow it.

The job runs as ``robot-runtime finetune`` in its own process (lower priority, one thread
fewer than the machine has on the CPU), so the control loops keep their cores
(:class:`policies.finetune.FinetuneSubprocess`).

Parameters (read when a job starts): ``episodes`` (episode folders, comma-separated),
``out`` (the output checkpoint folder), ``base`` (checkpoint to start from; empty: the
config's ``policy.checkpoint``), ``steps``, ``promote`` (hot-swap the result into the
running policy_node when done). Any DDS peer can set these, so a job starts only when each
path resolves inside the config's folders (episodes in ``recorder.out_dir``, ``out`` in
``policy.finetune_dir``, ``base`` there or beside ``policy.checkpoint``) and no value can
become an option (:func:`policies.finetune.job_paths`). Services (std_srvs/Trigger):
``~/start``, ``~/cancel``.
Topic: ``~/progress`` (latched JSON: state, step, steps, loss, val_loss, eta_s, checkpoint,
message).
"""
from __future__ import annotations

import json
from pathlib import Path

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
        # where a job's paths may lead (parameters any DDS peer can set: policies.finetune.job_paths)
        self.roots = {"episode_root": Path(cfg.recorder.out_dir), "out_root": Path(cfg.policy.finetune_dir),
                      "base_roots": [Path(cfg.policy.finetune_dir)]
                      + ([Path(cfg.policy.checkpoint).parent] if cfg.policy.checkpoint else [])}
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
        from policies.finetune import FinetuneError, job_paths  # noqa: PLC0415

        p = lambda name: self.get_parameter(name).value  # noqa: E731

        def start():
            episodes = [e.strip() for e in str(p("episodes")).split(",") if e.strip()]
            srcs, out, base = job_paths(episodes, str(p("out")), str(p("base")), **self.roots)
            steps = p("steps")
            if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= 10**7:
                raise FinetuneError(f"steps {steps!r}: expected an integer in 1..10000000")
            return self.job.start(srcs, out, base, steps, bool(p("promote")))
        return self._answer(response, start)

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
