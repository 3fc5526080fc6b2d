"""`robot-runtime sim` on the twin, headless, as `make sim` runs it, and the control CLI."""
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from std_msgs.msg import String

from robot_runtime import ros_io
from tests.ros_probe import REPO, RosProbe, process_running


def run_cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "robot_runtime.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sim_runs_and_the_control_cli_stops_it():
    """`make sim`'s graph: policy_node arms both controllers on the twin (``policy.arm_controllers``);
    `robot-runtime control estop` stops them."""
    probe = RosProbe("smoke_probe")
    status = {n: [] for n in ("arm_controller_node", "hand_controller_node")}
    for n, store in status.items():
        probe.subscribe(String, f"/{n}/status", ros_io.LATCHED_QOS, store)

    def modes():
        return {n: json.loads(s[-1].data)["mode"] if s else None for n, s in status.items()}

    def history():
        return {n: [(json.loads(m.data)["mode"], json.loads(m.data)["reason"]) for m in s] for n, s in status.items()}
    sim = subprocess.Popen([sys.executable, "-m", "robot_runtime.cli", "sim", "--duration", "15"], cwd=REPO,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert probe.wait_for(lambda: set(modes().values()) == {"armed"}, 30.0), history()
        r = run_cli("control", "estop")
        assert r.returncode == 0 and r.stdout.count("stopped until re-armed") == 2, r.stdout + r.stderr
        assert probe.wait_for(lambda: set(modes().values()) == {"stopped"}, 5.0), history()
        out, err = sim.communicate(timeout=60)
    finally:
        if sim.poll() is None:
            sim.kill()
        probe.close()
    assert sim.returncode == 0, out + err
    summary = [line for line in out.splitlines() if line.startswith("robot-runtime: ran")]
    assert summary and "all nodes ok" in summary[0] and "twin RTF" in summary[0], out
    rtf = float(summary[0].split("twin RTF ")[1].split()[0])
    assert rtf > 0.9
    # the line says what happened to the task's object, from the twin's ground truth
    assert re.search(r"\| (mug|can|ball|block) (lifted|not lifted) \(now [+-]\d+\.\d cm, highest [+-]\d+\.\d cm\), "
                     r"task (solved|not solved) \|", summary[0]), summary[0]
    # Every deadline of each loop is either a tick or a counted overrun (a loaded machine may stall
    # the whole graph now and then: the line says so). How late and how steady the loops run on an
    # idle machine is bench/controllers.py's to measure, not a test's.
    for loop, hz in (("arm_controller", 120), ("hand_controller", 300)):
        m = re.search(rf"{loop} (\d+) Hz \((\d+) ticks\), late p99 [\d.]+ ms, (\d+) overruns, stopped,", summary[0])
        assert m, summary[0]
        rate, ticks, overruns = (int(g) for g in m.groups())
        span = ticks / rate    # s the loop ran
        assert abs((ticks + overruns) / span - hz) < 0.05 * hz and rate > 0.5 * hz, summary[0]


def test_a_camera_node_that_dies_is_reported_and_the_controllers_run_on(tmp_path):
    cfg = tmp_path / "bad.yaml"
    # The camera replay file is a valid path but not a recording: camera_node dies at start.
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a recording")
    cfg.write_text(f"arm: {{type: twin}}\nhand: {{type: twin}}\ncamera: {{type: replay, path: {junk}}}\n"
                   "demo: {enabled: false}\n")
    r = run_cli("sim", "--config", str(cfg), "--duration", "8")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "camera_node exited with code" in r.stderr and "the controllers hold the robot" in r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("robot-runtime: ran")][0]
    assert re.search(r"FAILED: camera_node \(exit -?\d+\) \|", summary), summary   # and no other node
    # the controllers ran to the end: the summary reports their loops over the whole run
    assert float(summary.split("ran ")[1].split(" s")[0]) >= 8.0 and "arm_controller" in summary, summary


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("twin:\n  physics_hz: 50\n")
    r = run_cli("sim", "--config", str(cfg), "--duration", "5")
    assert r.returncode == 2 and "twin.physics_hz" in r.stderr and str(cfg) in r.stderr


def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_killing_the_launcher_stops_every_node(tmp_path):
    """SIGKILL of `robot-runtime sim` leaves no node running on with nobody watching it."""
    cfg = tmp_path / "twin.yaml"
    cfg.write_text(f"extends: {REPO / 'config' / 'sim.yaml'}\npolicy: {{enabled: false}}\n")
    probe = RosProbe("kill_probe")
    status = []
    probe.subscribe(String, "/hand_controller_node/status", ros_io.LATCHED_QOS, status)
    sim = subprocess.Popen([sys.executable, "-m", "robot_runtime.cli", "sim", "--config", str(cfg)], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes: list[int] = []
    try:
        assert probe.wait_for(lambda: status, 30.0)   # the graph is up
        nodes = _children(sim.pid)
        assert len(nodes) >= 3 and all(process_running(p) for p in nodes)
        sim.kill()
        sim.wait(5)
        assert probe.wait_for(lambda: not any(process_running(p) for p in nodes), 15.0), \
            [p for p in nodes if process_running(p)]
    finally:
        probe.close()
        if sim.poll() is None:
            sim.kill()
        # a node that outlived the check must not outlive the test: left running (as it once was,
        # on a loaded run) it publishes into every later test's graph
        for p in nodes:
            if process_running(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
