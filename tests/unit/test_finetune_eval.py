"""Finetuning (loss, resume, provenance, bad datasets) and twin evaluation, without ROS.

The tiny dataset is made by the recorder itself (EpisodeRecorder), from a smooth joint
trajectory and depth images whose content follows it, at a small depth resolution so a
training step takes milliseconds.
"""
import os
import json

import numpy as np
import pytest
import torch

from policies.checkpoint import META_FILE, load_checkpoint
from policies.errors import CheckpointError
from policies.evaluate import evaluate, target_error, wilson_interval
from policies.finetune import STATE_FILE, FinetuneConfig, FinetuneError, FinetuneJob, split_by_episode
from robot_runtime import description as D
from robot_runtime.data.episode_file import SUFFIX
from robot_runtime.data.recorder import EpisodeRecorder, RecorderInputs, Stamped
from robot_runtime.errors import EpisodeFileError
from robot_runtime.perception.preprocess import DepthPreprocess, VisualPreprocessor, VisualSpec

SPEC = VisualSpec("depth", depth=DepthPreprocess(near=0.3, far=1.6, height=24, width=32))
HOME = np.array(D.ARM_HOME + D.HAND_HOME)
K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])


def write_episodes(folder, n=4, steps=40, success=True, joint_names=None, seed=0, spec=None):
    spec = spec or SPEC
    cloud = spec.kind == "pointcloud"
    # for a point-cloud spec the camera sits 0.4 m above a point in front of the robot, so the
    # scene (0.6-0.9 m away) lands inside the crop box
    T = np.array([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, -0.4], [0, 0, 0, 1]]) if cloud else np.eye(4)
    rec = EpisodeRecorder(folder, 20.0, VisualPreprocessor(spec, T), np.arange(23),
                          {"joint_names": list(joint_names or D.ALL_JOINTS)}, min_free_mb=1)
    rng = np.random.default_rng(seed)
    files = []
    for e in range(n):
        t0 = 100.0 * (e + 1)
        rec.start("grasp_lift", now=t0)
        direction = rng.normal(0, 0.3, 23)
        for k in range(steps):
            t = t0 + 0.05 * k
            s = k / steps
            q = HOME + s * direction
            depth = np.full((60, 80), 0.6 + 0.3 * s if cloud else 0.5 + s, np.float32)   # it moves with the joints
            depth[:, : int(10 + 60 * s)] = 1.4
            cmd = HOME + (k + 1) / steps * direction
            rec.tick(t, RecorderInputs(Stamped(t, depth), K, Stamped(t, q[:7]), Stamped(t, q[7:]),
                                       Stamped(t, cmd[:7]), Stamped(t, cmd[7:])), now=t)
        files.append(rec.stop(success, now=t0 + 10))
    return files


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demos")
    write_episodes(folder)
    return folder


def _cfg(**kw):
    base = dict(steps=30, batch=16, lr=1e-3, save_every=10, seed=0, threads=1, nice=0)
    return FinetuneConfig(**{**base, **kw})


def test_a_few_finetuning_steps_lower_the_loss(demos, tmp_path):
    # HOP's representation: these synthetic episodes each move in a random direction, so the held-out
    # one is outside the training episodes' statistics, and only limit scaling makes their losses compare
    res = FinetuneJob(demos, tmp_path / "ft", None, _cfg(steps=40, representation="hop")).run(bar=False)
    losses = torch.load(tmp_path / "ft" / STATE_FILE, weights_only=False)["losses"]
    assert len(losses) == 40 and np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10]), losses
    vals = json.loads((res.checkpoint / META_FILE).read_text())["provenance"]["val_history"]
    assert vals[-1][1] < vals[0][1]   # held-out episode loss falls too


