"""A recorded episode shown in Rerun the way ``viz_node`` shows a live rollout.

    robot-runtime replay EPISODE [--rrd OUT.rrd | --connect URL]     (default: spawn a viewer)

Each step is logged at its recorded grid time: the robot model from the measured joints,
the commanded (after the shield) against the measured joints, the depth image at the
recorded resolution, and the policy's input when it is a point cloud (or, for a depth
policy, the depth back-projected with the recorded camera), plus the episode's start, stop
and success on ``events``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from robot_runtime.data.episode_file import load_episode
from robot_runtime.perception.preprocess import backproject
from robot_runtime.viz.rerun_log import RolloutLogger


def log_episode(logger: RolloutLogger, path, progress: bool = False) -> int:
    """Log the episode file ``path`` into ``logger``; returns the number of steps logged.

    Raises:
        EpisodeFileError: the file is not a readable episode (named in the message).
    """
    ep = load_episode(path, allow_partial=True)
    meta = ep.meta
    names = tuple(meta.get("joint_names") or logger.joint_names)
    order = np.array([names.index(n) for n in logger.joint_names])
    stride = int(meta.get("depth_stride", 1))
    cam = meta.get("camera") or {}
    T = np.asarray((meta.get("calibration") or {}).get("T_base_camera", np.eye(4)), float)
    K = None
    if cam.get("K"):
        K = np.asarray(cam["K"], float).copy()
        K[:2] /= stride          # the stored depth is every stride-th pixel
        h, w = ep["depth"].shape[1:]
        logger.log_camera(K, T, w, h)
    is_cloud = (meta.get("visual") or {}).get("kind") == "pointcloud"
    t0 = float(ep["t"][0])
    logger.set_time(t0, 0)
    logger.log_event(f"episode {Path(path).name}: task {meta.get('task')}, {len(ep)} steps, "
                     f"{meta.get('operator_note', '')}".rstrip(", "))
    steps = range(len(ep))
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        steps = tqdm(steps, desc="replay", unit="step")
    for k in steps:
        depth = ep["depth"][k].astype(np.float32) / 1000.0
        if is_cloud:
            points = ep["visual"][k]
        elif K is not None:
            pts = backproject(depth, K)
            points = pts @ T[:3, :3].T + T[:3, 3]
        else:
            points = None
        logger.log_step(float(ep["t"][k]), k, measured=ep["q"][k][order], target=ep["command"][k][order],
                        depth=depth, points=points)
    success = meta.get("success")
    logger.log_event(f"episode ended: {'success' if success else 'failure' if success is False else 'not judged'}"
                     f"; {meta.get('dropped_steps', 0)} dropped steps", "INFO" if success else "WARN")
    return len(ep)
