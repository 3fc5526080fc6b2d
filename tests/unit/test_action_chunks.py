"""The action representation: chunks, relative targets, normalisation, temporal ensembling, the
demo audit, and a policy overfit on one twin demo. No ROS."""
import json

import numpy as np
import pytest

from policies.action import ActionSpec, TemporalEnsembler
from policies.checkpoint import FORMAT, FORMAT_ACTION, META_FILE, load_checkpoint
from policies.closed_loop import ClosedLoopPolicy, Frame, LiveRobot, LoadedPolicy
from policies.errors import CheckpointError, SchemaMismatchError
from policies.schema import PolicySchema
from robot_runtime import description as D
from robot_runtime.data.audit import audit_demos
from robot_runtime.perception.preprocess import VisualSpec
from tests.policy_fixtures import SMALL_DEPTH, depth_checkpoint

HOME = np.array(D.ARM_HOME + D.HAND_HOME)
LIVE = LiveRobot(tuple(D.ALL_JOINTS), tuple(tuple(x) for x in D.ARM_LIMITS + D.HAND_LIMITS), 20.0)
K = np.array([[100.0, 0, 40], [0, 100.0, 30], [0, 0, 1]])
SMALL = {"hidden": 32, "layers": 1, "heads": 2, "inner": 64}


def spec(chunk=4, decay=0.3, arm="relative", hand="absolute"):
    rng = np.random.default_rng(0)
    return ActionSpec(chunk, {"arm": arm, "hand": hand}, HOME + rng.normal(0, 0.1, 23), rng.uniform(0.1, 0.5, 23),
                      rng.normal(0, 0.01, (chunk, 23)), rng.uniform(0.01, 0.2, (chunk, 23)), decay)


def chunked_checkpoint(folder, action: ActionSpec, seed=0):
    schema = PolicySchema.hop(VisualSpec("depth", depth=SMALL_DEPTH))
    schema.action = action
    return depth_checkpoint(folder, seed=seed, arch_kw={**SMALL, "chunk": action.chunk}, schema=schema, onnx=False)


def frame(seq, t):
    return Frame(np.full((60, 80), 0.8, np.float32), K, t, seq)


def test_rows_and_targets_invert_each_other_for_relative_and_absolute_joints():
    s = spec(chunk=5)
    rng = np.random.default_rng(1)
    q = HOME + np.cumsum(rng.normal(0, 0.01, (30, 23)), axis=0)
    actions = np.vstack([q[1:], q[-1:]])
    rows = s.rows(q, actions, np.arange(30))
    assert rows.shape == (30, 5, 23)
    rel = s.relative_mask()
    assert rel[:7].all() and not rel[7:].any()
    np.testing.assert_allclose(rows[3, 2, :7], actions[5, :7] - q[3, :7])   # arm: relative to the tick's joints
    np.testing.assert_allclose(rows[3, 2, 7:], actions[5, 7:])              # hand: absolute
    np.testing.assert_allclose(rows[28, 4], actions[29] - np.where(rel, q[28], 0))   # past the end: the last repeats
    for t in (0, 7, 29):
        np.testing.assert_allclose(s.targets(s.action_out(rows[t]).ravel(), q[t]),
                                   actions[np.minimum(t + np.arange(5), 29)], atol=1e-5)


def test_fit_floors_the_spread_of_joints_that_do_not_move():
    q = np.tile(HOME, (40, 1))
    q[:, 1] += np.linspace(0, 0.5, 40)
    actions = np.vstack([q[1:], q[-1:]])
    s = ActionSpec.fit([(q, actions)], 3, {"arm": "relative", "hand": "absolute"})
    assert s.proprio_std[0] == 0.05 and s.proprio_std[1] > 0.1
    assert np.all(s.action_std[:, 0] == 0.01) and np.all(s.action_std[:, 10] == 0.05)
    s2 = ActionSpec.from_dict(json.loads(json.dumps(s.to_dict())))
    np.testing.assert_allclose(s2.action_std, s.action_std)


def test_temporal_ensemble_weighs_chunks_by_age():
    ens = TemporalEnsembler(0.05, 3, decay=0.5)
    ens.add(1.0, np.array([[0.0], [10.0], [20.0]]))          # made at t = 0.95, rows for 1.0, 1.05, 1.1
    ens.add(1.05, np.array([[12.0], [22.0], [32.0]]))
    w_old, w_new = np.exp(-0.5), 1.0
    assert ens.target(1.05)[0] == pytest.approx((10 * w_old + 12 * w_new) / (w_old + w_new))
    assert ens.target(1.2) is None                           # past every chunk
    ens.add(1.1, np.zeros((3, 1)))
    ens.add(1.15, np.zeros((3, 1)))                          # the first chunk no longer covers anything new
    assert len(ens) == 3


