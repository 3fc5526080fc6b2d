"""The HOP network, its schema and scaling, the public-checkpoint importer, ONNX parity, checkpoints."""
import hashlib
import json
import shutil

import numpy as np
import pytest
import torch

from policies.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from policies.errors import CheckpointError, PolicyError, SchemaMismatchError
from policies.history import StepHistory, window_indices
from policies.onnx_export import EXPORT_VERSION, OPSET
from policies.hop import HopArchitecture, HopPolicy
from policies.importer import convert_state_dict, import_hop, import_hop_file
from policies.runners import OnnxRunner, TorchRunner
from policies.schema import PolicySchema, hop_joint_order
from robot_runtime import description as D
from robot_runtime.perception.preprocess import PointCloudPreprocess, VisualPreprocessor, VisualSpec
from tests.policy_fixtures import SMALL_DEPTH, depth_checkpoint, public_hop_state_dict, reference_forward


@pytest.mark.parametrize("visual", ["depth", "pointcloud"])
def test_tokenizer_and_trunk_shapes(visual):
    arch = HopArchitecture(visual=visual, depth_size=(24, 32))
    m = HopPolicy(arch).eval()
    x = torch.rand(3, 24, 32) if visual == "depth" else torch.randn(3, 100, 3)
    assert m.encode_visual(x).shape == (3, 192)
    proprio, emb = torch.rand(2, 16, 23), torch.randn(2, 16, 192)
    actions, nxt = m.trunk(proprio, emb)
    assert actions.shape == (2, 16, 23) and nxt.shape == (2, 16, 23)
    assert m.act(proprio, emb).shape == (2, 23)
    visual_in = torch.rand(2, 16, 24, 32) if visual == "depth" else torch.randn(2, 16, 100, 3)
    full, _ = m(proprio, visual_in)
    assert full.shape == (2, 16, 23)


def test_trunk_is_causal_per_step():
    m = HopPolicy(HopArchitecture(depth_size=(24, 32))).eval()
    p, e = torch.rand(1, 16, 23), torch.randn(1, 16, 192)
    a, _ = m.trunk(p, e)
    p2, e2 = p.clone(), e.clone()
    p2[0, 10:] += 1.0
    e2[0, 10:] -= 1.0
    b, _ = m.trunk(p2, e2)
    torch.testing.assert_close(a[0, :10], b[0, :10])   # the future does not change the past
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_scaling_round_trip_and_limits():
    s = PolicySchema.hop()
    lo, hi = np.array(s.lower), np.array(s.upper)
    q = lo + np.random.default_rng(0).uniform(0, 1, (50, 23)) * (hi - lo)
    np.testing.assert_allclose(s.unscale(s.scale(q)), q, atol=2e-6 * (hi - lo).max())
    np.testing.assert_allclose(s.scale(lo), -1.0, atol=1e-6)
    np.testing.assert_allclose(s.scale(hi), 1.0, atol=1e-6)
    # HOP's hand order is finger A, thumb, finger B, finger C: slot 11 (after 7 arm + 4 finger A) is the thumb base (0.263, 1.396)
    assert (s.lower[11], s.upper[11]) == (0.263, 1.396)
    assert s.joint_names[11:15] == list(D.HAND_JOINTS[12:16])


def test_history_padding_matches_training_windows():
    assert window_indices(0, 4).tolist() == [0, 0, 0, 0]
    assert window_indices(2, 4).tolist() == [0, 0, 1, 2]
    assert window_indices(9, 4).tolist() == [6, 7, 8, 9]
    h = StepHistory(4)
    for t in range(10):
        h.append(t)
        assert h.window() == window_indices(t, 4).tolist()
    h.clear()
    with pytest.raises(ValueError):
        h.window()


