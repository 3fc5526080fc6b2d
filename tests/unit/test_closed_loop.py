"""The closed-loop policy without ROS: ticks, skips, padding, input identity with training, hot-swap."""
import threading

import numpy as np
import pytest

from policies.checkpoint import WEIGHTS_FILE
from policies.closed_loop import ClosedLoopPolicy, Frame, LiveRobot, LoadedPolicy
from policies.errors import CheckpointError, PolicyError, SchemaMismatchError
from policies.schema import PolicySchema
from robot_runtime import description as D
from robot_runtime.perception.preprocess import VisualSpec
from tests.policy_fixtures import SMALL_DEPTH, depth_checkpoint

LIVE = LiveRobot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0)
HOME = np.concatenate([D.ARM_HOME, D.HAND_HOME])
K = np.eye(3)


class CountingRunner:
    """A real runner, with its encode calls counted."""

    def __init__(self, runner):
        self.runner, self.encodes = runner, 0

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def encode(self, visual):
        self.encodes += 1
        return self.runner.encode(visual)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return {"a": depth_checkpoint(root / "a", seed=1), "b": depth_checkpoint(root / "b", seed=2)}


def frame(seq, t, rng=None):
    rng = rng or np.random.default_rng(seq)
    return Frame(rng.uniform(0.4, 1.4, (48, 64)).astype(np.float32), K, t, seq)


def make(ckpts, runner="torch", **kw):
    return ClosedLoopPolicy(LoadedPolicy.load(ckpts["a"], LIVE, runner, warmup_steps=1), 0.05, **kw)


def test_idle_until_started_and_targets_stamped_for_the_next_tick(ckpts):
    cl = make(ckpts)
    r = cl.tick(10.0, frame(1, 9.99), (9.995, HOME))
    assert r.q is None and r.skip == "idle"
    cl.start()
    r = cl.tick(10.0, frame(1, 9.99), (9.995, HOME))
    assert r.skip is None and r.q.shape == (23,) and np.all(np.isfinite(r.q))
    assert r.stamp_for == pytest.approx(10.05)
    assert set(r.timings) >= {"frame_age", "preprocess", "encode", "trunk", "post", "total"}
    assert r.timings["frame_age"] == pytest.approx(10.0)


def test_stale_or_missing_inputs_mean_no_action_and_are_counted(ckpts):
    cl = make(ckpts, max_frame_age_s=0.1, max_state_age_s=0.05)
    cl.start()
    assert cl.tick(1.0, None, (1.0, HOME)).skip == "no_frame"
    r = cl.tick(1.0, frame(1, 0.85), (1.0, HOME))
    assert r.skip == "stale_frame" and "150 ms" in r.detail
    assert cl.tick(1.0, frame(1, 0.95), None).skip == "no_joint_state"
    assert cl.tick(1.0, frame(1, 0.95), (0.9, HOME)).skip == "stale_joint_state"
    assert len(cl.history) == 0   # nothing was appended
    bad = HOME.copy()
    bad[3] = np.nan               # a driver glitch: the network's output is NaN, nothing is published
    r = cl.tick(1.0, frame(1, 0.95), (1.0, bad))
    assert r.skip == "nonfinite_action" and r.q is None
    assert cl.counts == {"no_frame": 1, "stale_frame": 1, "no_joint_state": 1, "stale_joint_state": 1,
                         "nonfinite_action": 1}


def test_each_frame_is_encoded_once_and_the_window_is_padded_like_training(ckpts):
    cl = make(ckpts)
    counting = CountingRunner(cl.policy.runner)
    cl.policy.runner = counting
    cl.start()
    f1, f2 = frame(1, 0.99), frame(2, 1.04)
    r1 = cl.tick(1.0, f1, (1.0, HOME))
    r1b = cl.tick(1.05, f1, (1.05, HOME))      # same frame again: not re-encoded
    cl.tick(1.10, f2, (1.10, HOME))
    assert counting.encodes == 2 and cl.history.count == 3
    # the first tick's window is 16 copies of step 0 (start padding), as the trainer builds it
    pol = cl.policy
    s0 = cl.history.steps()[0]
    proprio = np.repeat(pol.schema.scale(HOME[pol.idx])[None], 16, 0)
    expect = pol.schema.unscale(counting.runner.act(proprio, np.repeat(s0.emb[None], 16, 0)))[pol.inv]
    np.testing.assert_allclose(r1.q, expect, atol=1e-9)
    np.testing.assert_allclose(r1b.q, r1.q, atol=1e-6)   # identical observation twice -> same padded window
    cl.reset()
    assert len(cl.history) == 0 and cl.running


