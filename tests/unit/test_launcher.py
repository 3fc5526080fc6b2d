"""The native launcher's policy when a node dies: only an essential node's death ends the run."""
import time

from robot_runtime.launcher import run_graph
from robot_runtime.plan import NodeSpec


def _spec(name, essential=False, **params):
    return NodeSpec(name, name, "tests.exit_after", params, essential=essential)


def test_a_dead_non_essential_node_is_reported_and_the_graph_runs_on(capfd):
    plan = [_spec("arm_controller_node", essential=True), _spec("policy_node", exit_after=0.3, code=3)]
    t0 = time.monotonic()
    assert run_graph(plan, duration=2.5, monitor=False) == 1     # the run still reports the death
    assert time.monotonic() - t0 >= 2.5                          # ...but went on to its end
    out = capfd.readouterr()
    assert "policy_node exited with code 3" in out.err and "the controllers hold the robot" in out.err
    assert "stopped arm_controller_node" in out.out              # stopped by the launcher, at the end
    assert "FAILED: policy_node (exit 3)" in out.out


def test_a_dead_essential_node_ends_the_run_at_once(capfd):
    plan = [_spec("hand_controller_node", essential=True, exit_after=0.3, code=1), _spec("policy_node"),
            _spec("recorder_node")]
    t0 = time.monotonic()
    assert run_graph(plan, duration=60.0, monitor=False) == 1
    assert time.monotonic() - t0 < 30.0
    out = capfd.readouterr()
    assert "hand_controller_node exited with code 1" in out.err and "stopping the rest" in out.err
    assert "stopped policy_node" in out.out and "stopped recorder_node" in out.out


def test_the_plan_marks_the_controllers_and_the_twin_essential(repo):
    from robot_runtime.config import load_config
    from robot_runtime.plan import node_plan

    cfg_path = repo / "config" / "sim.yaml"
    plan = node_plan(load_config(cfg_path), str(cfg_path))
    assert {s.name for s in plan if s.essential} == {"sim_node", "arm_controller_node", "hand_controller_node"}
    assert {s.name for s in plan if not s.essential} >= {"policy_node"}


def test_the_summary_line_reports_the_arms_device_calls_per_tick():
    from robot_runtime.launcher import summary_line

    loop = {"mean_rate_hz": "120.0", "ticks": "3600", "lateness_p99_ms": "0.05", "overruns": "0", "mode": "armed",
            "shield_velocity": "2"}
    arm = {**loop, "device_io_p50_ms": "1.234", "device_io_p99_ms": "1.9"}
    line = summary_line(30.0, {"a": 0}, [], None, {"arm_controller_node": arm, "hand_controller_node": loop})
    assert "arm_controller 120 Hz (3600 ticks), late p99 0.05 ms, 0 overruns, armed, 2 shield interventions, " \
           "device calls p50 1.23 / p99 1.90 ms per tick" in line, line
    assert line.count("device calls") == 1