def test_resume_continues_from_the_saved_step_exactly(demos, tmp_path):
    # a constant learning rate and the last weights: a 10-step job stands in for one interrupted at
    # step 10 (a schedule over the job's length, or a pick of the best step, would differ by design)
    def cfg(steps):
        return _cfg(steps=steps, cosine=False, warmup=0, eval_every=0)
    whole = FinetuneJob(demos, tmp_path / "whole", None, cfg(20)).run(bar=False)
    FinetuneJob(demos, tmp_path / "cut", None, cfg(10)).run(bar=False)   # "interrupted" at step 10
    with pytest.raises(FinetuneError, match="--resume"):
        FinetuneJob(demos, tmp_path / "cut", None, cfg(20)).run(bar=False)
    resumed = FinetuneJob(demos, tmp_path / "cut", None, cfg(20), resume=True).run(bar=False)
    a = torch.load(tmp_path / "whole" / STATE_FILE, weights_only=True)
    b = torch.load(tmp_path / "cut" / STATE_FILE, weights_only=True)
    assert b["step"] == 20 and np.allclose(a["losses"], b["losses"])   # steps 11-20 continue the same run
    wa, wb = load_checkpoint(whole.checkpoint).state, load_checkpoint(resumed.checkpoint).state
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    with pytest.raises(FinetuneError, match="different job"):
        FinetuneJob(demos, tmp_path / "cut", None, _cfg(steps=30, lr=5e-4), resume=True).run(bar=False)
    with pytest.raises(FinetuneError, match="nothing to resume"):
        FinetuneJob(demos, tmp_path / "new", None, _cfg(), resume=True).run(bar=False)


class _RunsCode:
    """Pickled, it calls a function when unpickled: what torch.load(weights_only=False) would run."""

    def __reduce__(self):
        return (os.makedirs, (str(_RunsCode.marker),))


def test_a_train_state_that_carries_code_is_refused_not_run(demos, tmp_path):
    """--resume loads the train state in the output folder, which finetune_node's peers can name."""
    FinetuneJob(demos, tmp_path / "job", None, _cfg(steps=10)).run(bar=False)
    st = torch.load(tmp_path / "job" / STATE_FILE, weights_only=True)
    _RunsCode.marker = tmp_path / "ran"
    st["identity"] = _RunsCode()
    torch.save(st, tmp_path / "job" / STATE_FILE)
    with pytest.raises(FinetuneError, match="cannot be loaded safely|can load safely"):
        FinetuneJob(demos, tmp_path / "job", None, _cfg(steps=20), resume=True).run(bar=False)
    assert not _RunsCode.marker.exists()


def test_provenance_is_complete_and_interval_checkpoints_are_kept(demos, tmp_path):
    base = FinetuneJob(demos, tmp_path / "base", None, _cfg(steps=10, noise_arm=0.003, noise_hand=0.01)
                       ).run(bar=False).checkpoint
    job = FinetuneJob(demos, tmp_path / "ft", base, _cfg(steps=30, noise_arm=0.02, noise_hand=0.1))
    res = job.run(bar=False)
    ck = load_checkpoint(res.checkpoint)
    # the job's noise, not the base's, is what it trained with and what its checkpoint says
    assert load_checkpoint(base).schema.action.proprio_noise == {"arm": 0.003, "hand": 0.01}
    assert ck.schema.action.proprio_noise == {"arm": 0.02, "hand": 0.1}
    from policies.bc import WindowSampler
    from robot_runtime import description as D

    sampler = WindowSampler(job.train_eps, job.schema, D.ALL_JOINTS)
    np.testing.assert_allclose(sampler.noise * job.schema.action.proprio_std, [0.02] * 7 + [0.1] * 16, rtol=1e-6)
    p = ck.provenance
    assert p["base"]["sha256"] == load_checkpoint(base).sha256 and p["base"]["path"] == str(base)
    files = sorted(str(f) for f in demos.glob(f"*{SUFFIX}"))
    assert sorted(e["file"] for e in p["episodes"]) == files
    assert {e["split"] for e in p["episodes"]} == {"train", "val"} and all(len(e["sha256"]) == 64 for e in p["episodes"])
    assert p["hyperparameters"]["lr"] == 1e-3 and p["hyperparameters"]["weight_decay"] == 0.01
    assert p["hyperparameters"]["grad_clip"] == 0.25 and p["hyperparameters"]["proprio_noise"] == 0.1
    assert p["step"] == 30 and p["val_loss"] > 0 and p["train_loss"] > 0 and p["code_version"]
    assert p["device"].startswith("cpu") and p["train_s"] > 0
    assert ck.onnx, "the final checkpoint carries its ONNX files, so a hot-swap needs no export"
    kept = sorted(d.name for d in (tmp_path / "ft").glob("step_*"))
    assert kept == ["step_000010", "step_000020"]
    assert load_checkpoint(tmp_path / "ft" / "step_000020").provenance["step"] == 20
    assert (tmp_path / "ft" / "loss.png").stat().st_size > 5_000     # the loss curve, as a picture


