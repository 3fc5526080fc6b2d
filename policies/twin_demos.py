"""Scripted demonstrations on the MuJoCo twin, for a checkpoint that ``make sim`` can run
before any teleoperated demo exists.

Each episode resets the twin with a seed (a new object placement), plans the scripted
reach-grasp-lift cycle of :mod:`robot_runtime.control.demo_motion` toward the object, and
drives the twin with it in process through the controllers' shield
(:class:`robot_runtime.twin.drive.ShieldedTwinDrive`). At every policy
step it keeps the measured joints, the depth frame rendered at that instant (through the
one preprocessing path) and the target for the next step.
"""
from __future__ import annotations

import numpy as np

from policies.bc import Episode
from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.demo_motion import ReachGraspScript
from robot_runtime.kinematics import UrdfModel
from robot_runtime.perception.preprocess import VisualPreprocessor, VisualSpec
from robot_runtime.twin.drive import ShieldedTwinDrive


def scripted_episodes(cfg: RuntimeConfig, seeds, visual: VisualSpec, progress: bool = True,
                      keep_depth: bool = False) -> tuple[list[Episode], list[np.ndarray]]:
    """Run one scripted cycle per seed; returns the episodes (and their raw depth [N, H, W] if asked)."""
    from robot_runtime.twin.sim import TwinSimulation  # noqa: PLC0415 - needs mujoco

    sim = TwinSimulation(cfg.twin, cfg.robot)
    model = UrdfModel.from_file(D.description_path(D.URDF_NAME))
    script = ReachGraspScript(model, cfg.robot.arm_home, cfg.robot.hand_home, cfg.robot.hand_mount.xyz,
                              cfg.robot.hand_mount.rpy, cfg.demo.cycle_s, cfg.control.workspace.table_z)
    pre = VisualPreprocessor(visual, sim.camera_pose())
    K = sim.intrinsics()
    period = 1.0 / cfg.rates.policy_hz
    n_steps = int(round(cfg.demo.cycle_s / period))
    episodes, depths = [], []
    seeds = list(seeds)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(seeds), desc="scripted episodes", unit="ep")
    try:
        for seed in seeds:
            poses = sim.reset(cfg.twin.task, int(seed))
            drive = ShieldedTwinDrive(sim, cfg, period)
            graspable = [n for n in sim.active_objects if n != "bowl"] or list(sim.active_objects)
            script.plan(sim.arm_state().position, poses[graspable[0]].position)
            qs, acts, vis, raw = [], [], [], []
            for k in range(n_steps):
                t = k * period
                q = np.concatenate([sim.arm_state().position, sim.hand_state().position])
                depth = sim.render_depth()
                qs.append(q)
                vis.append(pre(depth, K, sim.time))
                if keep_depth:
                    raw.append(depth)
                arm_next, hand_next = script.sample(t + period)
                acts.append(np.concatenate([arm_next, hand_next]))
                drive.step(acts[-1])
            episodes.append(Episode(np.array(qs), np.array(acts), np.array(vis)))
            if keep_depth:
                depths.append(np.array(raw))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        sim.close()
    return episodes, depths
