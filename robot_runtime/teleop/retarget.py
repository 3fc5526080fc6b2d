"""Finger retargeting: human hand keypoints -> the 16 Allegro joints.

Uses dex-retargeting's vector optimiser with its Allegro right-hand teleoperation
config, pointed at this repo's hand description (``description.build.hand_urdf_text``,
rooted at a ``wrist`` link at the palm's base) instead of a downloaded URDF: the config's
link names are mapped onto ours. dex-retargeting (and pinocchio under it) is imported only
when a retargeter is built.

Example::

    retarget = FingerRetargeter()
    q_hand = retarget(in_hand_frame(keypoints, hand_frame(keypoints)))   # [16] rad, driver order
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import yaml

from robot_runtime import description as D
from robot_runtime.description import build
from robot_runtime.errors import TeleopError
from robot_runtime.teleop.hand_pose import check_keypoints

#: dex-retargeting's Allegro link names -> this description's.
LINK_NAMES = {"wrist": build.WRIST_LINK, "link_3.0_tip": "index_tip", "link_7.0_tip": "middle_tip",
              "link_11.0_tip": "ring_tip", "link_15.0_tip": "thumb_tip"}
CONFIG_NAME = "configs/teleop/allegro_hand_right.yml"


def _import_dex_retargeting():
    try:
        import dex_retargeting  # noqa: PLC0415 - heavy (pinocchio); imported only when retargeting is used
        from dex_retargeting.retargeting_config import RetargetingConfig  # noqa: PLC0415
    except ImportError as exc:
        raise TeleopError(f"finger retargeting needs dex-retargeting (pip install -e '.[teleop]'): {exc}") from exc
    return Path(dex_retargeting.__file__).parent, RetargetingConfig


def retargeting_config(urdf_path: str | Path, scaling: float | None = None) -> dict:
    """dex-retargeting's Allegro right-hand vector config, mapped onto this repo's hand URDF."""
    root, _ = _import_dex_retargeting()
    cfg = yaml.safe_load((root / CONFIG_NAME).read_text())["retargeting"]
    for key in ("target_origin_link_names", "target_task_link_names"):
        unknown = [n for n in cfg[key] if n not in LINK_NAMES]
        if unknown:
            raise TeleopError(f"{root / CONFIG_NAME}: links {unknown} have no counterpart in this description")
        cfg[key] = [LINK_NAMES[n] for n in cfg[key]]
    cfg["urdf_path"] = str(urdf_path)
    cfg["low_pass_alpha"] = -1.0  # no filter here: the teleop session filters and speed-limits
    if scaling is not None:
        cfg["scaling_factor"] = float(scaling)
    return cfg


class FingerRetargeter:
    """Keypoints in the hand frame [21, 3] (m) -> Allegro joint targets [16] (rad, driver order).

    Args:
        scaling: robot/human hand size ratio (dex-retargeting's Allegro value, 1.6, if None).
    """

    def __init__(self, scaling: float | None = None):
        _, RetargetingConfig = _import_dex_retargeting()
        self._dir = tempfile.TemporaryDirectory(prefix="robot_runtime_hand_")
        urdf = Path(self._dir.name) / "allegro_hand_right.urdf"
        urdf.write_text(build.hand_urdf_text())
        cfg = retargeting_config(urdf, scaling)
        self.scaling = float(cfg["scaling_factor"])
        self.origin_idx, self.task_idx = (np.asarray(i, dtype=int) for i in cfg["target_link_human_indices"])
        self.task_links = tuple(cfg["target_task_link_names"])
        self._retargeting = RetargetingConfig.from_dict(cfg).build()
        names = list(self._retargeting.joint_names)
        missing = [j for j in D.HAND_JOINTS if j not in names]
        if missing:
            raise TeleopError(f"retargeting model lacks joints {missing}")
        self._order = np.array([names.index(j) for j in D.HAND_JOINTS])
        self._to_solver = np.argsort(self._order)

    def reference_vectors(self, kp_hand) -> np.ndarray:
        """The human vectors [4, 3] (origin -> fingertip, m) the optimiser matches, scaled by :attr:`scaling`."""
        kp = check_keypoints(kp_hand, "hand keypoints")
        return kp[self.task_idx] - kp[self.origin_idx]

    def __call__(self, kp_hand) -> np.ndarray:
        q = self._retargeting.retarget(self.reference_vectors(kp_hand))
        return np.asarray(q, dtype=float)[self._order]

    def warm_start(self, q_hand) -> None:
        """Start the next solve from ``q_hand`` [16] (driver order), e.g. the measured hand at engage."""
        q = np.zeros(len(self._order))
        q[self._order] = np.asarray(q_hand, dtype=float)
        self._retargeting.set_qpos(q)

    def close(self) -> None:
        self._dir.cleanup()