def test_targets_come_out_in_the_drivers_joint_order(ckpts):
    cl = make(ckpts)
    cl.start()
    r = cl.tick(1.0, frame(1, 0.99), (1.0, HOME))
    pol = cl.policy
    # slot i of the policy's action is driver joint schema.joint_names[i]
    window = cl.history.window()
    proprio = pol.schema.scale(np.stack([s.q[pol.idx] for s in window]))
    a = pol.schema.unscale(pol.runner.act(proprio, np.stack([s.emb for s in window])))
    for slot, name in enumerate(pol.schema.joint_names):
        assert r.q[list(D.ALL_JOINTS).index(name)] == pytest.approx(a[slot])


def test_policy_inputs_equal_the_trainers_for_the_same_frames(ckpts, twin_recording):
    """The trainer's visual inputs (made while recording the episode) and the policy's, byte for byte."""
    rec = twin_recording
    folder = depth_checkpoint(ckpts["a"].parent / "twin", seed=3,
                              schema=PolicySchema.hop(VisualSpec("depth", depth=SMALL_DEPTH)))
    cl = ClosedLoopPolicy(LoadedPolicy.load(folder, LIVE, "torch", 1), 0.05)
    cl.start()
    ep = rec["episode"]
    for i in range(16):
        t = 100.0 + rec["stamps"][i]
        cl.tick(t, Frame(rec["depth"][i], rec["K"], t, i), (t, ep.q[i]))
        step = cl.history.steps()[-1]
        assert step.visual.dtype == ep.visual.dtype and step.visual.tobytes() == ep.visual[i].tobytes()


# ----------------------------------------------------------------------------- hot-swap

def test_swap_to_a_good_checkpoint_and_roll_back(ckpts):
    cl = make(ckpts)
    cl.start()
    for k in range(5):
        cl.tick(1.0 + 0.05 * k, frame(k, 0.99 + 0.05 * k), (1.0 + 0.05 * k, HOME))
    old = cl.policy
    q_old = cl.tick(1.25, frame(4, 1.19), (1.25, HOME)).q
    msg = cl.install(cl.prepare(ckpts["b"], LIVE, "torch", 1))
    assert "now running b@" in msg and cl.previous is old and cl.policy is not old
    assert len(cl.history) == 6      # the episode's history is kept, re-encoded for the new network
    q_new = cl.tick(1.30, frame(4, 1.25), (1.30, HOME)).q
    assert q_new is not None and not np.allclose(q_new, q_old)
    cl.rollback()
    assert cl.policy is old
    q_back = cl.tick(1.35, frame(4, 1.30), (1.35, HOME)).q
    # the old network again, on the episode's history re-encoded for it
    np.testing.assert_allclose(q_back, old.act(cl.history.window())[0], atol=1e-9)
    assert cl.history.steps()[-1].emb.tobytes() == old.encode(frame(4, 1.30))[1].tobytes()


