"""`robot-runtime calibrate` through the ROS graph on the twin, as on the robot: sim_node draws
colour with the marker on the palm, calibration_node drives the arm through the controllers
(teleop source), collects sightings from the topics, solves, checks against depth and writes."""
import os
import signal
import subprocess
import sys

import pytest
import yaml

from calibration.extrinsics import camera_pose_for, load_camera_pose
from calibration.handeye import pose_error
from robot_runtime.config import load_config
from tests.ros_probe import REPO


def test_calibration_over_the_graph_recovers_the_twin_camera(tmp_path):
    pytest.importorskip("cv2")
    out = tmp_path / "cal" / "zed.yaml"
    log_path = tmp_path / "calibrate.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "robot_runtime.cli", "calibrate", "--poses", "8", "--out",
                                 str(out), "--rrd", str(tmp_path / "cal.rrd")], cwd=REPO, stdout=log_file,
                                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            code = proc.wait(300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)   # the launcher stops its nodes and prints its summary
            proc.wait(30)
            code = "timed out after 300 s"
    log = log_path.read_text()
    assert code == 0, f"{code}\n{log[-6000:]}"
    assert "calibration_node finished" in log and "all nodes ok" in log, log[-4000:]
    doc = yaml.safe_load(out.read_text())
    assert doc["camera_serial"] == "twin" and doc["residuals"]["inliers"] >= 6
    dp, dr = pose_error(load_camera_pose(out), camera_pose_for(load_config(REPO / "config" / "sim.yaml")))
    assert dp < 5.0 and dr < 0.5, (dp, dr, log[-2000:])
    assert doc["verification"]["median_depth_residual_mm"] < 3.0 and doc["verification"]["robot_pixels"] > 1000
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert (tmp_path / "cal.rrd").stat().st_size > 10_000


def test_calibrate_without_a_calibration_section_says_which_config_to_use():
    r = subprocess.run([sys.executable, "-m", "robot_runtime.cli", "calibrate", "--config",
                        str(REPO / "config" / "sim.yaml")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "calibration.enabled is false" in r.stderr, r.stderr