def test_chunked_execution_with_ensembling_is_exact_on_a_ramp(tmp_path):
    """A network whose chunks are the exact continuation of a joint ramp: every published target,
    through normalisation, relative arm targets, the drivers' joint order and the ensemble,
    is the ramp's value at the time it is stamped for."""
    s = spec(chunk=6, decay=0.2)
    pol = LoadedPolicy.load(chunked_checkpoint(tmp_path / "c", s), LIVE, "torch", 1)
    slope = np.linspace(-0.2, 0.3, 23)          # rad/s per driver joint

    def ramp(t):                                 # joints [..., 23] at time(s) t
        return HOME + slope * np.asarray(t, float)[..., None]

    class RampRunner:
        def encode(self, visual):
            return np.zeros(SMALL["hidden"], np.float32)

        def act(self, proprio, emb):
            q_now = proprio[-1].astype(np.float64) * s.proprio_std + s.proprio_mean     # policy order
            t_now = float(np.median((q_now - HOME[pol.idx]) / slope[pol.idx]))
            rows = ramp(t_now + 0.05 * (1 + np.arange(s.chunk)))[:, pol.idx]
            return s.action_out(np.where(s.relative_mask(), rows - q_now, rows)).ravel()

    pol.runner = RampRunner()
    cl = ClosedLoopPolicy(pol, 0.05)
    cl.start()
    for k in range(20):
        t = 2.0 + 0.05 * k
        r = cl.tick(t, frame(k, t), (t, ramp(t - 2.0)), stamp_for=t + 0.05)
        np.testing.assert_allclose(r.q, ramp(t - 2.0 + 0.05), atol=1e-5)
        assert len(cl.ensemble) == min(k + 1, s.chunk)


def test_chunks_that_disagree_are_blended_and_a_nonfinite_chunk_is_not_used(tmp_path):
    s = spec(chunk=3, decay=0.0, arm="absolute")
    pol = LoadedPolicy.load(chunked_checkpoint(tmp_path / "c", s), LIVE, "torch", 1)
    outputs = iter([np.zeros(69), np.ones(69), np.full(69, np.nan)])
    pol.runner.act = lambda proprio, emb: next(outputs)
    cl = ClosedLoopPolicy(pol, 0.05)
    cl.start()
    r1 = cl.tick(1.0, frame(1, 1.0), (1.0, HOME), stamp_for=1.05)
    r2 = cl.tick(1.05, frame(2, 1.05), (1.05, HOME), stamp_for=1.1)
    c1 = pol.targets(np.zeros(69), HOME)
    c2 = pol.targets(np.ones(69), HOME)
    np.testing.assert_allclose(r1.q, c1[0])
    np.testing.assert_allclose(r2.q, (c1[1] + c2[0]) / 2)      # decay 0: the plain mean of the overlap
    r3 = cl.tick(1.1, frame(3, 1.1), (1.1, HOME), stamp_for=1.15)
    assert r3.skip == "nonfinite_action" and r3.q is None and len(cl.ensemble) == 2
    cl.start()                                                # a new episode blends nothing old
    assert len(cl.ensemble) == 0


