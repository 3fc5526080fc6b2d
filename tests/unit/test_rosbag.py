"""rosbag2 in and out: bags written by the rosbags library become episodes through the recorder's
alignment; an episode exported as MCAP reads back with every message and stamp intact."""
from dataclasses import replace

import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.data.episode_file import load_episode
from robot_runtime.data.recorder import reduce_depth
from robot_runtime.errors import RecordingError
from robot_runtime.interfaces import COMMAND_TOPICS, STATE_TOPICS
from robot_runtime.nodes.recorder_node import policy_schema
from robot_runtime.perception.preprocess import VisualPreprocessor

rosbags = pytest.importorskip("rosbags")
from rosbags.highlevel import AnyReader  # noqa: E402
from rosbags.rosbag2 import StoragePlugin, Writer  # noqa: E402
from rosbags.typesys import Stores, get_typestore  # noqa: E402

from robot_runtime.data import rosbag  # noqa: E402

TS = get_typestore(Stores.ROS2_JAZZY)
K = np.array([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
T0 = 1_790_000_000.0
HOME = np.r_[0.0, -0.6, 0.0, 0.9, 0.0, 1.5, 0.0, np.full(16, 0.1)]


def _time(t):
    sec = int(np.floor(t))
    return TS.types["builtin_interfaces/msg/Time"](sec=sec, nanosec=int(round((t - sec) * 1e9)) % 1_000_000_000)


def _header(t, frame=""):
    return TS.types["std_msgs/msg/Header"](stamp=_time(t), frame_id=frame)


def _streams(seconds=2.0, hand_gap=None):
    """Synthetic graph streams (stamp s, value): depth at 60 Hz, arm state and command at
    120 Hz, hand state and command at 300 Hz; each joint sample distinct."""
    rng = np.random.default_rng(1)
    out = {"depth": [(T0 + 0.004 + k / 60.0, rng.uniform(0.3, 2.0, (240, 320)).astype(np.float32))
                     for k in range(int(seconds * 60))]}
    for stream, hz, n in (("arm_state", 120, 7), ("arm_command", 120, 7), ("hand_state", 300, 16),
                          ("hand_command", 300, 16)):
        lo = 0 if stream.startswith("arm") else 7
        samples = [(T0 + 0.001 + k / hz, HOME[lo:lo + n] + 0.001 * k + (0.5 if "command" in stream else 0.0))
                   for k in range(int(seconds * hz))]
        if hand_gap and stream == "hand_state":
            samples = [s for s in samples if not hand_gap[0] <= s[0] - T0 < hand_gap[1]]
        out[stream] = samples
    return out


def _write_bag(path, streams, cfg, storage=StoragePlugin.MCAP, skip=()):
    """A rosbag2 bag of the streams, written with the rosbags library alone."""
    topics = {"depth": cfg.camera.depth_topic, "info": cfg.camera.info_topic, "arm_state": STATE_TOPICS["arm"],
              "hand_state": STATE_TOPICS["hand"], "arm_command": COMMAND_TOPICS["arm"],
              "hand_command": COMMAND_TOPICS["hand"]}
    msgs = []
    for t, depth in streams["depth"]:
        h, w = depth.shape
        msgs.append((t, "depth", "sensor_msgs/msg/Image", TS.types["sensor_msgs/msg/Image"](
            header=_header(t, "cam"), height=h, width=w, encoding="32FC1", is_bigendian=0, step=w * 4,
            data=np.ascontiguousarray(depth).view(np.uint8).ravel())))
        roi = TS.types["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        P = np.zeros((3, 4))
        P[:, :3] = K
        msgs.append((t, "info", "sensor_msgs/msg/CameraInfo", TS.types["sensor_msgs/msg/CameraInfo"](
            header=_header(t, "cam"), height=h, width=w, distortion_model="plumb_bob", d=np.zeros(5), k=K.ravel(),
            r=np.eye(3).ravel(), p=P.ravel(), binning_x=0, binning_y=0, roi=roi)))
    for stream in ("arm_state", "hand_state", "arm_command", "hand_command"):
        names = D.ARM_JOINTS if stream.startswith("arm") else D.HAND_JOINTS
        for t, v in streams[stream]:
            msgs.append((t, stream, "sensor_msgs/msg/JointState", TS.types["sensor_msgs/msg/JointState"](
                header=_header(t), name=list(names), position=np.asarray(v, float), velocity=np.zeros(0),
                effort=np.zeros(0))))
    msgs.sort(key=lambda m: m[0])
    with Writer(path, version=9, storage_plugin=storage) as w:
        conns = {}
        for t, stream, msgtype, msg in msgs:
            if stream in skip:
                continue
            if stream not in conns:
                conns[stream] = w.add_connection(topics[stream], msgtype, typestore=TS)
            # the bag's receive time: a little after acquisition, as on a recording PC
            w.write(conns[stream], int(round((t + 0.002) * 1e9)), TS.serialize_cdr(msg, msgtype))
    return path


def _from_bag(bag, task, out, cfg):
    """episode_from_bag with the schema and calibration resolved as recorder_node does."""
    from calibration.extrinsics import calibration_metadata

    return rosbag.episode_from_bag(bag, task, out, cfg, policy_schema(cfg), calibration_metadata(cfg), progress=False)


def _newest(samples, t):
    stamps = np.array([s[0] for s in samples])
    i = int(np.searchsorted(stamps, t, side="right")) - 1
    return samples[i]


@pytest.mark.parametrize("storage", [StoragePlugin.MCAP, StoragePlugin.SQLITE3])
def test_a_bag_written_by_rosbags_becomes_the_recorders_episode(tmp_path, storage):
    """Each step holds, for its grid instant, the newest sample of every stream acquired at or
    before it (computed here directly from the streams), the grid is locked to the 60 Hz frames
    at 20 Hz, and the policy input is the one preprocessing's output for that frame."""
    cfg = RuntimeConfig()
    streams = _streams()
    bag = _write_bag(tmp_path / "bag", streams, cfg, storage)
    res = _from_bag(bag, "grasp_lift", tmp_path / "eps", cfg)
    ep = load_episode(res.path)
    n = len(ep)
    assert res.steps == n >= 36 and sum(res.dropped.values()) == 0, res.summary()
    assert res.messages[cfg.camera.depth_topic] == 120 and res.messages[STATE_TOPICS["hand"]] == 600
    t = ep["t"]
    frame_stamps = np.array([s[0] for s in streams["depth"]])
    # after the first instant (on the free grid, while the lock learns the camera's period) the
    # grid is locked to the frames, every third one
    assert np.allclose(np.diff(t[1:]), 0.05, atol=1e-6)
    assert np.all(np.min(np.abs(t[1:, None] - frame_stamps[None]), axis=1) < 1e-6)
    pre = VisualPreprocessor(policy_schema(cfg).visual, None)
    for k in range(n):
        d_t, depth = _newest(streams["depth"], t[k] + 1e-9)
        assert ep["depth_stamp"][k] == pytest.approx(d_t, abs=1e-6)
        assert np.array_equal(ep["depth"][k], reduce_depth(depth, cfg.recorder.depth_stride))
        arm_t, arm = _newest(streams["arm_state"], t[k] + 1e-9)
        hand_t, hand = _newest(streams["hand_state"], t[k] + 1e-9)
        assert ep["arm_state_stamp"][k] == pytest.approx(arm_t, abs=1e-6)
        assert ep["hand_state_stamp"][k] == pytest.approx(hand_t, abs=1e-6)
        assert np.allclose(ep["q"][k], np.r_[arm, hand], atol=1e-12)
        assert np.allclose(ep["command"][k], np.r_[_newest(streams["arm_command"], t[k] + 1e-9)[1],
                                                   _newest(streams["hand_command"], t[k] + 1e-9)[1]], atol=1e-12)
        q = np.r_[arm, hand]
        assert np.array_equal(ep["visual"][k], pre(depth, K, d_t, q))
    assert ep.meta["task"] == "grasp_lift" and ep.meta["success"] is True
    assert ep.meta["source"]["bag"] == str(bag)


def test_a_bag_without_a_topic_the_recorder_needs_names_it(tmp_path):
    cfg = RuntimeConfig()
    bag = _write_bag(tmp_path / "bag", _streams(0.5), cfg, skip=("hand_command",))
    with pytest.raises(RecordingError, match=f"lacks: {COMMAND_TOPICS['hand']}"):
        _from_bag(bag, "grasp_lift", tmp_path / "eps", cfg)
    assert not list((tmp_path / "eps").glob("*")) if (tmp_path / "eps").exists() else True


def test_a_stalled_stream_in_the_bag_drops_its_steps_by_name_and_keeps_the_rest(tmp_path):
    """The hand's joint states stop for 0.4 s: those steps are dropped as stale joint state
    (counted, as the live recorder counts them), the others are kept."""
    cfg = RuntimeConfig()
    bag = _write_bag(tmp_path / "bag", _streams(2.0, hand_gap=(0.8, 1.2)), cfg)
    res = _from_bag(bag, "grasp_lift", tmp_path / "eps", cfg)
    assert res.dropped["stale_joint_state"] >= 5, res.summary()
    assert res.steps + sum(res.dropped.values()) >= 36
    assert "stale_joint_state" in res.summary()


def test_an_episode_exported_as_mcap_reads_back_by_rosbags_with_every_message_and_stamp(tmp_path):
    cfg = replace(RuntimeConfig())
    res = _from_bag(_write_bag(tmp_path / "bag", _streams(1.0), cfg), "grasp_drop", tmp_path / "eps", cfg)
    ep = load_episode(res.path)
    out = rosbag.export_bag(res.path, tmp_path / "export")
    assert (out / "metadata.yaml").exists() and list(out.glob("*.mcap"))
    got: dict[str, list] = {}
    with AnyReader([out], default_typestore=TS) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        for conn, t_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            got.setdefault(conn.topic, []).append((t_ns, msg))
    assert types[cfg.camera.depth_topic] == "sensor_msgs/msg/Image"
    assert types[STATE_TOPICS["arm"]] == "sensor_msgs/msg/JointState" and types["/tf_static"] == "tf2_msgs/msg/TFMessage"

    def stamp(m):
        return m.header.stamp.sec + m.header.stamp.nanosec * 1e-9

    n = len(ep)
    depth = got[cfg.camera.depth_topic]
    assert len(depth) == len(np.unique(ep["depth_stamp"])) == n
    for k, (t_ns, m) in enumerate(depth):
        assert stamp(m) == pytest.approx(ep["depth_stamp"][k], abs=1e-6) and t_ns == round(ep["depth_stamp"][k] * 1e9)
        assert m.encoding == "16UC1"
        assert np.array_equal(np.frombuffer(m.data.tobytes(), "<u2").reshape(m.height, m.width), ep["depth"][k])
    info = got[cfg.camera.info_topic][0][1]
    stride = ep.meta["depth_stride"]
    assert np.allclose(np.reshape(info.k, (3, 3))[:2], np.asarray(ep.meta["camera"]["K"])[:2] / stride)
    for topic, stamps, values in ((STATE_TOPICS["arm"], ep["arm_state_stamp"], ep["q"][:, :7]),
                                  (STATE_TOPICS["hand"], ep["hand_state_stamp"], ep["q"][:, 7:]),
                                  (COMMAND_TOPICS["arm"], ep["command_stamp"][:, 0], ep["command"][:, :7]),
                                  (COMMAND_TOPICS["hand"], ep["command_stamp"][:, 1], ep["command"][:, 7:])):
        msgs = got[topic]
        assert len(msgs) == n
        assert np.allclose([stamp(m) for _, m in msgs], stamps, atol=1e-6)
        assert np.array_equal(np.array([m.position for _, m in msgs]), values)
        assert list(msgs[0][1].name) == list(D.ARM_JOINTS if "arm" in topic else D.HAND_JOINTS)
    (tf,) = got["/tf_static"][0][1].transforms
    T = np.asarray(ep.meta["calibration"]["T_base_camera"])
    assert np.allclose([tf.transform.translation.x, tf.transform.translation.y, tf.transform.translation.z], T[:3, 3])
    with pytest.raises(RecordingError, match="exists"):
        rosbag.export_bag(res.path, out)


def test_the_cli_turns_a_bag_into_an_episode_and_an_episode_into_bags(tmp_path, capsys):
    from robot_runtime import cli

    cfg = RuntimeConfig()
    bag = _write_bag(tmp_path / "bag", _streams(1.0), cfg, StoragePlugin.SQLITE3)
    assert cli.main(["data", "from-bag", str(bag), "--task", "grasp_pour", "--out", str(tmp_path / "eps"),
                     "--end", "0.8", "--failed"]) == 0
    (episode,) = (tmp_path / "eps").glob("*.episode.npz")
    ep = load_episode(episode)
    assert ep.meta["task"] == "grasp_pour" and ep.meta["success"] is False and 12 <= len(ep) <= 16
    assert "steps ->" in capsys.readouterr().out
    assert cli.main(["data", "export", str(tmp_path / "eps"), "--out", str(tmp_path / "bags"), "--format", "mcap"]) == 0
    (folder,) = (tmp_path / "bags").iterdir()
    assert rosbag.bag_topics(folder)[cfg.camera.depth_topic] == ("sensor_msgs/msg/Image", len(ep))
    assert cli.main(["data", "from-bag", str(tmp_path / "nothing"), "--task", "x", "--out", str(tmp_path)]) == 2
    assert "not a rosbag2 folder" in capsys.readouterr().err


def test_the_replay_camera_plays_a_bag_at_its_recorded_timing(tmp_path):
    from robot_runtime.config import ReplayCameraConfig
    from robot_runtime.devices.replay import ReplayCamera
    from robot_runtime.errors import DeviceError

    cfg = RuntimeConfig()
    streams = _streams(0.2)
    bag = _write_bag(tmp_path / "bag", streams, cfg, StoragePlugin.MCAP)
    now = [0.0]

    def sleep(dt):
        now[0] += dt

    (mcap,) = bag.glob("*.mcap")
    cam = ReplayCamera(ReplayCameraConfig(path=str(mcap), loop=False), clock=lambda: now[0],
                       stamp_clock=lambda: 500.0 + now[0], sleep=sleep)
    cam.connect()
    assert np.array_equal(cam.K, K)
    frames = [cam.read(timeout_s=1.0) for _ in range(len(streams["depth"]))]
    assert cam.read() is None
    assert np.allclose(np.diff([f.t for f in frames]), 1 / 60.0, atol=1e-6)
    assert all(np.array_equal(f.depth, d) for f, (_, d) in zip(frames, streams["depth"]))
    with pytest.raises(DeviceError, match="no topic /elsewhere"):
        ReplayCamera(ReplayCameraConfig(path=str(bag), bag_depth_topic="/elsewhere")).connect()