def test_the_checkpoint_holds_the_weights_the_keep_rule_names(demos, tmp_path):
    """keep='lowest_error': the weights of the check with the least held-out open-loop error;
    keep='last': the EMA's last weights, whatever the checks said."""
    runs = {}
    for keep in ("lowest_error", "last"):
        res = FinetuneJob(demos, tmp_path / keep, None, _cfg(steps=30, eval_every=5, keep=keep)).run(bar=False)
        runs[keep] = (load_checkpoint(res.checkpoint), torch.load(tmp_path / keep / STATE_FILE, weights_only=True))
    ck, st = runs["last"]
    sel = ck.provenance["selected"]
    assert sel["step"] == 30 and sel["by"] == "the last weights (the EMA's)"
    assert sel["open_loop_error_rad"] == pytest.approx(ck.provenance["open_loop_history"][-1][1])
    assert all(torch.equal(ck.state[k], st["ema"][k].cpu()) for k in ck.state)
    ck, st = runs["lowest_error"]
    history = ck.provenance["open_loop_history"]
    assert [h[0] for h in history] == [5, 10, 15, 20, 25, 30]
    best = min((h for h in history if h[0] >= 15), key=lambda h: h[1])   # select_after 0.5 of 30 steps
    assert ck.provenance["selected"]["step"] == best[0] == st["best"]["step"]
    assert all(torch.equal(ck.state[k], st["best"]["state"][k].cpu()) for k in ck.state)
    with pytest.raises(FinetuneError, match="keep 'newest'"):
        FinetuneJob(demos, tmp_path / "bad", None, _cfg(keep="newest"))
    with pytest.raises(FinetuneError, match="select_after 1.5"):
        FinetuneJob(demos, tmp_path / "bad", None, _cfg(select_after=1.5))
    with pytest.raises(FinetuneError, match="precision 'fp16'"):
        FinetuneJob(demos, tmp_path / "bad", None, _cfg(precision="fp16"))
    assert ck.provenance["device"].endswith(("fp32", "bf16"))


def test_bad_datasets_give_clear_errors(demos, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FinetuneError, match="no episode files"):
        FinetuneJob(empty, tmp_path / "o1", None, _cfg())
    failed = tmp_path / "failed"
    write_episodes(failed, n=2, steps=5, success=False)
    with pytest.raises(FinetuneError, match="none of the 2 episodes.*successful"):
        FinetuneJob(failed, tmp_path / "o2", None, _cfg())
    reordered = tmp_path / "reordered"
    write_episodes(reordered, n=2, steps=5, joint_names=list(reversed(D.ALL_JOINTS)))
    with pytest.raises(EpisodeFileError, match="joint order"):
        FinetuneJob(reordered, tmp_path / "o3", None, _cfg())
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    bad = corrupt / f"20260101-000000_grasp_lift_0000{SUFFIX}"
    bad.write_bytes(b"PK\x03\x04 not really an episode")
    with pytest.raises(EpisodeFileError, match=bad.name):
        FinetuneJob(corrupt, tmp_path / "o4", None, _cfg())
    other = FinetuneJob(demos, tmp_path / "other", None, _cfg(steps=2)).run(bar=False).checkpoint
    wide = tmp_path / "wide"   # recorded with another preprocessing than the base checkpoint's
    write_episodes(wide, n=2, steps=5, spec=VisualSpec("depth", depth=DepthPreprocess(near=0.3, far=1.6, height=30,
                                                                                     width=40)))
    with pytest.raises(EpisodeFileError, match="preprocessing"):
        FinetuneJob(wide, tmp_path / "o5", other, _cfg())
    with pytest.raises(CheckpointError):
        FinetuneJob(demos, tmp_path / "o6", tmp_path / "no_such_checkpoint", _cfg())


def test_split_is_by_whole_episode():
    files = [f"e{i}" for i in range(10)]
    train, val = split_by_episode(files, 0.2, seed=3)
    assert len(val) == 2 and not set(train) & set(val) and sorted(train + val) == sorted(files)
    assert split_by_episode(["only"], 0.2, 0) == (["only"], [])


def test_wilson_interval():
    lo, hi = wilson_interval(16, 20)
    assert lo == pytest.approx(0.584, abs=2e-3) and hi == pytest.approx(0.919, abs=2e-3)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0