def test_formats_name_the_representation_and_a_mismatch_is_refused(tmp_path):
    hop = depth_checkpoint(tmp_path / "hop", arch_kw=SMALL, onnx=False)
    meta = json.loads((hop / META_FILE).read_text())
    assert meta["format"] == FORMAT and "action" not in meta["schema"]
    ck = load_checkpoint(hop)
    assert ck.schema.action is None and ck.schema.chunk == 1
    chunked = chunked_checkpoint(tmp_path / "chunked", spec())
    meta = json.loads((chunked / META_FILE).read_text())
    assert meta["format"] == FORMAT_ACTION and meta["schema"]["action"]["chunk"] == 4
    assert load_checkpoint(chunked).schema.action.modes == {"arm": "relative", "hand": "absolute"}
    meta["format"] = FORMAT                                    # an old reader's format with chunks inside
    (chunked / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="'action' entry"):
        load_checkpoint(chunked)
    meta["format"] = FORMAT_ACTION
    meta["schema"]["action"]["action_std"][0][3] = -1.0
    (chunked / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(SchemaMismatchError, match="action_std must be positive"):
        load_checkpoint(chunked)


def test_onnx_export_of_a_chunk_head_matches_torch(tmp_path):
    from policies.runners import OnnxRunner, TorchRunner

    ck = load_checkpoint(chunked_checkpoint(tmp_path / "c", spec(chunk=5)))
    ort, pt = OnnxRunner(ck, folder=tmp_path / "onnx"), TorchRunner(ck)
    rng = np.random.default_rng(0)
    v = rng.uniform(0, 1, SMALL_DEPTH.shape).astype(np.float32)
    p = rng.normal(0, 1, (16, 23)).astype(np.float32)
    e = np.repeat(pt.encode(v)[None], 16, 0)
    out = ort.act(p, e)
    assert out.shape == (5 * 23,)
    assert np.abs(out - pt.act(p, e)).max() <= 1e-4


def _branches(n_a, n_b, seed=0):
    rng = np.random.default_rng(seed)
    eps = []
    for i in range(n_a + n_b):
        q = np.tile(HOME, (50, 1)) + np.linspace(0, 1, 50)[:, None] * rng.normal(0, 0.05, 23)
        q[:, 4] += np.linspace(0, 2.6 if i < n_a else -2.6, 50) + rng.normal(0, 0.05)   # joint 5 turns one way or the other
        eps.append(q)
    return eps, [f"ep{i:02d}" for i in range(n_a + n_b)]


def test_audit_flags_a_two_branch_demo_set_and_names_the_minority():
    eps, names = _branches(10, 4)
    rep = audit_demos(eps, names, D.ALL_JOINTS, joints=range(7))
    assert not rep.ok and [s.joint for s in rep.splits] == ["joint5"]
    assert rep.splits[0].minority == names[10:] and rep.splits[0].majority_count == 10
    assert "ep10" in rep.warnings()[0] and "joint5" in rep.table()
    one, names1 = _branches(14, 0)
    assert audit_demos(one, names1, D.ALL_JOINTS, joints=range(7)).ok


def test_the_scripted_expert_plans_every_demo_of_a_task_on_one_branch():
    from robot_runtime.config import config_from_dict
    from robot_runtime.twin.rollout import make_expert
    from robot_runtime.twin.sim import TwinSimulation

    cfg = config_from_dict({})
    sim = TwinSimulation(cfg.twin, cfg.robot)
    expert = make_expert(cfg)
    try:
        for task in ("grasp_lift", "grasp_drop", "grasp_pour"):
            plans, names = [], []
            for seed in range(8):
                sim.reset(task, seed)
                poses = {k: (v.position, v.quaternion) for k, v in sim.object_poses().items()}
                q = np.concatenate([sim.arm_state().position, sim.hand_state().position])
                wps = expert.plan(task, poses, sim.active_objects, q, np.random.default_rng(seed))
                plans.append(np.array([np.concatenate([w.arm, w.hand]) for w in wps]))
                names.append(f"{task}_{seed}")
            rep = audit_demos(plans, names, D.ALL_JOINTS, horizon=1, joints=range(7))
            assert rep.ok, rep.warnings()
            # joint 5 on one branch through the approach and the grasp (it took +pi or -pi by the yaw's sign)
            assert rep.posture_std[1:4, 4].max() < 0.3, (task, rep.posture_std[:, 4])
    finally:
        sim.close()


def test_a_policy_overfit_on_one_demo_reproduces_its_targets_well_below_the_demo_step(twin_recording):
    """The cheapest rung of the diagnostic ladder: one twin demo, a small chunked network, the
    few-shot recipe. Open loop on that demo, the next-target error must be a small fraction of
    how far the demo moves in a step (else nothing downstream can work)."""
    import torch

    from policies.bc import TrainConfig, WeightAverage, WindowSampler, bc_step, open_loop_error
    from policies.hop import HopArchitecture, HopPolicy

    ep = twin_recording["episode"]
    schema = PolicySchema.hop(twin_recording["spec"])
    idx = schema.index_in(D.ALL_JOINTS)
    schema.action = ActionSpec.fit([(ep.q[:, idx], ep.actions[:, idx])], 5, {"arm": "relative", "hand": "absolute"})
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = HopPolicy(HopArchitecture(visual="depth", depth_size=SMALL_DEPTH.shape, hidden=64, layers=2, heads=2,
                                      inner=128, chunk=5))
    cfg = TrainConfig(steps=800, batch=16, lr=1e-3, weight_decay=0.0, warmup=20, cosine=True, ema=0.9, run=1,
                      loss="mse", loss_on="last")
    sampler = WindowSampler([ep], schema, D.ALL_JOINTS)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = WeightAverage(model, cfg.ema)
    rng = np.random.default_rng(0)
    before = open_loop_error(model, schema, [ep], D.ALL_JOINTS, every=1)
    for step in range(cfg.steps):
        bc_step(model, opt, sampler, rng, cfg, step=step)
        ema.update(model)
    err = open_loop_error(ema.model, schema, [ep], D.ALL_JOINTS, every=1)
    demo_step = np.mean(err["demo_step"][:7])
    assert err["arm"] < 0.25 * demo_step, (err["arm"], demo_step)
    assert err["hand"] < 0.25 * np.mean(before["per_joint"][7:]), (err["hand"], before["per_joint"][7:])
    assert len(err["per_row"]) == 5 and err["per_row"][-1] < 2 * demo_step


def _placement_episodes(n=8, steps=12, seed=0):
    """Episodes whose every step's arm move is set by where the object lies (joint 1 toward its y),
    with the same joints throughout: only the point cloud tells them apart."""
    from policies.bc import Episode   # noqa: PLC0415

    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n):
        obj = np.array([rng.uniform(0.42, 0.62), rng.uniform(-0.18, 0.18), 0.03])
        q = np.tile(HOME, (steps, 1))
        a = q.copy()
        a[:, 0] += 0.05 * obj[1] / 0.18          # rad: up to 0.05 toward the object
        cloud = np.concatenate([obj + rng.normal(0, 0.015, (steps, 30, 3)),
                                np.array([0.5, 0.1, 0.02]) + rng.normal(0, 0.04, (steps, 70, 3))], axis=1)
        eps.append(Episode(q, a, cloud.astype(np.float32)))
    return eps


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_move_set_by_the_object_position_is_read_from_the_point_cloud(precision):
    """The object's place, 10 cm from one demo to the next, reaches the network: standardised points
    and GPT-2's small position table (a raw 100-point cloud under torch's N(0, 1) table gave the
    twin's policies a visual token whose spread between demos was 2-4% of the token). A forward
    pass in bf16 (what finetuning runs where the hardware has it) learns it as well."""
    import torch   # noqa: PLC0415

    from policies.bc import TrainConfig, WindowSampler, bc_step, open_loop_error   # noqa: PLC0415
    from policies.finetune import point_statistics   # noqa: PLC0415
    from policies.hop import HopArchitecture, HopPolicy   # noqa: PLC0415
    from robot_runtime.perception.preprocess import PointCloudPreprocess   # noqa: PLC0415

    eps = _placement_episodes()
    schema = PolicySchema.hop(VisualSpec("pointcloud", points=PointCloudPreprocess()))
    schema.action = ActionSpec.fit([(e.q, e.actions) for e in eps], 1, {"arm": "relative", "hand": "absolute"})
    spread = np.std([e.actions[0, 0] - e.q[0, 0] for e in eps])
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = HopPolicy(HopArchitecture(visual="pointcloud", **SMALL, **point_statistics(eps)))
    cfg = TrainConfig(steps=300, batch=16, lr=1e-3, weight_decay=0.0, warmup=10, run=1, loss="mse", loss_on="last",
                      precision=precision)
    sampler = WindowSampler(eps, schema, D.ALL_JOINTS)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng(0)
    for step in range(cfg.steps):
        bc_step(model, opt, sampler, rng, cfg, step=step)
    err = open_loop_error(model, schema, eps, D.ALL_JOINTS, every=1)
    assert err["per_joint"][0] < 0.2 * spread, (err["per_joint"][0], spread)


