"""The ``robot-runtime`` command line.

    robot-runtime sim [--config config/sim.yaml] [--duration S] [--task T] [--seed N]
    robot-runtime check-config FILE
    robot-runtime plan [--config FILE]
    robot-runtime description [--write] [--out DIR]
    robot-runtime control {arm,estop,policy,teleop,status} [--only arm|hand]
    robot-runtime policy check CHECKPOINT [--config FILE]
    robot-runtime policy import HOP.pt OUT_FOLDER [--hand-order index,thumb,middle,ring]
    robot-runtime policy {swap CHECKPOINT,rollback,start,stop,reset,status}
    robot-runtime data {list,inspect,audit,recover} PATH
    robot-runtime data export EPISODES OUT [--format lerobot|mcap|sqlite3]
    robot-runtime data from-bag BAG --task T --out DIR [--config FILE] [--start S] [--end S]
    robot-runtime finetune EPISODES --out DIR [--base CKPT | --scratch] [--resume] [--promote]
    robot-runtime pretrain EPISODES --out DIR [--cache-mb M] [--resume]     (also under torchrun)
    robot-runtime eval CHECKPOINT --task T [--rollouts N]
    robot-runtime placements --task T [-n N] [--json]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from robot_runtime.errors import RobotRuntimeError


def default_config(name: str) -> Path:
    """A packaged config: the checkout's ``config/`` or the installed share folder."""
    here = Path(__file__).resolve().parent.parent / "config" / name
    if here.is_file():
        return here
    installed = Path(sys.prefix) / "share" / "robot_runtime" / "config" / name
    if installed.is_file():
        return installed
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory("robot_runtime")) / "config" / name
    except Exception:
        return here


def _cmd_sim(args) -> int:
    from robot_runtime.config import load_config
    from robot_runtime.launcher import run_graph
    from robot_runtime.plan import node_plan

    path = Path(args.config or default_config("sim.yaml"))
    cfg = load_config(path)
    if args.task:
        cfg.twin.task = args.task
    if args.seed is not None:
        cfg.twin.seed = args.seed
    if args.viz:
        cfg.viz.enabled, cfg.viz.sink = True, args.viz
        cfg.viz.target = args.viz_target or cfg.viz.target
    plan = node_plan(cfg, str(path.resolve()))
    if args.viz:   # the node reads its section from the file: pass what the command line changed
        for spec in plan:
            if spec.name == "viz_node":
                spec.parameters.update({"sink": cfg.viz.sink, "target": cfg.viz.target})
    return run_graph(plan, duration=args.duration)


def _cmd_check(args) -> int:
    from robot_runtime.config import config_to_dict, load_config

    cfg = load_config(args.file)
    print(json.dumps(config_to_dict(cfg), indent=2))
    print(f"{args.file}: ok", file=sys.stderr)
    return 0


def _cmd_plan(args) -> int:
    from robot_runtime.config import load_config
    from robot_runtime.plan import node_plan

    path = Path(args.config or default_config("sim.yaml"))
    for spec in node_plan(load_config(path), str(path.resolve())):
        print(spec.executable, " ".join(spec.ros_args()))
    return 0


def _cmd_description(args) -> int:
    from robot_runtime.description import build

    if args.write or args.out:
        for p in build.write_packaged(args.out):
            print(p)
    else:
        print(build.urdf_text())
    return 0


CONTROL_ACTIONS = {"arm": "arm", "estop": "estop", "policy": "select_policy", "teleop": "select_teleop"}


def _cmd_control(args) -> int:
    """Call a service on both controllers (the e-stop first on the arm), or print their status."""
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from robot_runtime import ros_io

    nodes = [f"{p}_controller_node" for p in (("arm", "hand") if not args.only else (args.only,))]
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("robot_runtime_control_cli", context=context)
    code = 0
    try:
        if args.action == "status":
            got: dict[str, str] = {}
            for n in nodes:
                node.create_subscription(String, f"/{n}/status", lambda m, n=n: got.__setitem__(n, m.data),
                                         ros_io.LATCHED_QOS)
            end = time.monotonic() + args.timeout
            while len(got) < len(nodes) and time.monotonic() < end:
                _spin_once(node, context)
            for n in nodes:
                print(f"{n}: {got.get(n, 'no status (is it running?)')}")
            return 0 if len(got) == len(nodes) else 1
        for n in nodes:
            client = node.create_client(Trigger, f"/{n}/{CONTROL_ACTIONS[args.action]}")
            if not client.wait_for_service(timeout_sec=args.timeout):
                print(f"{n}: service {client.srv_name} not available (is the node running?)", file=sys.stderr)
                code = 1
                continue
            future = client.call_async(Trigger.Request())
            end = time.monotonic() + args.timeout
            while not future.done() and time.monotonic() < end:
                _spin_once(node, context)
            res = future.result() if future.done() else None
            if res is None:
                print(f"{n}: no answer within {args.timeout} s", file=sys.stderr)
                code = 1
            else:
                print(f"{n}: {'ok' if res.success else 'REFUSED'}: {res.message}")
                code = code or (0 if res.success else 1)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)
    return code


POLICY_SERVICES = {"rollback": "rollback", "start": "start_episode", "stop": "stop_episode",
                   "reset": "reset_episode"}