def test_eval_runs_saves_and_judges_rollouts_on_the_twin(tmp_path):
    from pathlib import Path

    from robot_runtime.config import load_config
    from robot_runtime.data.episode_file import load_episode

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    rep = evaluate(cfg, cfg.policy.checkpoint, "grasp_lift", 2, seed0=5, out_dir=tmp_path, duration_s=1.5,
                   progress=False)
    assert len(rep.rollouts) == 2 and rep.successes == 0   # nothing is lifted in 1.5 s
    lo, hi = rep.interval
    assert lo == 0.0 and 0.5 < hi < 0.9
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["n"] == 2 and saved["rate"] == 0.0 and [r["seed"] for r in saved["rollouts"]] == [5, 6]
    for r in rep.rollouts:
        ep = load_episode(r.file)
        assert len(ep) == 30 and ep.meta["success"] is False and ep.meta["seed"] == r.seed
        assert ep.meta["source"]["kind"] == "policy_rollout"
        # the policy acted: the shielded commands moved away from the start
        assert np.abs(ep["command"][-1] - ep["command"][0]).max() > 1e-3


def test_target_error_falls_as_the_network_fits_the_demos(demos, tmp_path):
    few = FinetuneJob(demos, tmp_path / "few", None, _cfg(steps=2)).run(bar=False).checkpoint
    more = FinetuneJob(demos, tmp_path / "more", None, _cfg(steps=60)).run(bar=False).checkpoint
    a, b = target_error(few, demos), target_error(more, demos)
    assert len(a["target_error_rad"]) == 7 and len(a["demo_step_rad"]) == 7 and a["windows"] > 0
    assert np.mean(b["target_error_rad"]) < np.mean(a["target_error_rad"])
    assert a["demo_step_rad"] == b["demo_step_rad"] and min(a["demo_step_rad"]) > 0


def test_mirror_trains_on_each_demo_and_its_mirror_image(demos, tmp_path):
    """``mirror``: the job trains on every training demo and its mirror image, fits the action
    representation on both (so the mirrored joints' mean posture is the symmetric one), and refuses
    input that cannot be mirrored."""
    from robot_runtime.perception.preprocess import PointCloudPreprocess   # noqa: PLC0415

    clouds = tmp_path / "clouds"
    write_episodes(clouds, n=3, steps=20, spec=VisualSpec("pointcloud", points=PointCloudPreprocess(num_points=32)))
    job = FinetuneJob(clouds, tmp_path / "ft", None, _cfg(steps=4, mirror=True, eval_every=0))
    assert len(job.mirrored_eps) == len(job.train_eps) == 2
    mean = job.schema.action.proprio_mean
    idx = job.schema.index_in(D.ALL_JOINTS)
    for name in ("joint1", "joint3", "joint5", "joint7"):        # D.ARM_HOME has them all at 0
        assert abs(mean[list(idx).index(D.ALL_JOINTS.index(name))]) < 1e-9, name
    j2 = D.ALL_JOINTS.index("joint2")                                 # not mirrored: the demos' own mean
    np.testing.assert_allclose(mean[list(idx).index(j2)], np.concatenate([e.q[:, j2] for e in job.train_eps]).mean())
    assert job.run(bar=False).steps == 4
    with pytest.raises(FinetuneError, match="mirror: needs point-cloud input"):
        FinetuneJob(demos, tmp_path / "ft2", None, _cfg(mirror=True))


def test_a_jobs_paths_from_a_peer_stay_inside_the_configured_folders(tmp_path):
    """finetune_node's parameters: any DDS peer can set them. No value becomes an option
    (``--resume`` reached torch.load on a file the peer chose) and no path leads out."""
    from policies.finetune import job_paths

    eps, ck, shipped = tmp_path / "episodes", tmp_path / "runs", tmp_path / "shipped"
    for d in (eps / "lift", ck, shipped / "prior"):
        d.mkdir(parents=True)
    roots = {"episode_root": eps, "out_root": ck, "base_roots": [ck, shipped]}
    srcs, out, base = job_paths(["lift", str(eps / "lift")], "new", str(shipped / "prior"), **roots)
    assert srcs == [str(eps / "lift")] * 2 and out == str(ck / "new") and base == str(shipped / "prior")
    assert job_paths(["lift"], "new", "", **roots)[2] == ""
    for episodes, out, base, words in (
            (["--resume"], "new", "", "episodes '--resume': not a path"),
            (["lift"], "--resume", "", "out '--resume': not a path"),
            (["../../etc"], "new", "", "outside"),
            (["lift"], "/tmp", "", "outside"),
            (["lift"], "../episodes/lift", "", "outside"),
            (["lift"], "new", "/", "outside"),
            ([str(eps) + "/../x"], "new", "", "outside")):
        with pytest.raises(FinetuneError, match=words):
            job_paths(episodes, out, base, **roots)


