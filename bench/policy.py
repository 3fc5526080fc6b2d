"""python -m bench.policy: per-step policy latency, three ways side by side, and on the twin.

Part 1, in this process, on depth frames rendered by the twin during a scripted episode,
with the shipped checkpoint's weights, one CPU thread each:

- ``onnxruntime``: the runtime's path: preprocess the new frame, encode it once (cached),
  run the exported 32-token trunk, turn its output into targets (the checkpoint's action
  representation) and reorder;
- ``torch``: the same steps with the eager torch runner;
- ``reference``: the usual research deployment: a Hugging Face ``transformers`` GPT-2
  trunk (position table zeroed, weights copied in) in torch eager, re-encoding all 16
  frames of the window every step.

The three run interleaved, step by step, each first in turn (none always runs right after
another, whose work would leave it the colder caches), so machine noise hits all alike. The
reference's actions are checked against ours (parity within ``PARITY_TOL``, 1e-3 rad) over
the warm-up steps, before any step is timed, and over the run; a difference stops the benchmark.

Part 2, on the twin: the whole graph (sim, controllers, policy_node) runs for
``BENCH_TWIN_S`` seconds (default 30) twice, the twin's camera at ``BENCH_TWIN_CAMERA_HZ``
(default 60): ``twin`` with the policy's free 20 Hz grid, ``twin_locked`` with ticks locked to
the camera's frames (``policy.tick_lock``). The timing logs of policy_node and the arm
controller give the age of the frame used at each tick, frame stamp -> published target, and
frame stamp -> the arm controller's first command from that target (``frame_to_command``),
with a p50 breakdown (frame age at the tick, compute, tick -> published, published -> pick-up).

Writes bench/results/policy.json.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.common import bench_env, latency, require, run_plan_for, write
from policies.checkpoint import load_checkpoint
from policies.history import window_indices
from policies.runners import OnnxRunner, TorchRunner
from robot_runtime import description as D
from robot_runtime.config import load_config
from robot_runtime.perception.preprocess import VisualPreprocessor

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "config" / "sim.yaml"
STEPS = int(os.environ.get("BENCH_POLICY_STEPS", "600"))
TWIN_S = float(os.environ.get("BENCH_TWIN_S", "30"))
TWIN_CAMERA_HZ = float(os.environ.get("BENCH_TWIN_CAMERA_HZ", "60"))
WARMUP = 20
#: The most the reference's targets may differ from ours (rad) for the timings to compare like work.
PARITY_TOL = 1e-3
STAGES = ("preprocess", "encode", "trunk", "post")


class ReferenceGpt2:
    """A research-style step: transformers' GPT2Model trunk, every frame of the window re-encoded."""

    def __init__(self, model):
        from transformers import GPT2Config, GPT2Model  # noqa: PLC0415

        a = model.arch
        cfg = GPT2Config(n_embd=a.hidden, n_layer=a.layers, n_head=a.heads, n_inner=a.inner,
                         n_positions=2 * a.timestep_rows, activation_function="gelu_new", resid_pdrop=0.0,
                         embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=a.ln_eps, vocab_size=1)
        gpt = GPT2Model(cfg).eval()
        sd = {}
        for k, v in model.transformer.state_dict().items():
            conv = any(s in k for s in ("c_attn.weight", "c_proj.weight", "c_fc.weight"))
            sd[k] = v.t().contiguous() if conv else v
        sd["wpe.weight"] = torch.zeros_like(gpt.wpe.weight)     # HOP has no position table in the trunk
        sd["wte.weight"] = gpt.wte.weight.detach()
        missing, unexpected = gpt.load_state_dict(sd, strict=False)
        if [m for m in missing if not m.endswith("attn.bias")] or unexpected:
            raise SystemExit(f"reference weights do not fit GPT2Model: {missing} {unexpected}")
        self.gpt, self.model = gpt, model

    @torch.inference_mode()
    def act(self, proprio: np.ndarray, frames: np.ndarray) -> np.ndarray:
        m = self.model
        t = len(proprio)
        emb = m.encode_visual(torch.from_numpy(frames))                 # all 16 frames, every step
        pos = m.embed_timestep(torch.arange(t))
        p = m.embed_proprio(torch.from_numpy(proprio)) + pos
        x = torch.stack([p, emb + pos], 1).reshape(1, 2 * t, -1)
        h = self.gpt(inputs_embeds=m.embed_ln(x)).last_hidden_state
        return m.predict_action(h[0, 1::2])[-1].numpy()