@pytest.fixture(scope="module")
def bad_ckpts(ckpts, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    wrong_names = PolicySchema.hop(VisualSpec("depth", depth=SMALL_DEPTH))
    wrong_names.joint_names[0] = "shoulder_pan"
    names = depth_checkpoint(root / "names", schema=wrong_names)
    corrupt = depth_checkpoint(root / "corrupt")
    data = bytearray((corrupt / WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0x55
    (corrupt / WEIGHTS_FILE).write_bytes(bytes(data))
    return {"names": (names, SchemaMismatchError), "corrupt": (corrupt, CheckpointError),
            "missing": (root / "missing", CheckpointError)}


@pytest.mark.parametrize("which", ["names", "corrupt", "missing"])
def test_a_bad_checkpoint_is_refused_and_the_old_policy_keeps_running(ckpts, bad_ckpts, which):
    path, error = bad_ckpts[which]
    cl = make(ckpts)
    cl.start()
    q0 = cl.tick(1.0, frame(1, 0.99), (1.0, HOME)).q
    old = cl.policy
    with pytest.raises(error):
        cl.prepare(path, LIVE, "torch", 1)
    assert cl.policy is old and cl.previous is None
    np.testing.assert_allclose(cl.tick(1.05, frame(1, 0.99), (1.05, HOME)).q, q0, atol=1e-5)


def test_swap_happens_between_ticks_of_a_running_loop(ckpts):
    cl = make(ckpts)
    cl.start()
    cl.ticking = True
    stop = threading.Event()
    results, errors = [], []

    def loop():
        k = 0
        try:
            while not stop.is_set():
                t = 1.0 + 0.05 * k
                results.append((cl.tick(t, frame(k, t - 0.01), (t, HOME)), cl.policy.name))
                k += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    th = threading.Thread(target=loop)
    th.start()
    try:
        while len(results) < 5:
            threading.Event().wait(0.005)
        cand = cl.prepare(ckpts["b"], LIVE, "torch", 1)
        n_before = len(results)
        cl.install(cand, timeout_s=5.0)
        while len(results) < n_before + 5:
            threading.Event().wait(0.005)
    finally:
        stop.set()
        th.join()
    assert not errors
    assert all(r.skip is None for r, _ in results)            # no tick lost to the swap
    names = [n for _, n in results]
    first_b = names.index(cand.policy.name)
    assert set(names[:first_b]) == {names[0]} and set(names[first_b:]) == {cand.policy.name}


def test_frames_that_arrive_during_a_load_are_encoded_by_the_installer_not_the_swap_tick(ckpts):
    cl = make(ckpts)
    cl.start()
    for k in range(3):
        cl.tick(1.0 + 0.05 * k, frame(k, 0.99 + 0.05 * k), (1.0 + 0.05 * k, HOME))
    cand = cl.prepare(ckpts["b"], LIVE, "torch", 1)
    for k in range(3, 8):   # the loop kept ticking while the candidate was dry-run
        cl.tick(1.0 + 0.05 * k, frame(k, 0.99 + 0.05 * k), (1.0 + 0.05 * k, HOME))
    assert sum(s.frame.seq not in cand.encoded for s in cl.history.steps()) == 5
    cand.policy.runner = CountingRunner(cand.policy.runner)
    cl.ticking = True
    th = threading.Thread(target=cl.install, args=(cand, 5.0))
    th.start()
    while cl._pending is None and th.is_alive():   # the installer encodes the five, then hands over
        threading.Event().wait(0.002)
    assert cand.policy.runner.encodes == 5
    r = cl.tick(1.40, frame(8, 1.39), (1.40, HOME))   # the swap tick: only its own new frame
    th.join()
    assert cl.policy is cand.policy and r.q is not None
    assert cand.policy.runner.encodes == 6


def test_install_times_out_when_the_loop_is_not_ticking(ckpts):
    cl = make(ckpts)
    cl.ticking = True      # says a loop ticks, but none does
    cand = cl.prepare(ckpts["b"], LIVE, "torch", 1)
    with pytest.raises(PolicyError, match="did not take"):
        cl.install(cand, timeout_s=0.1)
    assert cl.policy.name.startswith("a@")


def test_onnxruntime_runner_gives_the_torch_runners_targets(ckpts):
    a, b = make(ckpts, "onnxruntime"), make(ckpts, "torch")
    a.start(), b.start()
    for k in range(3):
        t = 1.0 + 0.05 * k
        qa = a.tick(t, frame(k, t), (t, HOME)).q
        qb = b.tick(t, frame(k, t), (t, HOME)).q
        np.testing.assert_allclose(qa, qb, atol=1e-4)


def test_latest_inputs_and_tick_window():
    from policies.closed_loop import LatestInputs, TickResult, TickWindow

    inp = LatestInputs()
    assert inp.frame is None and inp.joints() is None
    inp.on_joints("arm", 2.0, np.zeros(7))
    assert inp.joints() is None                                 # both parts are needed
    inp.on_joints("hand", 1.5, np.ones(16))
    t, q = inp.joints()
    assert t == 1.5 and q.shape == (23,) and q[7] == 1.0      # the older stamp, arm then hand
    # a NaN, another count or a bad stamp from a peer: refused and counted, the last good ones kept
    assert not inp.on_joints("hand", 1.6, np.full(16, np.nan))
    assert not inp.on_joints("arm", 2.1, np.zeros(6))
    assert not inp.on_joints("arm", float("nan"), np.zeros(7))
    assert not inp.on_joints("arm", 2.2, ["a"] * 7)
    assert inp.refused_joints == {"arm": 3, "hand": 1}
    t, q = inp.joints()
    assert t == 1.5 and np.all(np.isfinite(q))
    inp.on_depth(3.0, np.zeros((4, 4)), np.eye(3))
    inp.on_depth(3.1, np.ones((4, 4)), 2 * np.eye(3))
    assert inp.frame.seq == 2 and inp.frame.t == 3.1 and inp.frame.K[0, 0] == 2.0
    w = TickWindow()
    for total, age in ((1.0, 10.0), (3.0, 30.0), (2.0, 20.0)):
        r = TickResult(0.0, 0.05)
        r.timings.update(total=total, frame_age=age)
        w.add(r)
    assert w.summary() == {"tick_ms_p50": 2.0, "tick_ms_max": 3.0, "frame_age_ms_p50": 20.0}
    assert w.summary()["tick_ms_max"] == 0.0                  # the window starts anew