def test_the_last_step_loss_is_the_trunks_last_prediction_and_bf16_stays_within_its_rounding():
    """``loss_on='last'`` computes the last token alone through the final block: the same loss as
    the whole trunk's last prediction. A bf16 forward pass gives that loss within bf16's rounding
    and a gradient pointing the same way; 'auto' is bf16 exactly where the CPU has AMX bf16, and
    an unknown precision is refused by name."""
    import torch   # noqa: PLC0415

    from policies.bc import autocast, bc_loss, training_precision   # noqa: PLC0415
    from policies.errors import PolicyError   # noqa: PLC0415
    from policies.hop import HopArchitecture, HopPolicy   # noqa: PLC0415

    torch.manual_seed(0)
    model = HopPolicy(HopArchitecture(visual="depth", depth_size=SMALL_DEPTH.shape, hidden=64, layers=2, heads=2,
                                      inner=128, chunk=3))
    b, t, a = 6, 8, model.arch.action_dim * 3
    proprio, emb = torch.randn(b, t, 23), torch.randn(b * t, 64)
    index, actions = torch.arange(b * t).reshape(b, t), torch.randn(b, t, a)
    whole = (model.trunk(proprio, emb[index])[0][:, -1] - actions[:, -1]).pow(2).mean()
    loss = bc_loss(model, proprio, emb, index, actions, embedded=True, loss="mse", loss_on="last")
    assert abs(loss.item() - whole.item()) < 1e-5 * whole.item()

    def grad(precision):
        model.zero_grad()
        with autocast(precision, "cpu"):
            out = bc_loss(model, proprio, emb, index, actions, embedded=True, loss="mse", loss_on="last")
        out.backward()
        return out.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    (l32, g32), (l16, g16) = grad("fp32"), grad("bf16")
    assert abs(l16 - l32) < 0.02 * l32, (l16, l32)
    assert torch.nn.functional.cosine_similarity(g16, g32, dim=0) > 0.99
    amx = bool(torch.cpu.get_capabilities().get("amx_bf16"))
    assert training_precision("auto", "cpu") == ("bf16" if amx else "fp32")
    assert training_precision("fp32", "cpu") == "fp32" and training_precision("bf16", "cpu") == "bf16"
    with pytest.raises(PolicyError, match="'fp16'"):
        training_precision("fp16", "cpu")