def recorded_frames(cfg, n: int):
    """Depth frames (m) and joints rendered by the twin during the scripted episode."""
    from policies.twin_demos import scripted_episodes  # noqa: PLC0415
    from robot_runtime.perception.preprocess import VisualSpec  # noqa: PLC0415

    eps, depth = scripted_episodes(cfg, [7], VisualSpec(), progress=False, keep_depth=True)
    reps = int(np.ceil(n / len(depth[0])))
    return np.concatenate([depth[0]] * reps)[:n], np.concatenate([eps[0].q] * reps)[:n]


def trunk_flops(arch, history: int) -> float:
    """Multiply-adds x 2 of one trunk step: the 2 x ``history`` tokens through each layer's
    projections, MLP and attention (the embeddings and heads are small beside them)."""
    tokens = 2 * history
    h, inner = arch.hidden, arch.inner
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inner) + 2 * 2 * tokens * tokens * h
    return float(arch.layers * per_layer)


def single_core_gflops() -> float:
    """This core's float32 matrix-multiply rate (GFLOP/s): torch on one thread, 512x512."""
    a, b = torch.rand(512, 512), torch.rand(512, 512)
    for _ in range(3):
        a @ b
    n, t0 = 20, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 512 ** 3 * n / (time.perf_counter() - t0) / 1e9


def preprocess_stages(pre: VisualPreprocessor, depth: np.ndarray, K: np.ndarray, q: np.ndarray) -> dict:
    """The point-cloud preprocessing of each frame timed stage by stage (ms), through the same
    functions :func:`robot_runtime.perception.preprocess.depth_to_points` calls, in its order; each
    frame's result is checked against ``pre``'s, so the stages time the work the runners do."""
    from robot_runtime.perception import preprocess as P  # noqa: PLC0415
    from robot_runtime.perception.robot_filter import default_self_filter  # noqa: PLC0415

    p, T = pre.spec.points, pre.T_base_camera
    filt = default_self_filter() if p.robot_margin > 0 else None
    names = ("backproject_above_table", "transform_crop", "robot_filter", "sample")
    times = {k: [] for k in names}
    counts = {"cropped": [], "objects": []}
    for i in range(len(depth)):
        t0 = time.perf_counter()
        pts = P._points_above(depth[i], K, T, p.stride, max(p.box_min[2], p.table_z + p.table_margin))
        t1 = time.perf_counter()
        pts = P._crop_kernel(pts @ T[:3, :3].T + T[:3, 3], np.asarray(p.box_min, float), np.asarray(p.box_max, float),
                             float(p.table_z + p.table_margin))
        t2 = time.perf_counter()
        counts["cropped"].append(len(pts))
        if filt is not None:
            objects = ~filt.inside(pts, q[i], p.robot_margin)
            if objects.any():
                pts = pts[objects]
        t3 = time.perf_counter()
        idx = P.frame_seed(p.seed, 0.05 * i).choice(len(pts), p.num_points, replace=len(pts) < p.num_points)
        out = pts[np.sort(idx)].astype(np.float32)
        t4 = time.perf_counter()
        counts["objects"].append(len(pts))
        if not np.array_equal(out, pre(depth[i], K, 0.05 * i, q[i])):
            raise SystemExit(f"preprocess_stages: frame {i} differs from the preprocessor's output")
        if i >= WARMUP:
            for k, v in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                times[k].append(v * 1e3)
    return {**{k: latency(v) for k, v in times.items()},
            "points_p50": {k: float(np.median(v)) for k, v in counts.items()}}