def _cmd_policy(args) -> int:
    """Offline checkpoint tools, or a call into the running policy_node."""
    if args.action == "check":
        from policies.checkpoint import load_checkpoint
        from robot_runtime import description as D
        from robot_runtime.config import load_config

        cfg = load_config(Path(args.config or default_config("sim.yaml")))
        ck = load_checkpoint(args.checkpoint)
        ck.check_against_robot(D.ALL_JOINTS, D.ALL_LIMITS, cfg.rates.policy_hz)
        v = ck.schema.visual
        print(f"{ck.path}: ok ({ck.name}); visual {v.kind} {v.shape}, history {ck.schema.history}, "
              f"{ck.schema.policy_hz:g} Hz; provenance {json.dumps(ck.provenance)}")
        return 0
    if args.action == "import":
        from policies.importer import import_hop_file

        out = import_hop_file(args.checkpoint, args.out, fingers=tuple(args.hand_order.split(",")))
        print(f"wrote {out}")
        return 0
    import rclpy
    from std_msgs.msg import String
    from std_srvs.srv import Trigger

    from robot_runtime import ros_io

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("robot_runtime_policy_cli", context=context)
    try:
        if args.action == "status":
            got: list[str] = []
            node.create_subscription(String, "/policy_node/status", lambda m: got.append(m.data), ros_io.LATCHED_QOS)
            end = time.monotonic() + args.timeout
            while not got and time.monotonic() < end:
                _spin_once(node, context)
            print(got[-1] if got else "policy_node: no status (is it running?)")
            return 0 if got else 1
        if args.action == "swap":
            if not args.checkpoint:
                raise RobotRuntimeError("policy swap needs a checkpoint folder")
            ok, message = _swap(node, context, args.checkpoint, max(args.timeout, 30.0))
            print(f"policy_node: {message}")
            return 0 if ok else 1
        client = node.create_client(Trigger, f"/policy_node/{POLICY_SERVICES[args.action]}")
        res = _call(node, context, client, Trigger.Request(), max(args.timeout, 30.0))
        if res is None:
            return 1
        print(f"policy_node: {'ok' if res.success else 'REFUSED'}: {res.message}")
        return 0 if res.success else 1
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def _swap(node, context, checkpoint, timeout: float) -> tuple[bool, str]:
    """Set the running policy_node's ``checkpoint`` parameter (its hot-swap); (swapped, message)."""
    from rcl_interfaces.srv import SetParameters
    from rclpy.parameter import Parameter

    path = str(Path(checkpoint).resolve())
    client = node.create_client(SetParameters, "/policy_node/set_parameters")
    req = SetParameters.Request(parameters=[Parameter("checkpoint", value=path).to_parameter_msg()])
    res = _call(node, context, client, req, timeout)
    if res is None:
        return False, f"no answer from /policy_node/set_parameters within {timeout:g} s (is it running?)"
    r = res.results[0]
    return r.successful, ("swapped to " + path) if r.successful else "REFUSED: " + r.reason


