"""Test-wide environment: offscreen MuJoCo, and an isolated, loopback-only ROS domain."""
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# A domain of our own per test session so parallel runs on one machine do not cross-talk.
os.environ.setdefault("ROS_DOMAIN_ID", str(100 + os.getpid() % 100))
sys.path.insert(0, str(REPO))


@pytest.fixture
def repo() -> Path:
    return REPO


@pytest.fixture
def sim_config_path(repo) -> Path:
    return repo / "config" / "sim.yaml"