def test_a_mirrored_demo_is_the_demo_in_the_cell_mirrored_across_the_base_x_z_plane():
    """``mirror_episode``: a cloud of points on the palm (forward kinematics of the demo's joints)
    mirrored y -> -y is the palm of the mirrored joints, the mirrored demo starts where the demo
    did, relative arm targets change sign on joints 1, 3, 5, 7 and keep it on 2, 4, 6, and the hand is
    untouched. A demo that does not start mirror-symmetric, or depth input, is refused."""
    from policies.bc import Episode, mirror_episode   # noqa: PLC0415
    from policies.errors import PolicyError   # noqa: PLC0415
    from robot_runtime.kinematics import UrdfModel   # noqa: PLC0415

    urdf = UrdfModel.from_file(D.description_path(D.URDF_NAME))
    rng = np.random.default_rng(7)
    home = HOME.copy()
    home[[0, 2, 6]], home[4] = 0.0, np.pi                 # ready posture: wrist at pi, mirror-symmetric
    q = home + np.vstack([np.zeros((1, 23)), np.cumsum(rng.normal(0, 0.03, (19, 23)), axis=0)])
    palm = np.stack([urdf.link_pose(qi, "palm")[:3, 3] for qi in q])
    ep = Episode(q, np.vstack([q[1:], q[-1:]]), np.repeat(palm[:, None], 5, axis=1).astype(np.float32))
    m = mirror_episode(ep, D.ALL_JOINTS)
    np.testing.assert_allclose(m.q[0], q[0], atol=1e-12)
    for qi, cloud in zip(m.q, m.visual):
        np.testing.assert_allclose(cloud, np.tile(urdf.link_pose(qi, "palm")[:3, 3], (5, 1)), atol=2e-5)
    flip = np.array([-1, 1, -1, 1, -1, 1, -1] + [1] * 16, float)
    np.testing.assert_allclose(m.actions - m.q, flip * (ep.actions - ep.q), atol=1e-12)
    np.testing.assert_array_equal(m.q[:, 7:], q[:, 7:])
    turned = Episode(q + np.eye(23)[0] * 0.3, ep.actions, ep.visual)
    with pytest.raises(PolicyError, match="joint1 starts at 0.300"):
        mirror_episode(turned, D.ALL_JOINTS)
    with pytest.raises(PolicyError, match="point clouds"):
        mirror_episode(Episode(q, ep.actions, np.zeros((20, 8, 8), np.float32)), D.ALL_JOINTS)
