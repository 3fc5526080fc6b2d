"""Config -> node plan: which nodes run, with which parameters and remappings.

The one function :func:`node_plan` is used by ``launch/*.launch.py`` (``ros2 launch`` on
the lab PC) and by the native launcher (``robot-runtime sim`` here), so both start the
same graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from robot_runtime.config import RuntimeConfig


@dataclass(frozen=True)
class NodeSpec:
    """One node of the graph: ROS node name, console-script executable, module for ``python -m``.

    ``essential``: the graph cannot run safely without it (a controller, the twin), so its death
    ends the run; any other node's death is reported and the controllers keep holding.
    """

    name: str
    executable: str
    module: str
    parameters: dict = field(default_factory=dict)
    remappings: tuple[tuple[str, str], ...] = ()
    essential: bool = False

    def ros_args(self) -> list[str]:
        """``--ros-args`` arguments carrying the parameters and remappings."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for k, v in self.parameters.items():
            args += ["-p", f"{k}:={_param_literal(v)}"]
        for a, b in self.remappings:
            args += ["-r", f"{a}:={b}"]
        return args


def _param_literal(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return "''"   # rcl cannot parse an empty override; YAML's empty string
    return str(v)


def node_plan(cfg: RuntimeConfig, config_file: str) -> list[NodeSpec]:
    """The nodes to start for ``cfg`` (loaded from ``config_file``), in start order."""
    params = {"config_file": config_file}
    plan: list[NodeSpec] = []
    if cfg.uses_twin:
        plan.append(NodeSpec("sim_node", "sim_node", "robot_runtime.nodes.sim_node",
                             {**params, "task": cfg.twin.task, "seed": cfg.twin.seed}, essential=True))
    if cfg.camera.type in ("zed", "replay"):
        plan.append(NodeSpec("camera_node", "camera_node", "robot_runtime.nodes.camera_node", dict(params)))
    plan.append(NodeSpec("arm_controller_node", "arm_controller_node", "robot_runtime.nodes.arm_controller_node",
                         dict(params), essential=True))
    plan.append(NodeSpec("hand_controller_node", "hand_controller_node", "robot_runtime.nodes.hand_controller_node",
                         dict(params), essential=True))
    if cfg.policy.enabled:
        plan.append(NodeSpec("policy_node", "policy_node", "robot_runtime.nodes.policy_node",
                             {**params, "checkpoint": str(cfg.policy.checkpoint)}))
    if cfg.teleop.enabled:
        plan.append(NodeSpec("teleop_node", "teleop_node", "robot_runtime.nodes.teleop_node", dict(params)))
    if cfg.recorder.enabled:
        plan.append(NodeSpec("recorder_node", "recorder_node", "robot_runtime.nodes.recorder_node", dict(params)))
    if cfg.demo.enabled:
        plan.append(NodeSpec("demo_motion_node", "demo_motion_node", "robot_runtime.nodes.demo_motion_node",
                             dict(params)))
    if cfg.calibration.enabled:
        plan.append(NodeSpec("calibration_node", "calibration_node", "robot_runtime.nodes.calibration_node",
                             dict(params)))
    if cfg.viz.enabled:
        plan.append(NodeSpec("viz_node", "viz_node", "robot_runtime.nodes.viz_node", dict(params)))
    return plan