def promote_checkpoint(checkpoint, timeout: float = 60.0) -> tuple[bool, str]:
    """Hot-swap ``checkpoint`` into the running policy_node; (swapped, message)."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("robot_runtime_promote", context=context)
    try:
        return _swap(node, context, checkpoint, timeout)
    finally:
        node.destroy_node()
        rclpy.shutdown(context=context)


def parse_counts(text: str) -> tuple[int, ...]:
    """'4,16' -> (4, 16): positive whole numbers, comma-separated (an argparse type)."""
    try:
        out = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        out = ()
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive whole numbers separated by commas, e.g. 4,16")
    return out


def _cmd_finetune(args) -> int:
    """Behaviour cloning on recorded episodes; optionally promote the result into policy_node."""
    from policies.finetune import FinetuneConfig, FinetuneJob, provenance_summary
    from robot_runtime.config import load_config

    extra = {k: v for k, v in (("lr", args.lr), ("chunk", args.chunk), ("eval_every", args.eval_every),
                               ("keep", args.keep), ("precision", args.precision), ("select_after", args.select_after),
                               ("noise_arm", args.noise_arm), ("noise_hand", args.noise_hand),
                               ("shift_radius", args.shift_radius), ("detour_radius", args.detour_radius))
             if v is not None}
    cfg = FinetuneConfig(steps=args.steps, batch=args.batch, val_fraction=args.val_fraction,
                         save_every=args.save_every, seed=args.seed, device=args.device, threads=args.threads,
                         nice=args.nice, representation=args.representation, freeze_encoder=args.freeze_encoder,
                         mirror=args.mirror, mirror_keep_hand=args.mirror_keep_hand, move_others=args.move_others,
                         turn_carry=args.turn_carry, shift_cell=args.shift_cell, detour=args.detour,
                         hand_view=args.hand_view, cache_mb=args.cache_mb, **extra)
    pretrain = args.cmd == "pretrain"
    base = None if (pretrain or args.scratch) else \
        (args.base or str(load_config(Path(args.config or default_config("sim.yaml"))).policy.checkpoint))
    from policies.distributed import env_rank_and_size

    job = FinetuneJob(args.episodes, args.out, base, cfg, resume=args.resume)
    rank, world = env_rank_and_size()
    main = rank == 0   # under torchrun, rank 0 alone reports
    if main:
        for w in job.audit.warnings():
            print(f"demo audit: warning: {w}", flush=True)
        n_train = sum(e.split == "train" for e in job.episodes)
        print(f"{'pretraining' if pretrain else 'finetuning'} {'from scratch' if base is None else 'from ' + job.base.name} "
              f"on {n_train} training and {len(job.episodes) - n_train} validation episodes"
              + (f" ({len(job.skipped)} skipped: unsuccessful or partial)" if job.skipped else "")
              + (f", {world} processes, global batch {cfg.batch}" if world > 1 else ""), flush=True)
    def progress(d: dict) -> None:
        print("PROGRESS " + json.dumps(d), flush=True)
    res = job.run(progress if args.progress_json else None, bar=not args.progress_json)
    if not main:
        return 0
    print(f"wrote {res.checkpoint}: {provenance_summary(res.checkpoint)}", flush=True)
    if getattr(args, "promote", False):
        ok, message = promote_checkpoint(res.checkpoint, args.timeout)
        print(f"promote: policy_node {message}", flush=True)
        return 0 if ok else 1
    return 0


def _cmd_eval(args) -> int:
    """Rollouts of a checkpoint on the in-process twin; the success rate with its 95% interval."""
    from policies.evaluate import evaluate
    from robot_runtime.config import load_config

    cfg = load_config(Path(args.config or default_config("sim.yaml")))
    out = Path(args.out) if args.out else Path("eval") / f"{Path(args.checkpoint).name}_{args.task}"
    rep = evaluate(cfg, args.checkpoint, args.task, args.rollouts, args.seed, out, args.duration or None,
                   args.runner, workers=args.workers)
    print(rep.line())
    def cm(x) -> str:
        return "-" if x is None else f"{100 * x:.1f}"
    reach = [r for r in rep.rollouts if r.closest_m is not None]
    if reach:
        carry = any(r.end_m is not None for r in reach)
        print("per rollout (seed: closest approach to the object, highest lift"
              + ("; closest the lifted object came to the container's centre, where it ended" if carry else "")
              + "): " + ", ".join(
                  f"{r.seed}{'' if r.success else ' (failed)'}: {cm(r.closest_m)} / {100 * r.lift_m:+.1f}"
                  + (f"; {cm(r.carried_m)} / {cm(r.end_m)}" if carry else "") + " cm" for r in reach))
    print(f"rollouts saved in {out} (eval.json, one episode file each)")
    if args.demos:
        from policies.diagnostics import diagnose, write_json

        d = diagnose(cfg, args.checkpoint, args.task, args.demos, out / "diagnostics",
                     rollouts=min(args.rollouts, 10), workers=args.workers)
        ol = d["open_loop"]
        print("open loop on the demos: next arm target error per joint (rad) "
              + " ".join(f"{x:.4f}" for x in ol["target_error_rad"]) + "; a demo step "
              + " ".join(f"{x:.4f}" for x in ol["demo_step_rad"]) + "; arm error by chunk row "
              + " ".join(f"{x:.4f}" for x in ol["target_error_by_row_rad"]))
        if "replay" in d:
            print(f"replay of demo seed {d['replay']['seed']}'s recorded commands: "
                  f"{'solves the task' if d['replay']['success'] else 'FAILS: the fault is in execution, not learning'}")
        if "demo_seeds" in d:
            ds = d["demo_seeds"]
            print(f"on the demos' own placements: {sum(ds['successes'])}/{ds['rollouts']} (new placements "
                  f"{rep.successes}/{len(rep.rollouts)})")
        if d.get("rollout_vs_demo_png"):
            print(f"a failed rollout against its demo: {d['rollout_vs_demo_png']}")
        print(f"diagnostics: {write_json(out / 'diagnostics' / 'diagnostics.json', d)}")
    if args.handover:
        from policies.diagnostics import phase_handover, write_json
        from robot_runtime.teleop.scripted import LIFT_SUCCESS_M

        h = phase_handover(cfg, args.checkpoint, args.task, args.handover, args.seed, workers=args.workers,
                           out_dir=out / "handover")
        print(f"which phase fails ({args.handover} placements from seed {args.seed}; the scripted expert drives "
              f"until the phase begins, the policy from there):")
        for phase, r in h["phases"].items():
            lifted = sum(1 for x in r["lift_m"] if x is not None and x > LIFT_SUCCESS_M)
            print(f"  policy from {phase:<8} {sum(r['successes'])}/{r['rollouts']} = {r['success_rate']:.2f} "
                  f"(lifted {lifted})")
        print(f"handover: {write_json(out / 'handover' / 'handover.json', h)}")
    if args.rrd:
        from robot_runtime.viz.replay import log_episode
        from robot_runtime.viz.rerun_log import RolloutLogger

        for r in rep.rollouts:
            rrd = Path(r.file).with_name(Path(r.file).name.replace(".episode.npz", ".rrd"))
            logger = RolloutLogger("save", str(rrd), recording_id=Path(r.file).stem)
            log_episode(logger, r.file)
            logger.close()
        print("each rollout also saved as .rrd next to its episode file (open with: rerun FILE.rrd)")
    return 0


def _cmd_calibrate(args) -> int:
    """Hand-eye calibration of the camera: through the graph (calibration_node), or on the twin in this process."""
    from robot_runtime.config import load_config

    path = Path(args.config or default_config("sim.yaml" if args.direct else "sim_calibrate.yaml"))
    cfg = load_config(path)
    if args.direct:
        return _calibrate_direct(cfg, args)
    from robot_runtime.launcher import run_graph
    from robot_runtime.plan import node_plan

    if not cfg.calibration.enabled:
        raise RobotRuntimeError(f"{path}: calibration.enabled is false; use config/sim_calibrate.yaml, or a robot "
                                "config with a calibration section (README: Camera calibration)")
    plan = node_plan(cfg, str(path.resolve()))
    for spec in plan:   # the node reads its section from the file: pass what the command line changed
        if spec.name == "calibration_node":
            rrd = args.rrd if not args.rrd or args.rrd.startswith("rerun+") else str(Path(args.rrd).resolve())
            spec.parameters.update({"out": str(Path(args.out).resolve()) if args.out else "", "rrd": rrd or "",
                                    "poses": args.poses or 0})
    return run_graph(plan, until="calibration_node")


def _calibrate_direct(cfg, args) -> int:
    from calibration.handeye import pose_error
    from calibration.session import run_and_write

    logger = None
    if args.rrd:
        from robot_runtime.viz.rerun_log import RolloutLogger

        logger = RolloutLogger("save", args.rrd, recording_id="calibration")
    run, path = run_and_write(cfg, args.out or "runs/calibration/T_base_camera.yaml", args.poses or 15, args.seed,
                              logger)
    if logger is not None:
        logger.close()
    r, c = run.result.summary(), run.check
    T = run.result.T_base_camera
    print(f"marker seen at {len(run.sightings)} of {run.planned} poses; {r['inliers']} agree "
          f"(reprojection median {r['reprojection_px']['median']:.2f} px, max {r['reprojection_px']['max']:.2f} px)")
    print(f"camera in the base frame: position {[round(float(v), 4) for v in T[:3, 3]]} m")
    print(f"verification: median depth residual {c.median_abs_m * 1e3:.1f} mm on {c.robot_pixels} robot pixels "
          f"(picture: {path.with_suffix('.png')})")
    from calibration.extrinsics import camera_pose_for

    dp, dr = pose_error(T, camera_pose_for(cfg))
    print(f"the twin's true camera pose is known: error {dp:.2f} mm, {dr:.3f} deg")
    print(f"wrote {path}; use it with  policy: {{calibration_file: {path}}}")
    return 0


def _cmd_replay(args) -> int:
    """Show a recorded episode in Rerun: spawn a viewer, connect to one, or save an .rrd."""
    from robot_runtime.viz.replay import log_episode
    from robot_runtime.viz.rerun_log import RolloutLogger

    sink, target = ("save", args.rrd) if args.rrd else ("connect", args.connect) if args.connect else ("spawn", "")
    logger = RolloutLogger(sink, target, recording_id=Path(args.episode).name)
    n = log_episode(logger, args.episode, progress=True)
    logger.close()
    print(f"replayed {n} steps of {args.episode}" + (f" into {args.rrd}" if args.rrd else ""))
    return 0


def _cmd_teleop(args) -> int:
    """engage/disengage/status on the running teleop_node, or collect scripted demos on the twin."""
    from std_srvs.srv import Trigger

    from robot_runtime.teleop.collect import DemoCollector
    from robot_runtime.twin.scene import covering_seeds

    col = DemoCollector(timeout_s=args.timeout)
    try:
        if args.action == "collect":
            seeds = [args.seed + i for i in range(args.episodes)]
            if args.placements == "cover":
                col.wait("the twin's episode", lambda: "/twin/episode" in col.status)
                seeds = covering_seeds(col.status["/twin/episode"]["task"], args.episodes, args.seed)
                print(f"placement seeds covering the table: {seeds}", flush=True)
            ok = 0
            for i, seed in enumerate(seeds):
                ep = col.episode(seed)
                ok += ep.success
                print(f"episode {i + 1}/{args.episodes} seed {ep.seed}: {'success' if ep.success else 'failure'}, "
                      f"dropped {sum(ep.dropped.values())} steps -> {ep.file}", flush=True)
            print(f"{ok}/{args.episodes} successful")
            return 0
        if args.action == "status":
            col.wait("teleop_node's status", lambda: "/teleop_node/status" in col.status)
            print(json.dumps(col.status["/teleop_node/status"]))
            return 0
        res = col.call(Trigger, f"/teleop_node/{args.action}", Trigger.Request())
        print(f"teleop_node: {'ok' if res.success else 'REFUSED'}: {res.message}")
        return 0 if res.success else 1
    finally:
        col.close()


def _cmd_placements(args) -> int:
    """Where to put the objects for each demo: a table (or JSON) in the robot's base frame."""
    from robot_runtime.twin import scene

    if args.task not in scene.TASKS:
        raise RobotRuntimeError(f"placements: unknown --task {args.task!r} (one of {', '.join(scene.TASKS)})")
    seeds = scene.covering_seeds(args.task, args.demos, args.seed)
    rows = [{"demo": i + 1, "seed": s, "objects": {
        n: {"x_m": round(x, 3), "y_m": round(y, 3), "yaw_deg": round(math.degrees(yaw), 1)}
        for n, (x, y, yaw) in scene.draw_placement(args.task, s).items()}} for i, s in enumerate(seeds)]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{args.task}: {args.demos} placements covering the table (base frame: x forward, y left, m; "
          f"yaw about z, deg)")
    for r in rows:
        print(f"demo {r['demo']:2d} (seed {r['seed']:3d}): " + "; ".join(
            f"{n} x {o['x_m']:.3f} y {o['y_m']:+.3f} yaw {o['yaw_deg']:+6.1f}" for n, o in r["objects"].items()))
    return 0


