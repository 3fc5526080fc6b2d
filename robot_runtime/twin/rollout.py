"""Episodes on an in-process twin, on the policy grid: scripted demos and policy rollouts alike.

:class:`TwinEpisodeRunner` resets the twin for a task and seed, then at every policy step
``t_k = k / policy_hz``:

1. reads the measured joints and renders the depth frame at ``t_k``;
2. records the step through :class:`~robot_runtime.data.recorder.EpisodeRecorder` (the
   recorder node's own recorder and preprocessing, so a demo made here is the same file
   a teleoperated one is): ``command`` is the target reached at ``t_k``;
3. asks the driver (the scripted expert, or a policy) for the target at ``t_{k+1}``;
4. passes it through the safety shield (:func:`~robot_runtime.control.safety.shield_step`,
   the controllers' limits, scaled to one policy period);
5. steps the physics to ``t_{k+1}``, the arm servo target moving linearly from the last
   command to the new one, the hand driven by the hand controller's PD law toward the same
   interpolation.

Demos and rollouts share every step of this, so a policy is evaluated under the execution
its demonstrations were recorded with. It runs faster than real time and needs no ROS.
Success is judged at the end from ground-truth object poses
(:func:`robot_runtime.teleop.scripted.task_success`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig, config_to_dict
from robot_runtime.data.recorder import EpisodeRecorder, RecorderInputs, Stamped
from robot_runtime.perception.preprocess import VisualPreprocessor, VisualSpec
from robot_runtime.errors import TeleopError
from robot_runtime.teleop.scripted import task_objects, task_success
from robot_runtime.twin import scene
from robot_runtime.twin.drive import ShieldedTwinDrive

#: The sites whose centre counts as where the hand is, for :attr:`EpisodeOutcome.closest_m`.
HAND_SITES = D.FINGERTIP_FRAMES

#: A driver: (t since the episode began (s), measured q [23] (rad, driver order), depth [H, W]
#: (m), K [3, 3]) -> the target for the next step [23] (rad, driver order), or None to hold.
Driver = Callable[[float, np.ndarray, np.ndarray, np.ndarray], "np.ndarray | None"]


@dataclass
class EpisodeOutcome:
    """One episode: ``success`` from ground truth, its ``steps``, the saved ``file`` (if recorded),
    how often the driver gave nothing (``holds``) and the shield's interventions by reason.

    For the twin's tasks, ``closest_m`` is the closest the hand came to the object to grasp (m, the
    centre of the four fingertips to the object's frame) and ``lift_m`` the highest the object rose
    above where it started (m): why a rollout failed, at a glance (never reached it, reached it but
    did not hold it, held it but did not lift it).

    For a task with a container (drop, pour), ``carried_m`` is the closest the object came to
    the container's centre, across the table, while it was lifted (2 cm or more above where it
    started), and ``end_m`` how far from that centre it ended (m): carried short of the bowl, or
    carried there and not let go or flung out."""

    task: str
    seed: int
    success: bool
    steps: int
    file: str = ""
    holds: int = 0
    interventions: dict | None = None
    closest_m: float | None = None
    lift_m: float | None = None
    carried_m: float | None = None
    end_m: float | None = None

#: An object this far above where it started counts as lifted, for :attr:`EpisodeOutcome.carried_m` (m).
LIFTED_M = 0.02


class TwinEpisodeRunner:
    """Runs episodes on one in-process :class:`~robot_runtime.twin.sim.TwinSimulation`.

    Args:
        cfg: the runtime config (twin, rates, control limits and hand gains).
        visual: the policy input recorded with each step (a checkpoint's ``schema.visual``).
        out_dir: where episodes are saved (None: nothing is recorded).
        source: stored in each episode's metadata (``{"kind": ..., ...}``).
        stamp0: the first step's stamp of every episode (s, epoch) instead of the wall clock at
            its start. A recorded cloud's points are drawn seeded by the frame's stamp
            (:func:`robot_runtime.perception.preprocess.frame_seed`), so with it a seed's
            episode is recorded the same every time (None: stamps from the wall clock).
    """

    def __init__(self, cfg: RuntimeConfig, visual: VisualSpec, out_dir=None, source: dict | None = None,
                 stamp0: float | None = None):
        from robot_runtime.twin.sim import TwinSimulation  # noqa: PLC0415 - needs mujoco

        self.cfg = cfg
        self.stamp0 = stamp0
        self.sim = TwinSimulation(cfg.twin, cfg.robot)
        self.period = 1.0 / cfg.rates.policy_hz
        self.drive = ShieldedTwinDrive(self.sim, cfg, self.period)
        self.K = self.sim.intrinsics()
        T_cam = self.sim.camera_pose()
        self.recorder = None
        if out_dir is not None:
            static = {"joint_names": list(D.ALL_JOINTS), "proprio_joint_names": list(D.ALL_JOINTS),
                      "config": config_to_dict(cfg), "calibration": {"T_base_camera": np.asarray(T_cam).tolist()},
                      "source": {"in_process_twin": True, **(source or {})}}
            self.recorder = EpisodeRecorder(Path(out_dir), cfg.rates.policy_hz, VisualPreprocessor(visual, T_cam),
                                            np.arange(len(D.ALL_JOINTS)), static, cfg.recorder.depth_stride,
                                            min_free_mb=cfg.recorder.min_free_mb, max_episode_s=cfg.recorder.max_episode_s,
                                            max_frame_age_s=self.period, max_state_age_s=self.period)

    def close(self) -> None:
        self.sim.close()

    def poses(self) -> dict:
        return {k: (v.position, v.quaternion) for k, v in self.sim.object_poses().items()}

    def measured(self) -> np.ndarray:
        return self.drive.measured()

    def run(self, task: str, seed: int, driver: Driver, duration_s: "float | Callable[[], float]", note: str = "",
            on_reset: Callable[[dict, np.ndarray], None] | None = None, scene: str | None = None,
            judge: Callable[[dict, dict], bool] | None = None) -> EpisodeOutcome:
        """One episode of ``duration_s`` (s; or a function read after ``on_reset``) on ``task``
        with object placement ``seed``.

        ``on_reset(start_poses, q)`` is called after the reset (an expert plans there). The twin
        is set up for ``scene`` (default: ``task``); success is ``judge(start_poses, end_poses)``
        (default: the task's own check).
        """
        sim = self.sim
        sim.reset(scene or task, seed)
        start = self.poses()
        q0 = self.measured()
        if on_reset is not None:
            on_reset(start, q0)
        self.drive.reset()
        wall0 = time.time() if self.stamp0 is None else self.stamp0
        if self.recorder is not None:
            self.recorder.start(task, note, {"seed": int(seed), "in_process_twin": True}, now=wall0)
        n_steps = int(round((duration_s() if callable(duration_s) else duration_s) / self.period))
        holds, interventions = 0, {}
        try:
            obj, container = task_objects(task, sim.active_objects)
        except TeleopError:   # not one of the twin's tasks (an interaction): no reach figures
            obj = container = None
        closest, lift, carried = np.inf, -np.inf, np.inf
        try:
            for k in range(n_steps):
                t = k * self.period
                q = self.measured()
                depth = sim.render_depth()
                cmd = self.drive.command
                if self.recorder is not None:
                    stamp = wall0 + t
                    self.recorder.tick(stamp, RecorderInputs(Stamped(stamp, depth), self.K, Stamped(stamp, q[:7]),
                                                             Stamped(stamp, q[7:]), Stamped(stamp, cmd[:7]),
                                                             Stamped(stamp, cmd[7:])), now=time.time())
                target = driver(t, q, depth, self.K)
                if target is None:
                    holds += 1
                    target = self.drive.command
                for r in self.drive.step(target):
                    interventions[r] = interventions.get(r, 0) + 1
                if obj is not None:
                    poses = sim.object_poses()
                    p_obj = np.asarray(poses[obj].position)
                    hand_at = np.mean([sim.site_position(n) for n in HAND_SITES], axis=0)
                    closest = min(closest, float(np.linalg.norm(hand_at - p_obj)))
                    lift = max(lift, float(p_obj[2] - start[obj][0][2]))
                    if container is not None and p_obj[2] - start[obj][0][2] >= LIFTED_M:
                        carried = min(carried, _across(p_obj, poses[container].position))
        except BaseException:
            if self.recorder is not None and self.recorder.recording:
                self.recorder.stop(None, discard=True)
            raise
        end = self.poses()
        success = judge(start, end) if judge is not None else task_success(task, sim.active_objects, start, end)
        file = ""
        if self.recorder is not None:
            file = str(self.recorder.stop(success, now=time.time()))
        figures = {} if obj is None else {"closest_m": round(closest, 4), "lift_m": round(lift, 4)}
        if container is not None:
            figures["carried_m"] = round(carried, 4) if np.isfinite(carried) else None
            figures["end_m"] = round(_across(end[obj][0], end[container][0]), 4)
        return EpisodeOutcome(task, int(seed), success, n_steps, file, holds, interventions, **figures)


def _across(a, b) -> float:
    """Distance of two points across the table (m, in the horizontal plane)."""
    return float(np.linalg.norm(np.asarray(a, float)[:2] - np.asarray(b, float)[:2]))


def make_expert(cfg: RuntimeConfig):
    """The scripted expert with the robot of ``cfg``."""
    from robot_runtime.kinematics import UrdfModel  # noqa: PLC0415
    from robot_runtime.teleop.scripted import ScriptedExpert  # noqa: PLC0415

    r = cfg.robot
    return ScriptedExpert(UrdfModel.from_file(D.description_path(D.URDF_NAME)), r.hand_mount.xyz, r.hand_mount.rpy,
                          r.hand_home, r.arm_home, cfg.control.workspace.table_z)


def _follow_plan(runner: TwinEpisodeRunner, expert) -> Driver:
    """A driver playing the expert's plan: the target for the next policy step."""
    return lambda t, q, depth, K: expert.sample(t + runner.period)[0]


def expert_episode(runner: TwinEpisodeRunner, expert, task: str, seed: int, settle_s: float = 0.5) -> EpisodeOutcome:
    """One scripted-expert demonstration (its plan, then ``settle_s``), recorded if the runner records."""
    def plan(start: dict, q: np.ndarray) -> None:
        expert.plan(task, start, runner.sim.active_objects, q, np.random.default_rng(seed))

    return runner.run(task, seed, _follow_plan(runner, expert), lambda: expert.duration + settle_s, note=f"scripted expert, seed {seed}",
                      on_reset=plan)


#: The task a task-agnostic interaction episode is recorded under.
INTERACTION = "interaction"
#: The twin scenes interactions are played in, by seed: the grasp & lift objects one at a time,
#: or two objects drawn at random (:data:`robot_runtime.twin.scene.INTERACTION_SCENE`).
INTERACTION_SCENES = ("grasp_lift", scene.INTERACTION_SCENE, scene.INTERACTION_SCENE)
#: An interaction succeeded when its object ends this far (m) from where it started.
INTERACTION_MOVED_M = 0.05


def interaction_rng(seed: int) -> np.random.Generator:
    """The generator of interaction ``seed``'s scene and plan: a stream apart from the one the
    twin places the objects from (:meth:`TwinSimulation.reset` uses ``default_rng(seed)``)."""
    return np.random.default_rng([int(seed), 1])


def interaction_episode(runner: TwinEpisodeRunner, expert, seed: int, settle_s: float = 0.5) -> EpisodeOutcome:
    """One task-agnostic scripted interaction (:meth:`ScriptedExpert.plan_interaction`): grasp an
    object, move it somewhere at random, let go or hold. Recorded under the task ``interaction``;
    it succeeds when the object was moved (:data:`INTERACTION_MOVED_M`)."""
    # not default_rng(seed): the twin places the objects from that stream, and the same first
    # draws here chose the scene and the object to take from the placement's draws (every lift
    # scene had the can or the ball, no interaction took the cube)
    rng = interaction_rng(seed)
    setting = INTERACTION_SCENES[int(rng.integers(len(INTERACTION_SCENES)))]

    def plan(start: dict, q: np.ndarray) -> None:
        expert.plan_interaction(start, runner.sim.active_objects, q, rng)

    def moved(start: dict, end: dict) -> bool:
        obj = expert.grasped
        return bool(np.linalg.norm(np.asarray(end[obj][0]) - np.asarray(start[obj][0])) > INTERACTION_MOVED_M)

    return runner.run(INTERACTION, seed, _follow_plan(runner, expert), lambda: expert.duration + settle_s,
                      note=f"scripted interaction, seed {seed}", on_reset=plan, scene=setting, judge=moved)


def record_scripted_demos(cfg: RuntimeConfig, task: str, seeds, out_dir, visual: VisualSpec,
                          progress: bool = True, stamp0: float | None = None) -> list[EpisodeOutcome]:
    """Record one scripted-expert episode per seed into ``out_dir`` (failures are saved flagged).

    ``task`` is one of the twin's tasks, or ``interaction`` for task-agnostic interactions
    (:func:`interaction_episode`), the data a prior is pretrained on. ``stamp0``: see
    :class:`TwinEpisodeRunner` (the same demos every time).
    """
    runner = TwinEpisodeRunner(cfg, visual, out_dir, {"kind": "scripted_expert"}, stamp0=stamp0)
    expert = make_expert(cfg)
    out = []
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(list(seeds)), desc=f"demos {task}", unit="ep")
    try:
        for seed in seeds:
            if task == INTERACTION:
                out.append(interaction_episode(runner, expert, int(seed)))
            else:
                out.append(expert_episode(runner, expert, task, int(seed)))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(ok=sum(o.success for o in out))
    finally:
        if bar is not None:
            bar.close()
        runner.close()
    return out


def map_seed_chunks(fn, seeds: list[int], workers: int, largest: int, job):
    """Run ``fn(job(chunk))`` for chunks of ``seeds`` in ``workers`` spawned processes; yields each
    chunk's result in seed order. Chunks hold up to ``largest`` seeds, and are small enough that
    every worker gets at least two (so a slow one does not leave the others idle at the end)."""
    import multiprocessing as mp  # noqa: PLC0415
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415

    size = max(1, min(largest, len(seeds) // (2 * workers)))
    chunks = [seeds[i:i + size] for i in range(0, len(seeds), size)]
    with ProcessPoolExecutor(workers, mp.get_context("spawn")) as pool:
        yield from pool.map(fn, [job(c) for c in chunks])


def _record_chunk(args) -> list[EpisodeOutcome]:
    cfg, task, seeds, out_dir, visual = args
    return record_scripted_demos(cfg, task, seeds, out_dir, visual, progress=False)


def record_scripted_demos_parallel(cfg: RuntimeConfig, task: str, seeds, out_dir, visual: VisualSpec,
                                   workers: int = 2, progress: bool = True) -> list[EpisodeOutcome]:
    """:func:`record_scripted_demos` split over ``workers`` processes (each twin renders on its own
    core) in batches of up to 8 seeds, each batch written into its own ``out_dir/seeds_<first seed>``;
    the outcomes come back in seed order."""
    seeds = [int(s) for s in seeds]
    workers = max(1, min(workers, len(seeds)))
    if workers == 1:
        return record_scripted_demos(cfg, task, seeds, out_dir, visual, progress)
    bar = None
    if progress:
        from tqdm import tqdm  # noqa: PLC0415
        bar = tqdm(total=len(seeds), desc=f"demos {task} ({workers} processes)", unit="ep")
    out: list[EpisodeOutcome] = []
    try:
        for res in map_seed_chunks(_record_chunk, seeds, workers, 8,
                                   lambda c: (cfg, task, c, Path(out_dir) / f"seeds_{c[0]}", visual)):
            out += res
            if bar is not None:
                bar.update(len(res))
                bar.set_postfix(ok=sum(o.success for o in out))
    finally:
        if bar is not None:
            bar.close()
    return sorted(out, key=lambda o: o.seed)


def play_in_twin(sim, expert, task: str, seed: int, cfg: RuntimeConfig) -> bool:
    """Plan one episode with the scripted ``expert`` and play it on an in-process twin, faster than
    real time and without ROS, through :class:`ShieldedTwinDrive` at the policy's rate (the
    expert's targets for the end of each period, as :func:`scripted_driver` gives them).

    Returns whether the task is solved at the end (:func:`task_success`).
    """
    def poses() -> dict:
        return {k: (v.position, v.quaternion) for k, v in sim.object_poses().items()}
    sim.reset(task, seed)
    start = poses()
    period = 1.0 / cfg.rates.policy_hz
    drive = ShieldedTwinDrive(sim, cfg, period)
    expert.plan(task, start, sim.active_objects, drive.measured(), np.random.default_rng(seed))
    for k in range(int(np.ceil((expert.duration + 0.2) / period))):
        drive.step(expert.sample((k + 1) * period)[0])
    return task_success(task, sim.active_objects, start, poses())
