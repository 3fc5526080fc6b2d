"""viz_node on the running twin graph, with real rclpy over DDS: it keeps up at the policy
rate, does not slow the loops, and saves an .rrd that the Rerun SDK reads back."""
import json

import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from std_msgs.msg import String

from robot_runtime import ros_io
from tests.ros_probe import REPO, RosProbe, start_node, stop_node

NODES = ("sim_node", "arm_controller_node", "hand_controller_node", "policy_node")
EXPECTED = {"/world/robot/box", "/world/robot/cylinder", "/world/robot/sphere", "/world/camera", "/world/camera/depth", "/world/points",
            "/joints/arm/measured", "/joints/arm/target", "/joints/hand/target",
            "/policy/latency_ms", "/policy/frame_age_ms", "/controllers/arm/lateness_p99_ms",
            "/controllers/hand/overruns", "/shield/arm", "/events"}


def _loop(diags, name):
    for arr in reversed(list(diags)):
        v = ros_io.diagnostic_values(arr, name)
        if v is not None:
            return {k: float(v[k]) for k in ("misses", "overruns", "ticks")}
    return None


def test_viz_node_keeps_up_and_saves_a_readable_rrd(tmp_path):
    pytest.importorskip("rerun")
    from robot_runtime.viz.rerun_log import rrd_entities

    cfg = yaml.safe_load((REPO / "config" / "sim.yaml").read_text())
    cfg["policy"]["checkpoint"] = str(REPO / "policies" / "checkpoints" / "twin_grasp_lift")
    cfg_path = tmp_path / "sim.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    rrd = tmp_path / "live.rrd"
    probe = RosProbe("viz_probe")
    status, diags = [], []
    probe.subscribe(String, "/viz_node/status", ros_io.LATCHED_QOS, status)
    probe.subscribe(DiagnosticArray, "/diagnostics", ros_io.STATE_QOS, diags, keep=200)
    procs = [start_node(f"robot_runtime.nodes.{n}", "-p", f"config_file:={cfg_path}", log_path=tmp_path / f"{n}.log")
             for n in NODES]
    viz = None
    try:
        assert probe.wait_for(lambda: _loop(diags, "policy_node: loop") is not None, 90.0), \
            (tmp_path / "policy_node.log").read_text()[-800:]
        viz = start_node("robot_runtime.nodes.viz_node", "-p", f"config_file:={cfg_path}", "-p", "sink:=save",
                         "-p", f"target:={rrd}", log_path=tmp_path / "viz_node.log")
        assert probe.wait_for(lambda: status and json.loads(status[-1].data)["updates"] > 20, 60.0), \
            (tmp_path / "viz_node.log").read_text()[-800:]
        before = {n: _loop(diags, f"{n}: loop") for n in ("policy_node", "arm_controller_node", "hand_controller_node")}
        n0 = json.loads(status[-1].data)["updates"]
        assert probe.wait_for(lambda: json.loads(status[-1].data)["updates"] >= n0 + 160, 12.0)  # 8 s at 20 Hz
        rates = [json.loads(m.data)["rate_hz"] for m in status[-4:]]
        after = {n: _loop(diags, f"{n}: loop") for n in before}
    finally:
        if viz is not None:
            assert stop_node(viz) == 0, (tmp_path / "viz_node.log").read_text()[-800:]
        probe.close()
        for p in procs:
            stop_node(p)
    assert min(rates) >= 18.0, rates                  # keeps up with the 20 Hz policy
    for n, b in before.items():                       # and the loops kept their deadlines meanwhile
        late = after[n]["misses"] + after[n]["overruns"] - b["misses"] - b["overruns"]
        assert late <= 0.01 * (after[n]["ticks"] - b["ticks"]), (n, b, after[n])
    missing = EXPECTED - rrd_entities(rrd)
    assert not missing, missing
