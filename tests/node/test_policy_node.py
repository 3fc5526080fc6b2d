"""policy_node closed-loop on the twin with real rclpy over DDS: 20 Hz for 30 s, and hot-swap.

The whole graph runs for the module: sim_node, both controllers, policy_node with the
checkpoint the project ships (it arms the controllers on the twin and starts an episode).
"""
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from policies.checkpoint import META_FILE, WEIGHTS_FILE, load_checkpoint, save_checkpoint
from policies.schema import PolicySchema
from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import load_config
from tests.ros_probe import REPO, RosProbe, start_node, stop_node

PERIOD = 0.05
NODES = ("sim_node", "arm_controller_node", "hand_controller_node", "policy_node")


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    data = yaml.safe_load((REPO / "config" / "sim.yaml").read_text())
    data["policy"]["checkpoint"] = str(REPO / "policies" / "checkpoints" / "twin_grasp_lift")
    data["policy"]["finetune_dir"] = str(tmp / "checkpoints")
    cfg_path = tmp / "policy.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = load_config(cfg_path)
    probe = RosProbe("policy_probe")
    g = Graph(probe, cfg, tmp)
    procs = []
    for name in NODES:
        extra = ["-p", f"timing_log:={tmp / 'policy_timing.npz'}"] if name == "policy_node" else []
        procs.append(start_node(f"robot_runtime.nodes.{name}", "-p", f"config_file:={cfg_path}", *extra,
                                log_path=tmp / f"{name}.log"))
    try:
        assert probe.wait_for(lambda: len(g.targets) > 20, 90.0), \
            "no policy targets: " + " | ".join((tmp / f"{n}.log").read_text()[-600:] for n in NODES)
        yield g
    finally:
        probe.close()
        for p in procs:
            stop_node(p)


class Graph:
    def __init__(self, probe, cfg, tmp):
        self.probe, self.cfg, self.tmp = probe, cfg, tmp
        self.targets, self.status, self.diags, self.arm_status = [], [], [], []
        probe.subscribe(JointState, cfg.control.policy_topic, ros_io.STATE_QOS, self.targets, keep=2000)
        probe.subscribe(String, "/policy_node/status", ros_io.LATCHED_QOS, self.status)
        probe.subscribe(String, "/arm_controller_node/status", ros_io.LATCHED_QOS, self.arm_status)
        probe.subscribe(DiagnosticArray, "/diagnostics", ros_io.STATE_QOS, self.diags)
        self.set_client = probe.node.create_client(SetParameters, "/policy_node/set_parameters")
        self.stop_client = probe.node.create_client(Trigger, "/policy_node/stop_episode")
        self.start_client = probe.node.create_client(Trigger, "/policy_node/start_episode")
        self.rollback_client = probe.node.create_client(Trigger, "/policy_node/rollback")

    def stamps(self, after=0.0):
        t = np.array([ros_io.from_time_msg(m.header.stamp) for m in list(self.targets)])
        return t[t > after]

    def last_stamp(self) -> float:
        """Stamp of the newest target (cheap: predicates run on every message)."""
        return ros_io.from_time_msg(self.targets[-1].header.stamp) if self.targets else 0.0

    def now(self):
        return ros_io.from_time_msg(self.probe.node.get_clock().now().to_msg())

    def policy_diag(self) -> dict:
        for arr in reversed(list(self.diags)):
            v = ros_io.diagnostic_values(arr, "policy_node: loop")
            if v is not None:
                return v
        return {}

    def set_checkpoint(self, path):
        req = SetParameters.Request(parameters=[Parameter("checkpoint", value=str(path)).to_parameter_msg()])
        return self.probe.call(self.set_client, req, timeout=30.0).results[0]

    def running_checkpoint(self) -> str:
        return json.loads(self.status[-1].data)["checkpoint"]


STALE = ("ticks_stale_frame", "ticks_stale_joint_state")


def check_ticks(g, t0, t1, diag0, late_allowed=0):
    """Every tick of the loop between t0 and t1 was on time (all but ``late_allowed``), and each
    one published its targets or, when the twin delivered an input too late, skipped and
    counted it. Returns the skips."""
    n = len(g.diags)
    assert g.probe.wait_for(lambda: len(g.diags) > n + 2, 5.0)   # diagnostics from after t1
    diag = g.policy_diag()
    late = sum(int(diag[k]) - int(diag0[k]) for k in ("misses", "overruns"))
    assert late <= late_allowed, (diag0, diag)   # the loop itself met its deadlines
    s = g.stamps(t0)
    s = s[s <= t1]
    gaps = np.diff(s)
    missing = int(np.sum(np.round(gaps / PERIOD) - 1))
    skipped = sum(int(diag.get(k, 0)) - int(diag0.get(k, 0)) for k in STALE)
    other = {k: v for k, v in diag.items() if k.startswith("ticks_") and k not in (*STALE, "ticks_published",
             "ticks_swaps") and int(v) != int(diag0.get(k, 0))}
    assert not other, f"ticks without action for other reasons: {other}"
    assert missing <= skipped, f"{missing} ticks missing from the target stream, {skipped} counted stale-input skips"
    assert np.median(gaps) == pytest.approx(PERIOD, abs=1e-3)
    return missing, len(s)


