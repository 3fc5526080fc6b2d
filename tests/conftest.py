"""Test-wide environment: offscreen MuJoCo, and an isolated, loopback-only ROS domain."""
import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A domain of our own per test session so parallel runs on one machine do not cross-talk.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
sys.path.insert(0, str(REPO))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Unit tests run in one worker per core (the Makefile's `make test`): one thread each, so two
    # workers' torch and OpenMP pools do not fight over two cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def sim_config_path(repo) -> Path:
    return repo / "config" / "sim.yaml"


@pytest.fixture(scope="session", autouse=True)
def onnx_cache(tmp_path_factory):
    """Exported ONNX files go to a folder of this test session, not the user's cache."""
    path = tmp_path_factory.mktemp("onnx-cache")
    old = os.environ.get("ROBOT_RUNTIME_CACHE")
    os.environ["ROBOT_RUNTIME_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("ROBOT_RUNTIME_CACHE", None)
    else:
        os.environ["ROBOT_RUNTIME_CACHE"] = old


@pytest.fixture(scope="session")
def twin_recording():
    """A short scripted episode recorded on the twin: raw depth frames [N, H, W] (m) with their
    intrinsics, camera pose and stamps, the joints and targets, and the trainer's visual inputs."""
    from policies.twin_demos import scripted_episodes
    from robot_runtime.config import config_from_dict
    from robot_runtime.transforms import optical_pose_look_at
    from robot_runtime.twin.sim import camera_intrinsics
    from tests.policy_fixtures import SMALL_DEPTH
    from robot_runtime.perception.preprocess import VisualSpec

    cfg = config_from_dict({"demo": {"cycle_s": 2.0}})
    spec = VisualSpec("depth", depth=SMALL_DEPTH)
    episodes, depths = scripted_episodes(cfg, [3], spec, progress=False, keep_depth=True)
    cam = cfg.twin.camera
    K = camera_intrinsics(cam)
    stamps = np.arange(len(depths[0])) / cfg.rates.policy_hz
    return {"episode": episodes[0], "depth": depths[0], "K": K, "stamps": stamps, "spec": spec,
            "T_base_camera": optical_pose_look_at(cam.position, cam.look_at), "cfg": cfg}
