"""viz_node on the running twin graph, with real rclpy over DDS: it keeps up at the policy
rate, does not slow the loops (judged per second, so one machine-wide pause is not
blamed on it), and saves an .rrd that the Rerun SDK reads back."""
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


def _values(arr, name):
    v = ros_io.diagnostic_values(arr, name)
    return None if v is None else {k: float(v[k]) for k in ("misses", "overruns", "ticks")}


def _loop(diags, name):
    for arr in reversed(list(diags)):
        v = _values(arr, name)
        if v is not None:
            return v
    return None


def _intervals(diags, name, since):
    """(late ticks, ticks) of loop ``name`` in each interval between its /diagnostics reports
    (1 s apart) in ``diags[since:]``; late = missed or skipped deadlines."""
    pts = [v for v in (_values(arr, name) for arr in list(diags)[since:]) if v is not None]
    return [(b["misses"] + b["overruns"] - a["misses"] - a["overruns"], b["ticks"] - a["ticks"])
            for a, b in zip(pts, pts[1:])]


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
        d0, s0 = len(diags), len(status)
        n0 = json.loads(status[-1].data)["updates"]
        assert probe.wait_for(lambda: json.loads(status[-1].data)["updates"] >= n0 + 160, 12.0)  # 8 s at 20 Hz
        rates = [json.loads(m.data)["rate_hz"] for m in status[s0:]]
        windows = {n: _intervals(diags, f"{n}: loop", d0)
                   for n in ("policy_node", "arm_controller_node", "hand_controller_node")}
    finally:
        viz_code = None if viz is None else stop_node(viz)
        probe.close()
        for p in procs:
            stop_node(p)
    assert viz_code == 0, (tmp_path / "viz_node.log").read_text()[-800:]   # stopped cleanly on SIGINT
    # Keeps up with the 20 Hz policy in every second of the 8: the slowest reading, leaving out the
    # first, whose window still covers the viewer's start-up (measured beside two busy-looping
    # processes: 13.9 Hz for that first window, 19.97 Hz or more for every later one).
    assert len(rates) > 2 and min(rates[1:]) >= 18.0, rates
    # and the loops kept >= 99% of their deadlines meanwhile, leaving out the worst second.
    # A load the viewer adds lasts as long as it runs and shows in every second; a single
    # machine-wide pause (about 330 ms, seen on the shared 2-core CI machine in both
    # controllers at once, with or without a viewer) falls in one.
    for n, iv in windows.items():
        rest = sorted(iv)[:-1]                        # by late ticks: the worst second dropped
        assert len(iv) >= 6 and sum(late for late, _ in rest) <= 0.01 * sum(t for _, t in rest), (n, iv)
    missing = EXPECTED - rrd_entities(rrd)
    assert not missing, missing