def _cmd_record(args) -> int:
    """start/stop/discard/status on the running recorder_node."""
    from std_srvs.srv import SetBool, Trigger

    from robot_runtime.teleop.collect import DemoCollector

    col = DemoCollector(timeout_s=args.timeout)
    try:
        if args.action == "status":
            col.wait("recorder_node's status", lambda: "/recorder_node/status" in col.status)
            print(json.dumps(col.status["/recorder_node/status"]))
            return 0
        if args.action == "start":
            if not args.task:
                raise RobotRuntimeError("record start needs --task (grasp_lift, grasp_drop, grasp_pour, ...)")
            col.set_params("recorder_node", task=args.task, operator_note=args.note)
            res = col.call(Trigger, "/recorder_node/start_episode", Trigger.Request())
        elif args.action == "stop":
            res = col.call(SetBool, "/recorder_node/stop_episode", SetBool.Request(data=not args.fail))
        else:
            res = col.call(Trigger, "/recorder_node/discard_episode", Trigger.Request())
        print(f"recorder_node: {'ok' if res.success else 'REFUSED'}: {res.message}")
        return 0 if res.success else 1
    finally:
        col.close()


def _cmd_data(args) -> int:
    """Offline dataset tools."""
    from robot_runtime.data import dataset
    from robot_runtime.data.episode_file import recover_partial

    if args.action == "list":
        rows = dataset.list_episodes(args.path)
        for r in rows:
            flag = {True: "success", False: "failure", None: "-"}[r.success]
            print(f"{r.status:10s} {r.task:12s} {r.steps:5d} steps  {flag:8s} dropped {r.dropped:3d}  "
                  f"{r.path.name}  {r.detail}")
        print(f"{sum(r.status == 'ok' for r in rows)} episodes, {sum(r.status == 'partial' for r in rows)} "
              f"unfinished, {sum(r.status == 'unreadable' for r in rows)} unreadable")
        return 0
    if args.action == "inspect":
        print(json.dumps(dataset.inspect_episode(args.path), indent=1))
        return 0
    if args.action == "recover":
        print(f"wrote {recover_partial(args.path)}")
        return 0
    if args.action == "audit":
        from robot_runtime.data.audit import audit_folder

        try:
            rep = audit_folder(args.path, horizon=args.horizon, successful_only=not args.all)
        except ValueError as exc:
            raise RobotRuntimeError(str(exc)) from exc
        print(rep.table())
        if args.json:
            Path(args.json).write_text(json.dumps(rep.to_dict(), indent=1))
            print(f"wrote {args.json}")
        return 0 if rep.ok else 1
    out_dir = args.out_dir or args.out
    if args.action == "from-bag":
        from robot_runtime.config import load_config  # noqa: PLC0415
        from robot_runtime.data.rosbag import episode_from_bag  # noqa: PLC0415

        if not args.task or not out_dir:
            raise RobotRuntimeError("data from-bag needs --task and --out (the episode folder)")
        from calibration.extrinsics import calibration_metadata  # noqa: PLC0415
        from robot_runtime.nodes.recorder_node import policy_schema  # noqa: PLC0415

        cfg = load_config(Path(args.config or default_config("sim.yaml")))
        res = episode_from_bag(args.path, args.task, out_dir, cfg, policy_schema(cfg), calibration_metadata(cfg),
                               success=not args.failed, start_s=args.start, end_s=args.end, operator_note=args.note)
        print(res.summary())
        return 0
    if not out_dir:
        raise RobotRuntimeError("data export needs an output folder")
    if args.format == "lerobot":
        out = dataset.export_lerobot(args.path, out_dir, successful_only=args.successful_only)
        print(f"wrote a LeRobotDataset v3 layout to {out}")
        return 0
    from robot_runtime.data.rosbag import export_bag  # noqa: PLC0415

    files = [Path(args.path)] if Path(args.path).is_file() else dataset.episode_files(args.path)
    if args.successful_only:
        files = [f for f in files if dataset.read_meta(f).get("success") is True]
    if not files:
        raise RobotRuntimeError(f"no episodes to export from {args.path}")
    for f in files:   # one bag folder per episode
        bag = export_bag(f, Path(out_dir) / f.name.removesuffix(".episode.npz"), storage=args.format)
        print(f"wrote {bag} ({args.format})")
    return 0