def test_the_follower_reads_a_job_to_its_end_whatever_its_lines_hold(tmp_path):
    """A progress line that is JSON but not an object raised in the follower thread, which then
    stopped reading: the job blocked on a full pipe and the status stayed 'running'."""
    import sys

    from policies.finetune import FinetuneSubprocess

    script = tmp_path / "job.py"
    script.write_text("import json\n"
                      "print('PROGRESS 5'); print('PROGRESS [1, 2]'); print('PROGRESS {bad')\n"
                      "print('PROGRESS ' + json.dumps({'step': 3, 'steps': 9, 'state': 'done', 'checkpoint': '/x'}))\n"
                      "print('x' * 100000)\n" * 3)
    import subprocess

    seen = []
    job = FinetuneSubprocess(lambda st: seen.append(st))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job._proc = proc
    job._follow(proc)   # the thread's body, run here to its end
    assert proc.poll() == 0
    last = seen[-1]
    assert last["state"] == "done" and last["step"] == 3 and last.get("checkpoint") is None, last


def test_an_episode_set_larger_than_the_cache_trains_as_one_held_in_memory(demos, tmp_path):
    """With a visual cache holding two of the five training episodes, each is read from its file
    when a batch needs it (and ahead): the job trains to the same weights as with every episode
    in memory, and the cache stays within its bound."""
    held = FinetuneJob(demos, tmp_path / "held", None, _cfg(steps=12, eval_every=0)).run(bar=False)
    job = FinetuneJob(demos, tmp_path / "lazy", None, _cfg(steps=12, eval_every=0, cache_mb=0.3))
    per_episode = 40 * int(np.prod(SPEC.shape)) * 4
    lazy = job.run(bar=False)
    wa, wb = load_checkpoint(held.checkpoint).state, load_checkpoint(lazy.checkpoint).state
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = job.cache
    assert 0.3e6 < len(job.train_eps) * per_episode   # a bound below the set
    assert c.loads >= len(job.train_eps) and c.misses < c.loads   # read from the files, mostly ahead
    with pytest.raises(FinetuneError, match="mirror need the episodes in memory"):
        FinetuneJob(demos, tmp_path / "m", None, _cfg(cache_mb=1, mirror=True))


def test_the_visual_cache_keeps_its_bound_reads_ahead_and_names_a_bad_file(demos, tmp_path):
    from robot_runtime.data.dataset import episode_files
    from robot_runtime.data.episode_store import LazyVisual, VisualCache, read_member

    files = [str(f) for f in episode_files(demos)]
    assert len(files) >= 4
    one = read_member(files[0], "visual").nbytes
    cache = VisualCache(int(2.5 * one), pinned_calls=1)
    f0, f1, f2, f3 = files[:4]
    try:
        cache.prefetch([f0])                             # the next batch's episode: read ahead, pinned
        assert np.array_equal(LazyVisual(f0, 40, cache)[3], read_member(f0, "visual")[3])
        assert cache.misses == 0 and cache.loads == 1   # it was read ahead, not waited for as a miss
        cache.get(f1)
        cache.get(f2)                                    # over the bound: the oldest unpinned goes
        assert list(cache._items) == [f0, f2] and cache.bytes <= 2.5 * one and cache.misses == 2
        cache.prefetch([f3])                             # a new batch: the old pin lapses
        cache.get(f3)
        assert list(cache._items) == [f2, f3] and cache.loads == 4
        bad = tmp_path / "bad.episode.npz"
        bad.write_bytes(b"not a zip")
        with pytest.raises(EpisodeFileError, match="bad.episode.npz"):
            cache.get(str(bad))
    finally:
        cache.close()