def test_closed_loop_at_20_hz_for_30_s_on_every_deadline_late_inputs_counted(graph):
    """The loop meets every deadline for 30 s (no miss, no overrun), and every tick publishes its
    targets unless the twin delivered an input too late: such ticks are skipped and counted
    (stale_frame, stale_joint_state), and on this 2-core machine stay at most 6 of the 600."""
    g = graph
    t0 = g.now()
    diag0 = g.policy_diag()
    assert g.probe.wait_for(lambda: g.last_stamp() > t0 + 30.0 + PERIOD, 45.0)
    missing, n = check_ticks(g, t0, t0 + 30.0 + PERIOD / 2, diag0)
    # on this shared 2-core machine the twin now and then renders a frame late; those
    # ticks are skipped and counted, and must stay rare
    assert n + missing >= 599 and missing <= 6, (n, missing)
    last = g.targets[-1]
    assert list(last.name) == list(D.ALL_JOINTS) and np.all(np.isfinite(last.position))
    # the controllers follow: the policy armed them on the twin
    assert json.loads(g.arm_status[-1].data)["mode"] == "armed"


def _bad_checkpoints(root, good):
    ck = load_checkpoint(good)
    names = PolicySchema.from_dict(ck.schema.to_dict())
    names.joint_names[3] = "elbow"
    model = ck.build_model()
    wrong_names = save_checkpoint(root / "wrong_names", model, names, {"source": "test"})
    with torch.no_grad():
        model.transformer.h[1].mlp.c_fc.weight[0, 0] = float("nan")
    nan = save_checkpoint(root / "nan_weights", model, ck.schema, {"source": "test"})
    corrupt = root / "corrupt"
    shutil.copytree(good, corrupt)
    data = bytearray((corrupt / WEIGHTS_FILE).read_bytes())
    data[len(data) // 3] ^= 0x40
    (corrupt / WEIGHTS_FILE).write_bytes(bytes(data))
    weights_str = root / "weights_str"   # once AttributeError, out of the parameter callback: the node died
    shutil.copytree(good, weights_str)
    meta = json.loads((weights_str / META_FILE).read_text())
    meta["weights"] = WEIGHTS_FILE
    (weights_str / META_FILE).write_text(json.dumps(meta))
    return [(wrong_names, "joint names do not match"), (nan, "non-finite weights"), (corrupt, "corrupt"),
            (weights_str, "key 'weights' must be an object"), (root / "absent", "not found")]


def test_hot_swap_good_and_bad_checkpoints_while_running(graph):
    g = graph
    shipped = g.cfg.policy.checkpoint
    ck = load_checkpoint(shipped)
    model = ck.build_model()
    with torch.no_grad():   # a slightly different, good network
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    root = Path(g.cfg.policy.finetune_dir)   # where a swap may load from
    good = save_checkpoint(root / "good", model, ck.schema, {"source": "test", "parent": ck.sha256})
    bad = _bad_checkpoints(root, shipped)
    outside = g.tmp / "outside"   # a good checkpoint, but where no swap may load from
    shutil.copytree(good, outside)
    bad.append((outside, "outside"))
    # making those checkpoints loaded this machine; start once the graph runs smoothly again
    t_ready = g.now()
    assert g.probe.wait_for(lambda: g.last_stamp() > t_ready + 1.0, 10.0)
    t0 = g.now()
    diag0 = g.policy_diag()
    res = g.set_checkpoint(good)
    assert res.successful, res.reason
    assert g.probe.wait_for(lambda: g.running_checkpoint().startswith("good@"), 5.0)
    for path, reason in bad:
        res = g.set_checkpoint(path)
        assert not res.successful and reason in res.reason, res.reason
        assert g.running_checkpoint().startswith("good@")
    res = g.probe.call(g.rollback_client, Trigger.Request(), timeout=30.0)
    assert res.success, res.message
    assert g.probe.wait_for(lambda: g.running_checkpoint().startswith("twin_grasp_lift@"), 5.0)
    t1 = g.now()
    assert g.probe.wait_for(lambda: g.last_stamp() > t1 + 0.5, 5.0)
    # A load holds the GIL in short pieces on a normal-priority thread; on a loaded 2-core
    # machine that can cost the loop one late tick in the window (counted, never hidden).
    missing, n = check_ticks(g, t0, t1 + 0.5, diag0, late_allowed=1)
    print(f"swap window: {n} targets published, {missing} ticks skipped for late twin inputs")
    status = json.loads(g.status[-1].data)
    assert status["previous"].startswith("good@")
    assert (root / "good" / META_FILE).is_file()


def test_services_answer_while_a_hot_swap_exports(graph):
    """A checkpoint without ONNX files is exported in a child process during the swap (seconds);
    meanwhile the node's other services answer (the swap once held its only executor thread)."""
    g = graph
    ck = load_checkpoint(g.cfg.policy.checkpoint)
    model = ck.build_model()
    with torch.no_grad():   # weights no cache has seen: the swap must export
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    fresh = save_checkpoint(Path(g.cfg.policy.finetune_dir) / "fresh", model, ck.schema, {"source": "test"},
                            onnx=False)
    req = SetParameters.Request(parameters=[Parameter("checkpoint", value=str(fresh)).to_parameter_msg()])
    assert g.set_client.wait_for_service(timeout_sec=10.0)
    swap = g.set_client.call_async(req)
    stopped = g.probe.call(g.stop_client, Trigger.Request(), timeout=30.0)
    assert stopped.success
    assert not swap.done(), "the stop came back after the swap: the services waited for it"
    assert g.probe.wait_for(lambda: swap.done(), 120.0)
    assert swap.result().results[0].successful, swap.result().results[0].reason
    assert g.probe.call(g.start_client, Trigger.Request(), timeout=30.0).success
    t0 = g.now()
    assert g.probe.wait_for(lambda: g.last_stamp() > t0 + 0.5, 10.0)
    assert g.running_checkpoint().startswith("fresh@")
    res = g.probe.call(g.rollback_client, Trigger.Request(), timeout=30.0)
    assert res.success, res.message


def test_malformed_depth_from_another_publisher_is_dropped_and_counted(graph):
    """A second publisher on the depth topic (wrong encoding, too few bytes): the frames are
    skipped and counted, and the policy keeps publishing (it once ended the node)."""
    g = graph
    pub = g.probe.node.create_publisher(Image, g.cfg.camera.depth_topic, ros_io.IMAGE_QOS)
    rgb = ros_io.color_image_msg(np.zeros((5, 7, 3), np.uint8), 0.0, "camera")
    short = ros_io.depth_image_msg(np.zeros((8, 8), np.float32), 0.0, "camera")
    short.data = short.data[:100]
    before = int(g.policy_diag().get("depth_dropped_malformed", 0))
    for k in range(60):
        m = rgb if k % 2 else short
        m.header.stamp = g.probe.node.get_clock().now().to_msg()
        pub.publish(m)
        time.sleep(0.01)   # paced like a camera: the publisher's rate, not a synchronisation
    g.probe.node.destroy_publisher(pub)
    assert g.probe.wait_for(lambda: int(g.policy_diag().get("depth_dropped_malformed", 0)) > before, 10.0)
    t0 = g.now()
    assert g.probe.wait_for(lambda: g.last_stamp() > t0 + 1.0, 10.0), "the policy stopped publishing"


def test_finetune_node_trains_and_promotes_its_result_into_the_running_policy_node(graph):
    """finetune_node starts `robot-runtime finetune` in its own process, relays its progress,
    and on success the job hot-swaps the new checkpoint into the running policy_node."""
    from tests.unit.test_finetune_eval import write_episodes

    g = graph
    demos = Path(g.cfg.recorder.out_dir) / "ft_demos"
    write_episodes(demos, n=3, steps=30, spec=load_checkpoint(g.cfg.policy.checkpoint).schema.visual)
    out = Path(g.cfg.policy.finetune_dir) / "promoted"
    progress = []
    g.probe.subscribe(String, "/finetune_node/progress", ros_io.LATCHED_QOS, progress)
    node = start_node("robot_runtime.nodes.finetune_node", "-p", f"config_file:={g.tmp / 'policy.yaml'}",
                      "-p", f"episodes:={demos}", "-p", f"out:={out}", "-p", "steps:=6", "-p", "promote:=true",
                      log_path=g.tmp / "finetune_node.log")
    try:
        client = g.probe.node.create_client(Trigger, "/finetune_node/start")
        res = g.probe.call(client, Trigger.Request(), timeout=30.0)
        assert res.success, res.message
        again = g.probe.call(client, Trigger.Request(), timeout=10.0)
        assert not again.success and "already running" in again.message

        def state():
            return json.loads(progress[-1].data) if progress else {}
        assert g.probe.wait_for(lambda: state().get("state") in ("done", "failed"), 180.0), \
            (g.tmp / "finetune_node.log").read_text()[-2000:]
        final = state()
        assert final["state"] == "done", final
        steps_seen = [json.loads(m.data).get("step") for m in progress]
        assert 6 in steps_seen and final["checkpoint"] == str(out)
        assert g.probe.wait_for(lambda: g.running_checkpoint().startswith("promoted@"), 10.0), g.running_checkpoint()
        assert load_checkpoint(out).provenance["base"]["sha256"] == load_checkpoint(g.cfg.policy.checkpoint).sha256
    finally:
        stop_node(node)
        res = g.probe.call(g.rollback_client, Trigger.Request(), timeout=30.0)   # leave the shipped policy running
        assert res.success, res.message