def test_schema_against_robot_names_what_does_not_fit():
    s = PolicySchema.hop()
    s.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0)
    wrong = PolicySchema.hop(fingers=("thumb", "index", "middle", "ring"))
    # slots keep HOP's limits, so the thumb mapped into finger A's slot is caught by its limits
    names, limits = hop_joint_order()
    swapped = PolicySchema(list(wrong.joint_names), s.lower, s.upper)
    with pytest.raises(SchemaMismatchError, match="joint_12.0"):
        swapped.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0)
    renamed = PolicySchema(["j1"] + names[1:], s.lower, s.upper)
    with pytest.raises(SchemaMismatchError, match=r"missing \['joint1'\], unknown \['j1'\]"):
        renamed.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0)
    with pytest.raises(SchemaMismatchError, match="trained at 20 Hz but rates.policy_hz is 30"):
        s.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, 30.0)


# ----------------------------------------------------------------------------- importer

def test_importer_matches_an_independent_reference_computation(tmp_path):
    sd = public_hop_state_dict(seed=1)
    model, schema = import_hop(sd)
    rng = np.random.default_rng(2)
    proprio = rng.uniform(-1, 1, (16, 23)).astype(np.float32)
    points = rng.uniform(-0.3, 0.3, (16, 100, 3)).astype(np.float32)
    with torch.no_grad():
        ours, _ = model(torch.from_numpy(proprio)[None], torch.from_numpy(points)[None])
    ref = reference_forward(sd, proprio, points)
    assert np.abs(ours[0].numpy() - ref).max() <= 1e-4
    assert schema.visual.kind == "pointcloud" and schema.joint_names == hop_joint_order()[0]
    # through a file, with a wrapper dict as training scripts save it
    src = tmp_path / "hop.pt"
    torch.save({"model": sd, "epoch": 3}, src)
    out = import_hop_file(src, tmp_path / "imported")
    ck = load_checkpoint(out)
    with torch.no_grad():
        again, _ = ck.build_model()(torch.from_numpy(proprio)[None], torch.from_numpy(points)[None])
    assert np.abs(again[0].numpy() - ref).max() <= 1e-4
    assert ck.provenance["hand_order"] == ["index", "thumb", "middle", "ring"]


def test_importer_transposes_conv1d_and_rejects_wrong_shapes():
    sd = public_hop_state_dict(seed=0)
    _, ours = convert_state_dict(sd)
    torch.testing.assert_close(ours["transformer.h.0.attn.c_attn.weight"], sd["transformer.h.0.attn.c_attn.weight"].t())
    assert "transformer.h.0.attn.bias" not in ours
    bad = dict(sd)
    bad["transformer.h.1.mlp.c_fc.weight"] = torch.zeros(192, 700)
    with pytest.raises(CheckpointError, match="transformer.h.1.mlp.c_fc.weight"):
        convert_state_dict(bad)
    with pytest.raises(CheckpointError, match="embed_timestep"):
        convert_state_dict({k: v for k, v in sd.items() if not k.startswith("embed_timestep")})


# ----------------------------------------------------------------------------- ONNX parity

def test_onnx_matches_torch_on_random_inputs(tmp_path):
    ck = load_checkpoint(depth_checkpoint(tmp_path / "ck", seed=4))
    ort, pt = OnnxRunner(ck, folder=tmp_path / "onnx"), TorchRunner(ck)
    rng = np.random.default_rng(5)
    for _ in range(5):
        v = rng.uniform(0, 1, SMALL_DEPTH.shape).astype(np.float32)
        e_ort, e_pt = ort.encode(v), pt.encode(v)
        assert np.abs(e_ort - e_pt).max() <= 1e-4
        p = rng.uniform(-1, 1, (16, 23)).astype(np.float32)
        e = rng.normal(0, 1, (16, 192)).astype(np.float32)
        assert np.abs(ort.act(p, e) - pt.act(p, e)).max() <= 1e-4


def test_onnx_matches_torch_on_recorded_twin_inputs(tmp_path, twin_recording):
    rec = twin_recording
    ck = load_checkpoint(depth_checkpoint(tmp_path / "ck", seed=6))
    ort, pt = OnnxRunner(ck, folder=tmp_path / "onnx"), TorchRunner(ck)
    pre = VisualPreprocessor(ck.schema.visual)
    schema, idx = ck.schema, ck.schema.index_in(D.ALL_JOINTS)
    ep = rec["episode"]
    worst = 0.0
    for t in range(0, len(ep.q), 5):
        w = window_indices(t, 16)
        frames = [pre(rec["depth"][i], rec["K"], rec["stamps"][i]) for i in w]
        proprio = schema.scale(ep.q[w][:, idx])
        e_ort = np.stack([ort.encode(f) for f in frames])
        e_pt = np.stack([pt.encode(f) for f in frames])
        worst = max(worst, np.abs(e_ort - e_pt).max(), np.abs(ort.act(proprio, e_ort) - pt.act(proprio, e_pt)).max())
    assert worst <= 1e-4


