"""`robot-runtime sim --duration 10` on the twin, headless, as `make sim` runs it."""
import os
import subprocess
import sys

from tests.ros_probe import REPO


def run_cli(*args, timeout=90):
    return subprocess.run([sys.executable, "-m", "robot_runtime.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_sim_runs_ten_seconds_and_exits_zero():
    r = run_cli("sim", "--duration", "10")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = [line for line in r.stdout.splitlines() if line.startswith("robot-runtime: ran")]
    assert summary and "all nodes ok" in summary[0] and "twin RTF" in summary[0], r.stdout
    rtf = float(summary[0].split("twin RTF ")[1].split()[0])
    assert rtf > 0.9


def test_a_node_that_dies_is_reported_and_the_rest_stop(tmp_path):
    cfg = tmp_path / "bad.yaml"
    # The camera replay file is a valid path but not a recording: camera_node dies at start.
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a recording")
    cfg.write_text(f"arm: {{type: twin}}\nhand: {{type: twin}}\ncamera: {{type: replay, path: {junk}}}\n"
                   "demo: {enabled: false}\n")
    r = run_cli("sim", "--config", str(cfg), "--duration", "30")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "camera_node exited with code" in r.stderr and "FAILED: camera_node" in r.stdout


def test_bad_config_is_refused_before_anything_starts(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("twin:\n  physics_hz: 50\n")
    r = run_cli("sim", "--config", str(cfg), "--duration", "5")
    assert r.returncode == 2 and "twin.physics_hz" in r.stderr and str(cfg) in r.stderr