def step_latency(ckpt_path: Path, cfg) -> tuple[dict, dict]:
    torch.set_num_threads(1)
    ck = load_checkpoint(ckpt_path)
    model = ck.build_model()
    runners = {"onnxruntime": OnnxRunner(ck, model), "torch": TorchRunner(ck, model)}
    ref = ReferenceGpt2(model)
    from calibration.extrinsics import camera_pose_for  # noqa: PLC0415
    from robot_runtime.twin.sim import camera_intrinsics  # noqa: PLC0415

    pre = VisualPreprocessor(ck.schema.visual, camera_pose_for(cfg))   # the twin camera: exact pose and K
    schema = ck.schema
    idx = schema.index_in(D.ALL_JOINTS)
    inv = np.argsort(idx)
    K = camera_intrinsics(cfg.twin.camera)
    depth, q = recorded_frames(cfg, STEPS + WARMUP)
    T = schema.history
    print(f"timing {STEPS} steps per runner on {depth.shape[1]}x{depth.shape[2]} twin depth frames ...", flush=True)
    times = {k: {s: [] for s in (*STAGES, "step")} for k in (*runners, "reference")}
    cache = {k: {} for k in runners}     # frame index -> (visual, emb)
    visuals: dict[int, np.ndarray] = {}
    worst = {k: 0.0 for k in runners}
    for i in range(STEPS + WARMUP):
        w = window_indices(i, T)
        proprio_q = q[w][:, idx]
        outs = {}
        order = (*runners, "reference")
        for name in order[i % 3:] + order[:i % 3]:     # each runner first in turn: none always follows another
            t0 = time.perf_counter()
            if name == "reference":
                frames = np.stack([visuals[j] if j != i else pre(depth[i], K, 0.05 * i, q[i]) for j in w])
                t1 = time.perf_counter()
                t2 = t1
                a = ref.act(schema.proprio_in(proprio_q), frames)
            else:
                r = runners[name]
                visual = pre(depth[i], K, 0.05 * i, q[i])
                t1 = time.perf_counter()
                cache[name][i] = (visual, r.encode(visual))
                t2 = time.perf_counter()
                a = r.act(schema.proprio_in(proprio_q), np.stack([cache[name][j][1] for j in w]))
                visuals[i] = visual
            t3 = time.perf_counter()
            target = schema.targets(a, proprio_q[-1])[:, inv]   # the chunk [H, 23], drivers' order
            ok = np.all(np.isfinite(target))
            t4 = time.perf_counter()
            assert ok
            outs[name] = target
            if i >= WARMUP:
                for s, v in zip((*STAGES, "step"), (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
                    times[name][s].append(v * 1e3)
        for name in runners:
            worst[name] = max(worst[name], float(np.abs(outs[name] - outs["reference"]).max()))
        if i == WARMUP - 1 and max(worst.values()) > PARITY_TOL:   # checked before any step is timed
            raise SystemExit(f"the reference's actions differ from ours by {max(worst.values()):.2e} rad over the "
                             f"warm-up steps (tolerance {PARITY_TOL:g}): the comparison would time different work")
    if max(worst.values()) > PARITY_TOL:
        raise SystemExit(f"the reference's actions differ from ours by {max(worst.values()):.2e} rad "
                         f"(tolerance {PARITY_TOL:g})")
    result = {name: {"step": latency(t["step"]), **{s: latency(t[s]) for s in STAGES}}
              for name, t in times.items()}
    if ck.schema.visual.kind == "pointcloud":
        result["preprocess_stages"] = preprocess_stages(pre, depth, K, q)
    flops, rate = trunk_flops(model.arch, T), single_core_gflops()
    floor_ms = flops / (rate * 1e9) * 1e3
    result["trunk_floor"] = {"flops": flops, "single_core_gflops": rate, "floor_ms": floor_ms,
                             "onnxruntime_trunk_p50_ms": result["onnxruntime"]["trunk"]["p50_ms"],
                             "share_of_floor": floor_ms / result["onnxruntime"]["trunk"]["p50_ms"]}
    return result, worst


def twin_timing(cfg_path: Path, camera_hz: float, tick_lock: str) -> dict:
    """The graph on the twin for ``TWIN_S`` s with the twin's camera at ``camera_hz`` and the policy's
    ``tick_lock``: frame age at use, frame stamp -> published target, frame stamp -> the arm
    controller's first command from that target, and where the time goes."""
    import yaml  # noqa: PLC0415

    from robot_runtime.plan import node_plan  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="bench-policy-") as tmp:
        variant = Path(tmp) / "twin.yaml"
        variant.write_text(yaml.safe_dump({"extends": str(cfg_path.resolve()), "twin": {"camera": {"fps": camera_hz}},
                                           "policy": {"tick_lock": tick_lock}}))
        cfg = load_config(variant)
        log, arm_log = Path(tmp) / "policy_timing.npz", Path(tmp) / "arm_timing.npz"
        logs = {"policy_node": log, "arm_controller_node": arm_log}
        plan = [replace(s, parameters={**s.parameters, "timing_log": str(logs[s.name])}) if s.name in logs else s
                for s in node_plan(cfg, str(variant))]
        print(f"running the graph on the twin for {TWIN_S:g} s, camera {camera_hz:g} Hz, ticks {tick_lock} ...",
              flush=True)
        run_plan_for(plan, TWIN_S, Path(tmp), "graph", bench_env())
        d, a = dict(np.load(log)), dict(np.load(arm_log))
    published = np.isfinite(d["published_t"])
    first = int(np.argmax(published))           # from the first action on (start-up waits for inputs)
    sel = (np.arange(len(published)) >= first) & published
    skips = [s for s, k in zip(d["skip"], np.arange(len(published)) >= first) if k and s]
    # the target published at tick `now` is stamped for now + one period: find the arm's pick-up
    stamp_for = d["now"] + 1.0 / cfg.rates.policy_hz
    order = np.argsort(a["target_stamp"])
    ts, pick = a["target_stamp"][order], a["pickup_t"][order]
    j = np.clip(np.searchsorted(ts, stamp_for), 0, max(len(ts) - 1, 0))
    found = sel & (len(ts) > 0) & (np.abs(ts[j] - stamp_for) < 1e-4) if len(ts) else np.zeros_like(sel)
    if not found.any():
        raise SystemExit(f"twin ({tick_lock} ticks): the arm controller picked up none of the {int(sel.sum())} "
                         f"published targets in {TWIN_S:g} s; give it longer (BENCH_TWIN_S)")
    compute = sum(np.nan_to_num(d[k]) for k in STAGES)
    return {"camera_hz": camera_hz, "tick_lock": tick_lock,
            "frame_age": latency(d["frame_age"][sel]),
            "frame_to_target": latency(((d["published_t"] - d["frame_t"]) * 1e3)[sel]),
            "frame_to_command": latency(((pick[j] - d["frame_t"]) * 1e3)[found]),
            "breakdown_p50_ms": {"frame_age_at_tick": float(np.median(d["frame_age"][sel])),
                                 "compute": float(np.median(compute[sel])),
                                 "tick_to_published": float(np.median(((d["published_t"] - d["now"]) * 1e3)[sel])),
                                 "published_to_pickup": float(np.median(((pick[j] - d["published_t"]) * 1e3)[found]))
                                 if found.any() else None},
            "tick_total": latency(d["total"][sel]),
            "missed_ticks": int(d["misses"]) + int(d["overruns"]),
            "ticks_without_action": len(skips), "ticks": int((np.arange(len(published)) >= first).sum())}


def main() -> dict:
    require("bench.policy", "torch", "onnxruntime", "transformers", "mujoco", "rclpy")
    cfg = load_config(CONFIG)
    steps, parity = step_latency(Path(cfg.policy.checkpoint), cfg)
    ort99, ref99, pt99 = (steps[k]["step"]["p99_ms"] for k in ("onnxruntime", "reference", "torch"))
    result = {**steps,
              "speedup_p99_reference_over_onnxruntime": ref99 / ort99,
              "speedup_p99_reference_over_torch": ref99 / pt99,
              "parity_max_abs_rad": parity,
              "targets": {"onnxruntime_p99_ms_at_most": 2.5, "speedup_p99_at_least": 3.0},
              "steps": STEPS, "threads": 1}
    result["twin"] = twin_timing(CONFIG, TWIN_CAMERA_HZ, "free") if TWIN_S > 0 else {}
    result["twin_locked"] = twin_timing(CONFIG, TWIN_CAMERA_HZ, "camera") if TWIN_S > 0 else {}
    path = write("policy", result)
    print(f"\n{'runner':<14}{'stage':<12}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'n':>7}")
    for name in ("onnxruntime", "torch", "reference"):
        for stage in (*STAGES, "step"):
            lat = steps[name][stage]
            if name == "reference" and stage == "encode":
                continue
            label = "enc16+trunk" if name == "reference" and stage == "trunk" else stage
            print(f"{name:<14}{label:<12}{lat['p50_ms']:>9.3f}{lat['p99_ms']:>9.3f}{lat['max_ms']:>9.3f}{lat['n']:>7}")
    print(f"\nreference p99 / onnxruntime p99: {result['speedup_p99_reference_over_onnxruntime']:.1f}x "
          f"(target >= 3x); onnxruntime p99 {ort99:.2f} ms (target <= 2.5 ms)")
    if "preprocess_stages" in steps:
        ps = steps["preprocess_stages"]
        print(f"\npreprocessing by stage (each alone, same frames; points p50: {ps['points_p50']}):")
        for k, lat in ps.items():
            if k != "points_p50":
                print(f"  {k:<26}{lat['p50_ms']:>9.3f}{lat['p99_ms']:>9.3f}{lat['max_ms']:>9.3f}")
    tf = steps["trunk_floor"]
    print(f"trunk: {tf['flops'] / 1e6:.0f} MFLOP per step; at this core's {tf['single_core_gflops']:.0f} GFLOP/s "
          f"(float32 matmul) its floor is {tf['floor_ms']:.2f} ms, onnxruntime's trunk p50 "
          f"{tf['onnxruntime_trunk_p50_ms']:.2f} ms runs at {100 * tf['share_of_floor']:.0f}% of that rate")
    print(f"reference p99 / torch p99: {result['speedup_p99_reference_over_torch']:.1f}x; "
          f"largest action difference to the reference: {max(parity.values()):.2e} rad")
    if result["twin"]:
        print(f"\ntwin, {TWIN_S:g} s each, camera {TWIN_CAMERA_HZ:g} Hz (ms):")
        print(f"{'ticks':<8}{'measure':<20}{'p50':>8}{'p99':>8}{'max':>8}")
        for key in ("twin", "twin_locked"):
            tw = result[key]
            for m in ("frame_age", "frame_to_target", "frame_to_command"):
                lat = tw[m]
                print(f"{tw['tick_lock']:<8}{m:<20}{lat['p50_ms']:>8.1f}{lat['p99_ms']:>8.1f}{lat['max_ms']:>8.1f}")
            print(f"{tw['tick_lock']:<8}missed ticks {tw['missed_ticks']}, ticks without action "
                  f"{tw['ticks_without_action']} of {tw['ticks']}; p50 breakdown {tw['breakdown_p50_ms']}")
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