def test_checkpoint_carries_its_onnx_files_and_others_are_exported_once(tmp_path, onnx_cache):
    own = load_checkpoint(depth_checkpoint(tmp_path / "own", seed=7))
    OnnxRunner(own)
    assert own.onnx_files(OPSET, EXPORT_VERSION) is not None and not any((onnx_cache / "onnx").glob(own.sha256[:16] + "*"))
    # tampered ONNX files are not used: the checkpoint is exported again, into the cache
    (own.path / "onnx" / "trunk.onnx").write_bytes(b"garbage")
    own = load_checkpoint(own.path)
    assert own.onnx_files(OPSET, EXPORT_VERSION) is None
    OnnxRunner(own)
    plain = load_checkpoint(depth_checkpoint(tmp_path / "plain", seed=8, onnx=False))
    OnnxRunner(plain)
    folder = next((onnx_cache / "onnx").glob(plain.sha256[:16] + "*"))
    stamp = (folder / "trunk.onnx").stat().st_mtime_ns
    OnnxRunner(plain)
    assert (folder / "trunk.onnx").stat().st_mtime_ns == stamp
    assert any((onnx_cache / "onnx").glob(own.sha256[:16] + "*"))


# ----------------------------------------------------------------------------- checkpoint files

def test_checkpoint_round_trip_carries_schema_and_provenance(tmp_path):
    out = depth_checkpoint(tmp_path / "ck", seed=1)
    ck = load_checkpoint(out / META_FILE)
    assert ck.schema.visual.depth == SMALL_DEPTH and ck.provenance["seed"] == 1
    ck.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, 20.0)
    model = ck.build_model()
    assert isinstance(model, HopPolicy) and not model.training


def _edit_meta(folder, fn):
    meta = json.loads((folder / META_FILE).read_text())
    fn(meta)
    (folder / META_FILE).write_text(json.dumps(meta))


def _redigest(meta, folder):
    """The weights' digest in ``meta`` made that of the (edited) file again."""
    meta["weights"]["sha256"] = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()