def _call(node, context, client, request, timeout: float):
    """Call a service and wait for the answer; None (and a message) when there is none."""
    if not client.wait_for_service(timeout_sec=min(timeout, 5.0)):
        print(f"service {client.srv_name} not available (is the node running?)", file=sys.stderr)
        return None
    future = client.call_async(request)
    end = time.monotonic() + timeout
    while not future.done() and time.monotonic() < end:
        _spin_once(node, context)
    if not future.done():
        print(f"{client.srv_name}: no answer within {timeout:g} s", file=sys.stderr)
        return None
    return future.result()


def _spin_once(node, context) -> None:
    from rclpy.executors import SingleThreadedExecutor

    ex = getattr(node, "_cli_executor", None)
    if ex is None:
        ex = node._cli_executor = SingleThreadedExecutor(context=context)
        ex.add_node(node)
    ex.spin_once(timeout_sec=0.05)


def _train_parser(sub, name: str) -> None:
    """``finetune`` (from a base checkpoint, or --scratch) and ``pretrain`` (from scratch, on
    interaction data: the prior); both run unchanged under torchrun."""
    if name == "finetune":
        p = sub.add_parser("finetune", help="behaviour cloning on recorded episodes (HOP recipe); --promote hot-swaps "
                                            "it; runs under torchrun on many processes")
    else:
        p = sub.add_parser("pretrain", help="pretrain a prior from scratch on interaction episodes (then finetune "
                                            "--base it); runs under torchrun on many processes and machines")
    p.add_argument("episodes", nargs="+", help="episode folders or files (unsuccessful and partial ones are skipped)")
    p.add_argument("--out", required=True, help="output checkpoint folder (interval checkpoints and state inside)")
    if name == "finetune":
        p.add_argument("--base", help="checkpoint to start from (default: the config's policy.checkpoint)")
    if name == "finetune":
        p.add_argument("--scratch", action="store_true", help="start from random weights instead")
    if name == "finetune":
        p.add_argument("--config", help="runtime config (for the default base; default: config/sim.yaml)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, help="peak learning rate (default: 3e-4 chunked, 1e-4 HOP)")
    p.add_argument("--representation", default="chunked", choices=["chunked", "hop"],
                   help="from scratch: chunks of arm-relative, hand-absolute targets, normalised by the demos' "
                        "statistics (chunked), or HOP's one absolute target (hop); a base keeps its own")
    p.add_argument("--chunk", type=int, help="from scratch, chunked: targets predicted per tick (default 10)")
    p.add_argument("--noise-arm", type=float, metavar="RAD", help="chunked: std of the noise on the arm's joints in "
                                                                  "training (default 0.01 rad)")
    p.add_argument("--noise-hand", type=float, metavar="RAD", help="chunked: std of the noise on the hand's joints in "
                                                                   "training (default 0.1 rad)")
    p.add_argument("--freeze-encoder", action="store_true", help="keep the base's visual encoder fixed (faster)")
    p.add_argument("--mirror", action="store_true", help="also train on each demo mirrored across the base's x-z "
                                                        "plane (point clouds; demos from a mirror-symmetric start)")
    p.add_argument("--mirror-keep-hand", action="store_true",
                   help="also train on each demo at its placement mirrored across the base's x-z plane, done by "
                        "the same hand: the arm re-posed so that the grasp stays a right hand's (point clouds, "
                        "round objects; for side grasps, whose plain mirror image is held thumb down)")
    p.add_argument("--move-others", type=int, default=0, metavar="N",
                   help="also train on N copies of each demo's approach with the objects it does not take moved "
                        "within the area the demos' other objects span (point clouds; teaches which object "
                        "to reach for)")
    p.add_argument("--turn-carry", type=int, default=0, metavar="N",
                   help="also train on N copies of each demo from its grasp on with the cell turned about "
                        "joint 1's axis by up to 0.4 rad (point clouds; more carries between places)")
    p.add_argument("--shift-cell", type=int, default=0, metavar="N",
                   help="also train on N copies of each demo with every object moved across the "
                        "table and the arm's path bent onto them by inverse kinematics (point clouds; the demo "
                        "at placements it was not recorded at)")
    p.add_argument("--shift-radius", type=float, metavar="M", help="--shift-cell: the largest move (default 0.05 m)")
    p.add_argument("--detour", type=int, default=0, metavar="N",
                   help="also train on N copies of each demo whose approach arrives off the demo's by an offset "
                        "and homes in on the object over the last 10 cm to the grasp (point clouds; the way "
                        "back from an approach that ends off)")
    p.add_argument("--detour-radius", type=float, metavar="M",
                   help="--detour: the largest offset across the table (default 0.04 m; half of it up or down)")
    p.add_argument("--hand-view", type=parse_counts, default=(), metavar="K[,K...]",
                   help="give the network the hand's view: for each K, the mean of the K cloud points nearest "
                        "the palm, in the palm's frame (point clouds; e.g. 4,16)")
    p.add_argument("--eval-every", type=int, help="steps between open-loop checks on the held-out demos (default 250)")
    p.add_argument("--keep", choices=["lowest_error", "last"],
                   help="the weights saved: those with the lowest open-loop error on the held-out demos at a check, "
                        "or the last (the EMA's) (default: lowest_error)")
    p.add_argument("--select-after", type=float, metavar="SHARE",
                   help="with --keep lowest_error, only checks at or after this share of the steps are candidates "
                        "(default 0.5; the last always is)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                   help="the training forward pass: bf16 (fp32 weights and optimizer) or fp32; auto, the default, "
                        "is bf16 where the CPU (AMX) or GPU multiplies bf16 in hardware")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share of episodes held out for validation "
                                                                   "(at least one; the default: 1 of 15)")
    p.add_argument("--save-every", type=int, default=500, help="steps between interval checkpoints")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: one fewer than the machine has)")
    p.add_argument("--nice", type=int, default=10, help="lower this process's priority by this much")
    p.add_argument("--cache-mb", type=float, default=0.0,
                   help="read each episode's policy input from disk when used, the last used kept up to this many "
                        "MB (an episode set larger than memory; 0: load all now)")
    p.add_argument("--resume", action="store_true", help="continue the job saved in --out")
    if name == "finetune":
        p.add_argument("--promote", action="store_true", help="hot-swap the result into the running policy_node")
    p.add_argument("--progress-json", action="store_true", help="print progress as JSON lines instead of a bar")
    if name == "finetune":
        p.add_argument("--timeout", type=float, default=60.0, help="promote: seconds to wait for policy_node")
    p.set_defaults(func=_cmd_finetune)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="robot-runtime", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sim", help="run the graph on the MuJoCo twin")
    p.add_argument("--config", help="runtime config YAML (default: config/sim.yaml)")
    p.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: until Ctrl-C)")
    p.add_argument("--task", choices=["grasp_drop", "grasp_pour", "grasp_lift"])
    p.add_argument("--seed", type=int)
    p.add_argument("--viz", choices=["spawn", "connect", "save"], help="also run viz_node: a Rerun viewer, a remote "
                   "one (--viz-target URL) or an .rrd file (--viz-target PATH, default runs/viz/<time>.rrd)")
    p.add_argument("--viz-target", default="", help="the .rrd path or the viewer's gRPC url")
    p.set_defaults(func=_cmd_sim)
    p = sub.add_parser("check-config", help="validate a config file and print it with defaults filled in")
    p.add_argument("file")
    p.set_defaults(func=_cmd_check)
    p = sub.add_parser("plan", help="print the node plan a config starts")
    p.add_argument("--config")
    p.set_defaults(func=_cmd_plan)
    p = sub.add_parser("description", help="print the URDF, or write the packaged URDF and MJCF")
    p.add_argument("--write", action="store_true")
    p.add_argument("--out")
    p.set_defaults(func=_cmd_description)
    p = sub.add_parser("control", help="arm, e-stop or switch the source of the arm and hand controllers")
    p.add_argument("action", choices=[*CONTROL_ACTIONS, "status"],
                   help="arm: start following targets; estop: hold and latch a stop; policy/teleop: choose "
                        "the one source driving the controllers; status: print each controller's status")
    p.add_argument("--only", choices=["arm", "hand"], help="just one controller")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each controller")
    p.set_defaults(func=_cmd_control)
    p = sub.add_parser("policy", help="check or import a checkpoint; hot-swap, roll back or run episodes")
    p.add_argument("action", choices=["check", "import", "swap", *POLICY_SERVICES, "status"],
                   help="check: validate a checkpoint against the robot; import: convert a public HOP "
                        "checkpoint; swap: hot-swap the running policy; rollback: back to the previous "
                        "checkpoint; start/stop/reset: the episode; status: print the policy node's status")
    p.add_argument("checkpoint", nargs="?", help="checkpoint folder (check, swap) or public HOP .pt file (import)")
    p.add_argument("out", nargs="?", help="import: the checkpoint folder to write")
    p.add_argument("--config", help="check: runtime config to check against (default: config/sim.yaml)")
    p.add_argument("--hand-order", default="index,thumb,middle,ring",
                   help="import: the Allegro finger in each of HOP's hand slots (finger A, thumb, finger B, finger C)")
    p.add_argument("--timeout", type=float, default=5.0)
    p.set_defaults(func=_cmd_policy)
    p = sub.add_parser("teleop", help="engage or disengage teleoperation, or collect scripted demos on the twin")
    p.add_argument("action", choices=["engage", "disengage", "status", "collect"])
    p.add_argument("--episodes", type=int, default=5, help="collect: how many episodes")
    p.add_argument("--seed", type=int, default=0, help="collect: the first placement seed (of the pool with 'cover')")
    p.add_argument("--placements", choices=["consecutive", "cover"], default="consecutive",
                   help="collect: the seeds from --seed on, or placements spread over the table (k-means cells of "
                        "400 seeds' placements from --seed on)")
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=_cmd_teleop)
    p = sub.add_parser("placements", help="where to put the objects for each of N demos so that they cover the "
                                          "table (the twin's placements; for teleoperated demos on the robot)")
    p.add_argument("--task", required=True, help="grasp_drop, grasp_pour or grasp_lift")
    p.add_argument("-n", "--demos", type=int, default=15)
    p.add_argument("--seed", type=int, default=0, help="first seed of the pool the placements are chosen from")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_placements)
    p = sub.add_parser("record", help="start, stop (save) or discard an episode on the running recorder")
    p.add_argument("action", choices=["start", "stop", "discard", "status"])
    p.add_argument("--task", help="start: the task name stored with the episode")
    p.add_argument("--note", default="", help="start: an operator note stored with the episode")
    p.add_argument("--fail", action="store_true", help="stop: save the episode flagged as a failure")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=_cmd_record)
    for name in ("finetune", "pretrain"):
        _train_parser(sub, name)
    p = sub.add_parser("eval", help="rollouts of a checkpoint on the twin: success rate with a 95%% interval")
    p.add_argument("checkpoint")
    p.add_argument("--task", default="grasp_lift", choices=["grasp_drop", "grasp_pour", "grasp_lift"])
    p.add_argument("--rollouts", type=int, default=20)
    p.add_argument("--seed", type=int, default=10_000, help="object placement seed of the first rollout")
    p.add_argument("--duration", type=float, default=0.0, help="seconds per rollout (0: the task's default)")
    p.add_argument("--out", help="folder for the rollouts and eval.json (default: eval/<checkpoint>_<task>)")
    p.add_argument("--config", help="runtime config (default: config/sim.yaml)")
    p.add_argument("--runner", default="onnxruntime", choices=["onnxruntime", "torch"])
    p.add_argument("--workers", type=int, default=1, help="processes running rollouts (each takes about a core)")
    p.add_argument("--rrd", action="store_true", help="also save each rollout as a Rerun .rrd file")
    p.add_argument("--demos", help="the demos it was trained on: also the open-loop error on them, rollouts on their "
                                   "placements, a replay of one demo's commands and a failed rollout against its demo")
    p.add_argument("--handover", type=int, default=0, metavar="N",
                   help="also which phase fails: N placements (from --seed) with the scripted expert driving until "
                        "each phase (descend, lift, carry) begins and the policy from there")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("calibrate", help="hand-eye calibration of the camera's pose (ArUco on the hand): starts the "
                                         "config's graph with calibration_node and waits for its result")
    p.add_argument("--config", help="runtime config with a calibration section (default: config/sim_calibrate.yaml; "
                                    "with --direct, config/sim.yaml)")
    p.add_argument("--direct", action="store_true", help="twin only: no ROS graph, everything in this process "
                                                         "(fastest: about 10 s)")
    p.add_argument("--poses", type=int, help="arm poses to visit (default: calibration.poses; 15 with --direct)")
    p.add_argument("--seed", type=int, default=0, help="seed of the planned poses (--direct)")
    p.add_argument("--out", help="calibration YAML (a PNG goes next to it); default: calibration.out_dir/"
                                 "<camera serial>_<UTC time>.yaml, with --direct runs/calibration/T_base_camera.yaml")
    p.add_argument("--rrd", help="also log the check to this Rerun .rrd file (graph runs: or a running viewer's "
                                 "rerun+http://host:9876/proxy url)")
    p.set_defaults(func=_cmd_calibrate)
    p = sub.add_parser("replay", help="show a recorded episode in Rerun (viewer, remote viewer or .rrd file)")
    p.add_argument("episode", help="an .episode.npz file")
    p.add_argument("--rrd", help="save to this .rrd file instead of spawning a viewer")
    p.add_argument("--connect", help="send to a running viewer at this gRPC url (e.g. rerun+http://host:9876/proxy)")
    p.set_defaults(func=_cmd_replay)
    p = sub.add_parser("data", help="list, inspect, audit, recover or export recorded episodes; turn a rosbag2 "
                                     "recording into an episode (from-bag)")
    p.add_argument("action", choices=["list", "inspect", "audit", "recover", "export", "from-bag"])
    p.add_argument("path", help="episode folder (list, audit, export), episode file (inspect, export), .partial "
                                "(recover) or rosbag2 folder (from-bag)")
    p.add_argument("--horizon", type=int, default=10, help="audit: the chunk horizon (steps) of the motion spread")
    p.add_argument("--all", action="store_true", help="audit: also the episodes not flagged successful")
    p.add_argument("--json", help="audit: also write the report to this JSON file")
    p.add_argument("out", nargs="?", help="export: output folder (LeRobotDataset v3 layout, or one bag folder per "
                                          "episode)")
    p.add_argument("--out", dest="out_dir", help="export, from-bag: output folder (the same as the positional one)")
    p.add_argument("--format", choices=["lerobot", "mcap", "sqlite3"], default="lerobot",
                   help="export: a LeRobotDataset v3 layout (default) or rosbag2 bags (mcap or sqlite3 storage)")
    p.add_argument("--successful-only", action="store_true", help="export: only episodes flagged successful")
    p.add_argument("--task", help="from-bag: the episode's task (e.g. grasp_lift)")
    p.add_argument("--config", help="from-bag: the runtime config the graph ran with (topics, rates, preprocessing, "
                                    "calibration when the bag has no /tf_static; default: config/sim.yaml)")
    p.add_argument("--start", type=float, help="from-bag: seconds from the bag's first message to start at")
    p.add_argument("--end", type=float, help="from-bag: seconds from the bag's first message to end at")
    p.add_argument("--failed", action="store_true", help="from-bag: flag the episode as failed (default: success)")
    p.add_argument("--note", default="", help="from-bag: operator note stored with the episode")
    p.set_defaults(func=_cmd_data)
    args = ap.parse_args(argv)
    try:
        return args.func(args)
    except RobotRuntimeError as exc:
        print(f"robot-runtime: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
