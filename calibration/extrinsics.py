"""The camera's pose in the robot base frame, as used to turn depth into base-frame points.

A calibration file is YAML::

    T_base_camera:            # 4x4, camera optical frame (x right, y down, z forward) in the base frame (m)
      - [r11, r12, r13, x]
      - [r21, r22, r23, y]
      - [r31, r32, r33, z]
      - [0, 0, 0, 1]
    camera_serial: ...        # optional: written by ``robot-runtime calibrate`` with the date,
    date: ...                 # the method, the residuals and the depth verification

On the twin the pose is the twin camera's, known exactly from ``twin.camera``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from robot_runtime.errors import ConfigError
from robot_runtime.transforms import optical_pose_look_at


def check_pose(T, where: str) -> np.ndarray:
    """A 4x4 rigid transform, or ConfigError naming ``where`` and what is wrong."""
    try:
        T = np.asarray(T, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"T_base_camera is not a 4x4 matrix of numbers: {exc}", file=where) from exc
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        raise ConfigError(f"T_base_camera must be a finite 4x4 matrix, got shape {T.shape}", file=where)
    R = T[:3, :3]
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-3 or abs(np.linalg.det(R) - 1.0) > 1e-3:
        raise ConfigError("T_base_camera's rotation is not orthonormal with determinant 1", file=where)
    if np.abs(T[3] - [0, 0, 0, 1]).max() > 1e-9:
        raise ConfigError("T_base_camera's last row must be [0, 0, 0, 1]", file=where)
    return T


def load_camera_pose(path) -> np.ndarray:
    """T_base_camera [4, 4] from a calibration file. Raises ConfigError naming the file."""
    return read_calibration(path)[0]


def read_calibration(path) -> tuple[np.ndarray, dict]:
    """(T_base_camera [4, 4], the whole document) of a calibration file. Raises ConfigError naming the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read calibration: {exc}", file=str(path)) from exc
    if not isinstance(data, dict) or "T_base_camera" not in data:
        raise ConfigError("calibration file has no key 'T_base_camera'", file=str(path), key="T_base_camera")
    return check_pose(data["T_base_camera"], str(path)), data


def calibration_metadata(cfg) -> dict:
    """What an episode records about the calibration it was made with: the pose, where it came
    from and, for a calibration file, its camera serial, date and verification residual.

    Raises:
        ConfigError: the calibration file is missing or malformed (named).
    """
    if cfg.policy.calibration_file:
        T, data = read_calibration(cfg.policy.calibration_file)
        meta: dict = {"T_base_camera": T.tolist(), "file": str(Path(cfg.policy.calibration_file))}
        meta.update({k: data[k] for k in ("camera_serial", "date", "verification") if k in data})
        return meta
    T = camera_pose_for(cfg)
    return {"T_base_camera": None if T is None else np.asarray(T).tolist(),
            "source": "twin camera (exact)" if T is not None else "none"}


def camera_pose_for(cfg) -> np.ndarray | None:
    """The camera pose the runtime uses: the calibration file when given, else the twin
    camera's when the camera is the twin's, else None (not calibrated)."""
    if cfg.policy.calibration_file:
        return load_camera_pose(cfg.policy.calibration_file)
    if cfg.camera.type == "twin":
        cam = cfg.twin.camera
        return optical_pose_look_at(cam.position, cam.look_at)
    return None