def test_checkpoint_errors_name_the_file_and_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nowhere")
    good = depth_checkpoint(tmp_path / "good")

    corrupt = depth_checkpoint(tmp_path / "corrupt")
    data = bytearray((corrupt / WEIGHTS_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model.safetensors: corrupt"):
        load_checkpoint(corrupt)

    truncated = depth_checkpoint(tmp_path / "truncated")
    (truncated / WEIGHTS_FILE).write_bytes(b"\x00\x01garbage")
    _edit_meta(truncated, lambda m: _redigest(m, truncated))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(truncated)

    (tmp_path / "badjson").mkdir()
    (tmp_path / "badjson" / META_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="policy.json: not readable JSON"):
        load_checkpoint(tmp_path / "badjson")

    nometa = tmp_path / "nometa"
    nometa.mkdir()
    with pytest.raises(CheckpointError, match="no policy.json"):
        load_checkpoint(nometa)

    key = depth_checkpoint(tmp_path / "key")
    _edit_meta(key, lambda m: m["schema"].pop("joint_names"))
    with pytest.raises(CheckpointError, match="schema.joint_names"):
        load_checkpoint(key)

    assert load_checkpoint(good).sha256


def test_policy_json_fields_of_the_wrong_type_or_leaving_the_folder_are_refused(tmp_path):
    """policy.json is input: every field a loader follows is checked, and a CheckpointError names
    the key (a string 'weights' entry once raised AttributeError and ended policy_node)."""
    good = depth_checkpoint(tmp_path / "good")
    (tmp_path / "outside.safetensors").write_bytes((good / WEIGHTS_FILE).read_bytes())
    cases = (
        ("weights_str", lambda m: m.__setitem__("weights", "model.safetensors"), "key 'weights' must be an object"),
        ("no_digest", lambda m: m["weights"].pop("sha256"), "'weights.sha256' must be"),
        ("short_digest", lambda m: m["weights"].__setitem__("sha256", "abc"), "'weights.sha256' must be"),
        ("file_int", lambda m: m["weights"].__setitem__("file", 3), "'weights.file' must be a file name"),
        ("dotdot", lambda m: m["weights"].__setitem__("file", "../outside.safetensors"), "must stay inside"),
        ("absolute", lambda m: m["weights"].__setitem__("file", str(tmp_path / "outside.safetensors")),
         "must stay inside"),
        ("onnx_abs", lambda m: m.__setitem__("onnx", {"encoder": {"file": "/etc/passwd", "sha256": "0" * 64}}),
         "'onnx.encoder.file'"),
        ("onnx_list", lambda m: m.__setitem__("onnx", [1]), "key 'onnx' must be an object"),
        ("provenance", lambda m: m.__setitem__("provenance", "me"), "key 'provenance' must be an object"),
        ("arch_list", lambda m: m.__setitem__("architecture", [1, 2]), "architecture"),
        ("schema_str", lambda m: m.__setitem__("schema", "hop"), "key 'schema'"),
    )
    for name, edit, match in cases:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        _edit_meta(folder, edit)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(folder)
    assert load_checkpoint(good).sha256


def test_onnx_files_are_used_only_when_made_from_the_verified_weights(tmp_path):
    folder = depth_checkpoint(tmp_path / "ck")
    ck = load_checkpoint(folder)
    assert ck.onnx_files(OPSET, EXPORT_VERSION) is not None          # as saved: made from these weights
    _edit_meta(folder, lambda m: m["onnx"].__setitem__("weights_sha256", "0" * 64))
    assert load_checkpoint(folder).onnx_files(OPSET, EXPORT_VERSION) is None   # another network's files
    _edit_meta(folder, lambda m: m["onnx"].pop("weights_sha256"))
    assert load_checkpoint(folder).onnx_files(OPSET, EXPORT_VERSION) is None   # unknown origin


def test_checkpoint_with_wrong_shapes_or_nan_weights_is_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    for name, edit, match in (
            ("shapes", lambda sd: sd.__setitem__("embed_proprio.weight", torch.zeros(192, 22)), "embed_proprio.weight"),
            ("nan", lambda sd: sd["transformer.h.2.mlp.c_fc.bias"].__setitem__(5, float("nan")), "non-finite"),
            ("missing", lambda sd: sd.pop("transformer.ln_f.bias"), "missing")):
        folder = depth_checkpoint(tmp_path / name)
        sd = load_file(str(folder / WEIGHTS_FILE))
        edit(sd)
        save_file(sd, str(folder / WEIGHTS_FILE))
        _edit_meta(folder, lambda m: _redigest(m, folder))
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(folder)


def test_checkpoint_architecture_and_schema_must_agree(tmp_path):
    model = HopPolicy(HopArchitecture(depth_size=(24, 32)))
    schema = PolicySchema.hop(VisualSpec("pointcloud", points=PointCloudPreprocess()))
    with pytest.raises(CheckpointError, match="visual 'depth' but schema visual 'pointcloud'"):
        save_checkpoint(tmp_path / "x", model, schema)


def test_cli_imports_and_checks_a_checkpoint(tmp_path, capsys):
    from robot_runtime.cli import main

    src = tmp_path / "hop.pt"
    torch.save(public_hop_state_dict(seed=3), src)
    assert main(["policy", "import", str(src), str(tmp_path / "imp"), "--hand-order", "index,thumb,middle,ring"]) == 0
    assert main(["policy", "check", str(tmp_path / "imp")]) == 0
    assert "visual pointcloud (100, 3)" in capsys.readouterr().out
    # a thumb slot filled with a finger is refused by the limits check
    assert main(["policy", "import", str(src), str(tmp_path / "bad"), "--hand-order", "thumb,index,middle,ring"]) == 0
    assert main(["policy", "check", str(tmp_path / "bad")]) == 2
    assert "a slot mapped to the wrong joint" in capsys.readouterr().err


def test_act_equals_the_last_step_of_the_full_trunk():
    m = HopPolicy(HopArchitecture(depth_size=(24, 32))).eval()
    p, e = torch.rand(3, 16, 23) * 2 - 1, torch.randn(3, 16, 192)
    with torch.no_grad():
        torch.testing.assert_close(m.act(p, e), m.trunk(p, e)[0][:, -1], atol=1e-5, rtol=1e-5)


def test_proprio_steps_hides_the_older_postures_only():
    m = HopPolicy(HopArchitecture(depth_size=(24, 32), hidden=64, layers=2, heads=2, inner=128, proprio_steps=1)).eval()
    p, e = torch.rand(1, 16, 23), torch.randn(1, 16, 64)
    older, newest, scene = p.clone(), p.clone(), e.clone()
    older[0, :15] += 1.0          # the motion so far
    newest[0, 15] += 0.1          # the posture now
    scene[0, :15] += torch.randn(15, 64)   # the older frames (a constant shift would vanish in the LayerNorm)
    a = m.act(p, e)
    torch.testing.assert_close(m.act(older, e), a)
    assert not torch.allclose(m.act(newest, e), a)
    assert not torch.allclose(m.act(p, scene), a)     # the older frames still count
    full = HopPolicy(HopArchitecture(depth_size=(24, 32), hidden=64, layers=2, heads=2, inner=128)).eval()
    assert not torch.allclose(full.act(older, e), full.act(p, e))   # HOP's layout sees every posture


def test_point_standardisation_travels_in_the_checkpoint_and_the_onnx_export(tmp_path):
    from policies.finetune import point_statistics   # noqa: PLC0415
    from policies.bc import Episode   # noqa: PLC0415

    rng = np.random.default_rng(3)
    clouds = [rng.normal([0.5, 0.0, 0.03], [0.08, 0.1, 0.005], (40, 100, 3)).astype(np.float32) for _ in range(3)]
    stats = point_statistics([Episode(np.zeros((40, 23)), np.zeros((40, 23)), c) for c in clouds])
    np.testing.assert_allclose(stats["point_center"], [0.5, 0.0, 0.03], atol=0.005)
    np.testing.assert_allclose(stats["point_scale"], [0.08, 0.1, 0.02], atol=0.005)   # z floored at 2 cm
    torch.manual_seed(0)
    arch = HopArchitecture(visual="pointcloud", hidden=64, layers=2, heads=2, inner=128, **stats)
    model = HopPolicy(arch).eval()
    assert "embed_pc.center" not in model.state_dict()          # HOP's key set
    spec = VisualSpec("pointcloud", points=PointCloudPreprocess())
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck", model, PolicySchema.hop(spec), {"source": "test"}))
    assert ck.arch.point_center == arch.point_center and ck.arch.point_scale == arch.point_scale
    pts = torch.from_numpy(clouds[0][:2])
    plain = HopPolicy(HopArchitecture(visual="pointcloud", hidden=64, layers=2, heads=2, inner=128))
    plain.load_state_dict(model.state_dict())
    x = (pts - torch.tensor(arch.point_center)) / torch.tensor(arch.point_scale)
    torch.testing.assert_close(ck.build_model().encode_visual(pts), plain.eval().encode_visual(x))
    ort, pt = OnnxRunner(ck, folder=tmp_path / "onnx"), TorchRunner(ck)
    assert np.abs(ort.encode(clouds[1][0]) - pt.encode(clouds[1][0])).max() <= 1e-4
    with pytest.raises(CheckpointError, match="point_scale"):
        HopArchitecture.from_dict(arch.to_dict() | {"point_scale": [0.1, 0.0, 0.1]})



def test_the_hands_view_is_the_nearest_points_in_the_palm_frame_and_travels_through_onnx(tmp_path):
    """The hand's view rows are the means of the k points nearest the palm, in the palm's frame
    (units of 0.1 m, clipped); a network given them starts with the actions of the one without
    (its embedding starts at zero) and its ONNX export matches torch on the longer input."""
    from policies.hand_view import CLIP, SCALE, hand_rows, network_visual, palm_poses   # noqa: PLC0415

    q = np.array(D.ARM_HOME + D.HAND_HOME)
    T = palm_poses(q[None])[0]
    local = np.array([[0.05, 0.0, 0.0], [0.0, 0.06, 0.0], [0.0, 0.0, -0.07], [0.3, 0.1, 0.0], [0.0, -0.4, 0.2]])
    pts = (T[:3, :3] @ local.T).T + T[:3, 3]                     # known palm-frame points, in the base frame
    rows = hand_rows(pts[None], q[None], (1, 3))[0]
    np.testing.assert_allclose(rows[0], local[0] / SCALE, atol=1e-9)
    np.testing.assert_allclose(rows[1], local[:3].mean(0) / SCALE, atol=1e-9)
    far = hand_rows((pts + [0.0, 0.0, 3.0])[None], q[None], (1,))[0, 0]
    assert np.abs(far).max() == CLIP                              # 3 m up: clipped, not 30 units
    bent = q.copy()
    bent[0] += 0.3                                               # another posture sees the same points elsewhere
    assert np.abs(hand_rows(pts[None], bent[None], (1,)) - rows[:1]).max() > 0.5
    with pytest.raises(PolicyError, match="counts"):
        hand_rows(pts[None], q[None], (6,))

    torch.manual_seed(1)
    kw = dict(visual="pointcloud", hidden=64, layers=2, heads=2, inner=128, num_points=5)
    viewed, plain = HopPolicy(HopArchitecture(hand_view=(1, 3), **kw)).eval(), HopPolicy(HopArchitecture(**kw)).eval()
    missing, unexpected = viewed.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("embed_hand.") for k in missing)
    vis = torch.from_numpy(np.repeat(network_visual(pts.astype(np.float32), q, (1, 3))[None], 4, 0))
    assert vis.shape == (4, 7, 3) and viewed.arch.embedding_dim == 64 + 6
    p = torch.zeros((1, 4, 23))
    torch.testing.assert_close(viewed.act(p, viewed.encode_visual(vis)[None]),
                               plain.act(p, plain.encode_visual(vis[:, :5])[None]))
    with torch.no_grad():
        for w in viewed.embed_hand.parameters():
            w.normal_(0.0, 0.1)                                  # as if trained: the rows now count
    spec = VisualSpec("pointcloud", points=PointCloudPreprocess(num_points=5))
    ck = load_checkpoint(save_checkpoint(tmp_path / "ck", viewed, PolicySchema.hop(spec), {"source": "test"}))
    assert ck.arch.hand_view == (1, 3)
    ort, pt = OnnxRunner(ck, folder=tmp_path / "onnx"), TorchRunner(ck)
    e_ort, e_pt = ort.encode(vis[0].numpy()), pt.encode(vis[0].numpy())
    assert e_ort.shape == (70,) and np.abs(e_ort - e_pt).max() <= 1e-4
    e = np.repeat(e_pt[None], 16, 0)
    assert np.abs(ort.act(np.zeros((16, 23), np.float32), e) - pt.act(np.zeros((16, 23), np.float32), e)).max() <= 1e-4
    e2 = e.copy()
    e2[:, 64:] += 1.0                                            # the hand elsewhere: another action
    assert np.abs(pt.act(np.zeros((16, 23), np.float32), e2) - pt.act(np.zeros((16, 23), np.float32), e)).max() > 1e-3
    for bad in ({"hand_view": [0]}, {"hand_view": [6]}, {"visual": "depth", "hand_view": [1]}):
        with pytest.raises(CheckpointError, match="hand_view"):
            HopArchitecture.from_dict(HopArchitecture(**kw).to_dict() | bad)

def test_every_cli_help_page_prints(capsys):
    """``robot-runtime --help`` and each command's help render (a bare % in a help string once
    made the top-level help raise TypeError)."""
    import re

    from robot_runtime.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    top = capsys.readouterr().out
    commands = re.search(r"\{([a-z_,-]+)\}", top).group(1).split(",")
    assert {"sim", "eval"} <= set(commands) and "95% interval" in top, top
    for c in commands:
        with pytest.raises(SystemExit) as done:
            main([c, "--help"])
        assert done.value.code == 0, c