def test_the_expert_drives_until_the_handover_phase_and_the_policy_from_there(tmp_path):
    """Rung 6 of the diagnostics: the scripted expert plans the placement and drives until the
    phase begins (its own targets, step for step), the policy from there (targets of its own);
    an unknown phase is named with the plan's phases."""
    from pathlib import Path

    from robot_runtime.config import load_config
    from robot_runtime.data.episode_file import load_episode
    from robot_runtime.twin.rollout import TwinEpisodeRunner, make_expert

    cfg = load_config(Path(__file__).parents[2] / "config" / "sim.yaml")
    rep = evaluate(cfg, cfg.policy.checkpoint, "grasp_lift", 1, seed0=10_000, out_dir=tmp_path, progress=False,
                   expert_until="hold")
    assert rep.successes == 1 and rep.extra == {"expert_until": "hold"}   # the expert lifted it; the policy held it
    ep = load_episode(rep.rollouts[0].file)
    assert ep.meta["source"]["expert_until"] == "hold"
    # the plan the expert made for this placement, and where its last phase begins
    tw = TwinEpisodeRunner(cfg, load_checkpoint(cfg.policy.checkpoint).schema.visual)
    try:
        expert = make_expert(cfg)
        start = tw.sim.reset("grasp_lift", 10_000)
        expert.plan("grasp_lift", {k: (v.position, v.quaternion) for k, v in start.items()}, tw.sim.active_objects,
                    tw.measured(), np.random.default_rng(10_000))
    finally:
        tw.close()
    period = 1.0 / cfg.rates.policy_hz
    handover = int(round(expert.waypoints[-2].t / period))
    plan = np.stack([expert.sample(k * period)[0] for k in range(len(ep))])
    cmd = np.asarray(ep["command"], float)
    assert np.abs(cmd[1:handover] - plan[1:handover]).max() < 1e-6
    assert np.abs(cmd[handover + 2:] - plan[handover + 2:]).max() > 1e-4
    with pytest.raises(ValueError, match="no_such_phase.*descend"):
        evaluate(cfg, cfg.policy.checkpoint, "grasp_lift", 1, seed0=10_000, progress=False, expert_until="no_such_phase")


def test_a_hand_view_added_to_a_base_starts_as_the_base_and_runs_in_the_loaded_policy(demos, tmp_path):
    """``hand_view``: a job from a base without one starts with the base's targets, trains the
    view's embedding, saves it in the checkpoint, and the runtime builds the view from the joints
    measured with each frame; input it cannot apply to is refused, naming the key."""
    from policies.bc import open_loop_error   # noqa: PLC0415
    from policies.closed_loop import Frame, LiveRobot, LoadedPolicy   # noqa: PLC0415
    from policies.runners import make_runner   # noqa: PLC0415
    from robot_runtime.perception.preprocess import PointCloudPreprocess   # noqa: PLC0415

    clouds = tmp_path / "clouds"
    write_episodes(clouds, n=3, steps=20, spec=VisualSpec("pointcloud", points=PointCloudPreprocess(num_points=32)))
    base = FinetuneJob(clouds, tmp_path / "base", None, _cfg(steps=4, eval_every=0)).run(bar=False).checkpoint
    job = FinetuneJob(clouds, tmp_path / "ft", base, _cfg(steps=6, eval_every=0, hand_view=(2, 8), freeze_encoder=True))
    before = load_checkpoint(base).build_model()
    errs = [open_loop_error(m, job.schema, job.train_eps, D.ALL_JOINTS, every=5)["chunk"]
            for m in (before, job._initial_model().eval())]
    assert errs[0] == pytest.approx(errs[1], abs=1e-6)
    ck = load_checkpoint(job.run(bar=False).checkpoint)
    assert ck.arch.hand_view == (2, 8) and ck.arch.embedding_dim == ck.arch.hidden + 6
    assert float(ck.state["embed_hand.2.weight"].abs().max()) > 0.0        # trained from zero
    T = np.array([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, -0.4], [0, 0, 0, 1]])   # write_episodes' camera
    policy = LoadedPolicy(ck, make_runner("onnxruntime", ck), LiveRobot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0, T))
    depth = np.full((60, 80), 0.75, np.float32)
    depth[:, :40] = 1.4
    frame, moved = Frame(depth, K, 1.0, 1), HOME.copy()
    moved[1] += 0.4
    (vis, e0), (_, e1) = policy.encode(frame, HOME), policy.encode(frame, moved)
    assert vis.shape == (32, 3) and e0.shape == (ck.arch.embedding_dim,)
    np.testing.assert_allclose(e0[:ck.arch.hidden], e1[:ck.arch.hidden], atol=1e-5)   # the scene's token
    assert np.abs(e0[ck.arch.hidden:] - e1[ck.arch.hidden:]).max() > 0.1               # the hand's view moved
    with pytest.raises(FinetuneError, match="hand_view"):
        FinetuneJob(demos, tmp_path / "d", None, _cfg(hand_view=(2,)))
    with pytest.raises(FinetuneError, match="hand_view .*has another"):
        FinetuneJob(clouds, tmp_path / "o", ck.path, _cfg(hand_view=(4,)))
