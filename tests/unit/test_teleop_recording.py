"""Teleop (retargeting, IK, session) and recording (episode files, recorder, export) without ROS."""
import errno
import threading

import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.data import dataset
from robot_runtime.data.episode_file import PARTIAL_SUFFIX, SUFFIX, load_episode, read_partial
from robot_runtime.data.recorder import EpisodeRecorder, GridAligner, RecorderInputs, Stamped
from robot_runtime.description import build
from robot_runtime.errors import DiskFullError, EpisodeFileError, TeleopError
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel
from robot_runtime.perception.preprocess import VisualPreprocessor, VisualSpec
from robot_runtime.teleop.arm_follow import WristFollower
from robot_runtime.teleop.inputs import load_keypoints_file
from robot_runtime.teleop.session import TeleopSample, TeleopSession
from robot_runtime.transforms import make_T, rot_exp

MODEL = UrdfModel.from_file(D.description_path(D.URDF_NAME))
HOME = np.array(D.ARM_HOME + D.HAND_HOME)


@pytest.fixture(scope="module")
def retargeter():
    from robot_runtime.teleop.retarget import FingerRetargeter
    r = FingerRetargeter()
    yield r
    r.close()


def test_fingertips_from_allegro_fk_retarget_back_within_12_mm(retargeter):
    """Fingertip positions of known hand postures, shrunk to human size, come back within 12 mm (p95)."""
    hand = UrdfModel(build.hand_urdf_text())
    lim = np.array(D.HAND_LIMITS)
    rng = np.random.default_rng(0)
    keys = [lim[:, 0] + rng.uniform(0.15, 0.75, 16) * (lim[:, 1] - lim[:, 0]) for _ in range(4)]
    errs = []
    for a, b in zip(keys[:-1], keys[1:]):   # smooth motions, as a tracked hand moves
        for s in np.linspace(0, 1, 12):
            q = a + s * (b - a)
            P = hand.forward(q)
            kp = np.zeros((21, 3))
            for idx, link in zip(retargeter.task_idx, retargeter.task_links):
                kp[idx] = P[link][:3, 3] / retargeter.scaling
            qr = retargeter(kp)
            assert np.all(qr >= lim[:, 0] - 1e-3) and np.all(qr <= lim[:, 1] + 1e-3)
            P2 = hand.forward(qr)
            errs += [np.linalg.norm(P2[link][:3, 3] - P[link][:3, 3]) for link in retargeter.task_links]
    assert np.percentile(errs, 95) < 0.012 and np.median(errs) < 0.006, (np.median(errs), max(errs))


def test_ik_reaches_reachable_wrist_poses_within_2_mm_inside_joint_limits():
    rng = np.random.default_rng(1)
    arm = np.arange(7)
    lim = np.array(D.ARM_LIMITS)
    for _ in range(10):
        q_goal = HOME.copy()
        q_goal[:7] += rng.uniform(-0.5, 0.5, 7)
        q_goal[:7] = np.clip(q_goal[:7], lim[:, 0] + 0.05, lim[:, 1] - 0.05)
        target = MODEL.link_pose(q_goal, D.FLANGE_FRAME)
        q, pos_err, rot_err = solve_ik(MODEL, HOME, D.FLANGE_FRAME, target, arm, iters=300)
        assert pos_err < 0.002 and rot_err < 0.01
        assert np.all(q[:7] >= lim[:, 0]) and np.all(q[:7] <= lim[:, 1])
    # Joint 4's limits hold even when the goal asks for more (a pose beyond its range).
    q_out = HOME.copy()
    q_out[3] = -0.6
    q, _, _ = solve_ik(MODEL, HOME, D.FLANGE_FRAME, MODEL.link_pose(q_out, D.FLANGE_FRAME), arm)
    assert q[3] >= lim[3, 0]


def _session():
    f = WristFollower(MODEL, cutoff_hz=5.0, max_speed=0.3)
    speed = np.array([1.0] * 7 + [3.0] * 16)
    return TeleopSession(f, D.ALL_LIMITS, speed, D.HAND_HOME, np.full(16, 0.8)), speed


def test_engage_never_jumps_and_motion_is_relative_and_speed_limited():
    s, speed = _session()
    q = HOME.copy()
    assert s.step(None, None, 0.0) is None                        # nothing measured yet
    held = s.step(None, q, 0.0)
    assert np.array_equal(held, q)                                # holds the measured joints
    # The operator's wrist is far from the robot's and the hand asks to close: engaging moves nothing.
    wrist = make_T(rot_exp([0.3, 0.2, 0.1]), [1.0, 2.0, 3.0])
    s.engage()
    out = s.step(TeleopSample(0.0, wrist=wrist, grasp=1.0), q, 0.0)
    assert np.allclose(out, q)
    prev, dt = out, 1 / 30
    flange0 = MODEL.link_pose(q, D.FLANGE_FRAME)[:3, 3]
    for k in range(1, 61):   # the wrist moves 5 cm along x over 2 s; the hand closes
        w = wrist.copy()
        w[0, 3] += min(k / 30, 1.0) * 0.05
        out = s.step(TeleopSample(k * dt, wrist=w, grasp=1.0), out, k * dt)
        assert np.all(np.abs(out - prev) <= speed * dt + 1e-9)   # never faster than the limits
        prev = out
    moved = MODEL.link_pose(out, D.FLANGE_FRAME)[:3, 3] - flange0
    assert abs(moved[0] - 0.05) < 0.003 and np.linalg.norm(moved[1:]) < 0.003
    assert np.allclose(out[7:], np.clip(0.8, *np.array(D.HAND_LIMITS).T), atol=1e-6)
    s.disengage()
    assert np.array_equal(s.step(TeleopSample(3.0, wrist=wrist, grasp=0.0), out, 3.0), out)   # clutch: holds


def test_keypoints_file_errors_name_the_problem(tmp_path):
    p = tmp_path / "kp.npz"
    np.savez(p, keypoints=np.zeros((5, 20, 3)), t=np.arange(5) * 0.1)
    with pytest.raises(TeleopError, match="shape"):
        load_keypoints_file(p)
    np.savez(p, keypoints=np.zeros((5, 21, 3)), t=np.array([0, 0.1, 0.1, 0.2, 0.3]))
    with pytest.raises(TeleopError, match="increasing"):
        load_keypoints_file(p)
    kp = np.zeros((3, 21, 3))
    kp[1, 4, 0] = np.nan
    np.savez(p, keypoints=kp, fps=30.0)
    with pytest.raises(TeleopError, match="non-finite"):
        load_keypoints_file(p)


@pytest.mark.parametrize("loop", [False, True])
def test_keypoints_play_in_time_stamped_at_their_own_frame_times(tmp_path, loop):
    from robot_runtime.config import KeypointsInputConfig
    from robot_runtime.teleop.inputs import KeypointsInput, WorldView
    p = tmp_path / "kp.npz"
    kp = np.zeros((4, 21, 3))
    kp[:, 0, 0] = np.arange(4)   # frame k has its wrist at x = k
    np.savez(p, keypoints=kp, t=np.array([0.0, 0.1, 0.2, 0.3]))
    inp = KeypointsInput(KeypointsInputConfig(file=str(p), loop=loop))
    inp.open()
    got = [(now, inp.read(now, WorldView())) for now in np.arange(0.0, 1.0, 0.033) + 50.0]
    got = [(now, s.t, int(s.keypoints[0, 0])) for now, s in got if s is not None]
    # stamped with the frame's time (not the read's), each frame once, never from the future; a
    # looped file plays again from its start, each pass 0.4 s (4 frames at 10 fps) after the last
    passes = [round((t - 50.0 - 0.1 * f) / 0.4) for _, t, f in got]
    assert all(50.0 + 0.1 * f + 0.4 * k == pytest.approx(t) for (_, t, f), k in zip(got, passes))
    assert set(passes) == ({0, 1, 2} if loop else {0}), passes
    assert all(t <= now + 1e-9 and now - t < 0.1 for now, t, _ in got)
    assert np.all(np.diff([t for _, t, _ in got]) > 0)
    if loop:   # 0.4 s laps: frames come round again with later stamps
        assert [f for _, _, f in got] == [0, 1, 2, 3] * 2 + [0, 1]   # reads up to 0.99 s
        assert [t for _, t, _ in got][4] == pytest.approx(50.4)
    else:
        assert [f for _, _, f in got] == [0, 1, 2, 3] and inp.finished


def test_mediapipe_runs_on_a_generated_clip_and_reports_no_hand(tmp_path):
    """The MediaPipe path end to end on a video made here: the bundled model loads and runs
    on every frame; a clip without a hand gives no sample (the teleop session then holds)."""
    cv2 = pytest.importorskip("cv2")
    from robot_runtime.config import HandTrackingInputConfig
    from robot_runtime.teleop.inputs import HandTrackingInput, WorldView
    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (160, 120))
    for k in range(15):
        frame = np.full((120, 160, 3), 40 + 8 * k, np.uint8)
        cv2.circle(frame, (80, 60), 20, (200, 180, 160), -1)
        w.write(frame)
    w.release()
    inp = HandTrackingInput(HandTrackingInputConfig(source=str(path)))
    inp.open()
    try:
        got = []
        while inp.frames < 10 and not (inp.ended and inp._slot is None):
            s = inp.read(0.0, WorldView())
            got.append(s)
        assert inp.frames >= 5 and inp.detections == 0 and all(s is None for s in got)
    finally:
        inp.close()


# ------------------------------------------------------------------------------------ recording

def _recorder(tmp_path, **kw):
    spec = VisualSpec()
    pre = VisualPreprocessor(spec, np.eye(4))
    order = np.arange(23)[::-1]
    return EpisodeRecorder(tmp_path / "eps", 20.0, pre, order, {"joint_names": list(D.ALL_JOINTS)}, **kw)


def _inputs(t, rng):
    depth = rng.uniform(0.3, 2.0, (240, 320)).astype(np.float32)
    depth[:5, :5] = np.nan
    K = np.array([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
    q = HOME + rng.normal(0, 0.01, 23)
    return RecorderInputs(Stamped(t - 0.02, depth), K, Stamped(t - 0.004, q[:7]), Stamped(t - 0.003, q[7:]),
                          Stamped(t - 0.005, q[:7] + 0.01), Stamped(t - 0.002, q[7:] + 0.01))


def test_recorder_round_trip_drops_and_training_loader(tmp_path):
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(0)
    rec.start("grasp_lift", "first try", now=100.0)
    sent = []
    for k in range(30):
        t = 100.0 + 0.05 * k
        i = _inputs(t, rng)
        if k == 10:
            i.depth = Stamped(t - 0.5, i.depth.value)   # a stale frame: dropped, counted
        if k == 20:
            continue                                    # the loop missed this grid point
        assert rec.tick(t, i, t + 0.001) == ("stale_frame" if k == 10 else "")
        if k != 10:
            sent.append(np.concatenate([i.arm_command.value, i.hand_command.value]))
    path = rec.stop(True, now=102.0)
    ep = load_episode(path)
    assert len(ep) == 28 and ep.meta["dropped"] == {"stale_frame": 1, "missed_tick": 1}
    assert ep.meta["success"] is True and ep.meta["operator_note"] == "first try"
    assert np.array_equal(ep["command"], np.array(sent))
    assert np.array_equal(ep["proprio"], ep["q"][:, ::-1])
    assert ep["visual"].shape == (28, 60, 80) and ep["depth"].shape == (28, 120, 160)
    assert ep["depth"][0, 0, 0] == 0 and ep["depth"].dtype == np.uint16
    assert not list((tmp_path / "eps").glob(f"*{PARTIAL_SUFFIX}"))
    eps = dataset.load_for_training(tmp_path / "eps", visual_spec=VisualSpec().to_dict())
    assert np.array_equal(eps[0].actions[:-1], ep["command"][1:])
    with pytest.raises(EpisodeFileError, match="preprocessing"):
        dataset.load_for_training(tmp_path / "eps", visual_spec=VisualSpec(kind="pointcloud").to_dict())


def test_a_step_with_joints_of_the_wrong_size_or_nan_is_dropped_and_named(tmp_path):
    """Any DDS peer can publish on the joint topics the recorder reads: such a step is dropped and
    counted by its reason, and the recording goes on (a 5-joint arm state once raised in the loop)."""
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(3)
    rec.start("grasp_lift", now=100.0)
    for k, (field, value, reason) in enumerate((
            ("arm_state", np.zeros(5), "bad_joint_state"), ("hand_state", np.full(16, np.nan), "bad_joint_state"),
            ("arm_command", np.zeros((7, 1)), "bad_command"), ("hand_command", np.full(23, 0.1), "bad_command"),
            (None, None, ""))):
        t = 100.0 + 0.05 * k
        i = _inputs(t, rng)
        if field:
            setattr(i, field, Stamped(getattr(i, field).t, value))
        assert rec.tick(t, i, t + 0.001) == reason
    ep = load_episode(rec.stop(True, now=101.0))
    assert len(ep) == 1 and ep.meta["dropped"] == {"bad_joint_state": 2, "bad_command": 2}


RATES = {"depth": 30.0, "arm_state": 120.0, "hand_state": 300.0, "arm_command": 120.0, "hand_command": 300.0}


def _aligner():
    return GridAligner(0.05, 0.15, {s: 1000 for s in GridAligner.STREAMS})


def _feed(aligner, stream, t_from, t_to, delay=0.0):
    """Samples of ``stream`` acquired in [t_from, t_to) at its rate; each value is its own stamp."""
    n = 7 if stream.startswith("arm") else 16
    ts = np.arange(np.ceil(t_from * RATES[stream]), np.ceil(t_to * RATES[stream])) / RATES[stream] + delay
    for t in ts:
        aligner.add(stream, float(t), np.full(n, t))


def test_a_recorder_loop_that_wakes_late_loses_no_step(tmp_path):
    """The loop sleeps through 0.4 s (8 grid instants): it catches up, each instant gets the
    newest sample of every stream acquired at or before it, and nothing is dropped."""
    al, rec, rng = _aligner(), _recorder(tmp_path, min_free_mb=1), np.random.default_rng(7)
    rec.start("grasp_lift", now=10.0)
    depth = rng.uniform(0.3, 2.0, (240, 320)).astype(np.float32)
    al.K = np.array([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
    wakes = [10.0 + 0.05 * k for k in range(40) if not 10 <= k < 18]   # asleep for k = 10..17
    got, last = [], 9.9
    for w in wakes:
        for s in GridAligner.STREAMS:
            _feed(al, s, last, w + 0.004, delay=0.0005)   # what has arrived by the (late) wake-up
        last = w + 0.004
        al.mark(w)
        for t, inputs in al.settled(w + 0.004):
            depth_t = inputs.depth.t
            inputs.depth = Stamped(depth_t, depth)
            assert rec.tick(t, inputs, w) == ""
            got.append((t, depth_t, inputs.arm_state.t, inputs.hand_command.t))
    path = rec.stop(True, now=20.0)
    t, depth_t, arm_t, hand_cmd_t = np.array(got).T
    assert np.allclose(np.diff(t), 0.05) and len(t) >= 38   # every instant, none skipped
    for stamps, rate in ((depth_t, 30.0), (arm_t, 120.0), (hand_cmd_t, 300.0)):
        assert np.all(stamps <= t) and np.all(t - stamps < 1.0 / rate + 1e-9)   # the newest at or before t
    ep = load_episode(path)
    assert ep.meta["dropped_steps"] == 0 and len(ep) == len(t)


def test_an_instant_settles_when_every_stream_moved_past_it_or_at_the_settle_time():
    al = _aligner()
    for s in GridAligner.STREAMS:
        _feed(al, s, 0.0, 1.0)
    al.mark(1.0)
    assert al.settled(1.0) == []                    # no stream has a sample after 1.0 yet
    for s in GridAligner.STREAMS[:-1]:
        _feed(al, s, 1.0, 1.05)
    assert al.settled(1.06) == []                   # the hand command is still behind
    ((t, inputs),) = al.settled(1.16)               # ...until settle_s has passed: the step is made
    assert t == 1.0 and inputs.hand_command.t == pytest.approx(1.0 - 1 / 300)
    al.mark(1.05)
    for s in GridAligner.STREAMS:
        _feed(al, s, 1.0 if s == "hand_command" else 1.05, 1.1)
    ((t, inputs),) = al.settled(1.07)               # every stream is past 1.05: settled at once
    assert t == 1.05 and inputs.depth.t == pytest.approx(1.0333333)


def test_a_stalled_camera_drops_the_steps_it_left_without_a_fresh_frame(tmp_path):
    al, rec = _aligner(), _recorder(tmp_path, min_free_mb=1, max_frame_age_s=0.15)
    rng = np.random.default_rng(8)
    rec.start("grasp_lift", now=0.0)
    al.K = np.array([[200.0, 0, 160], [0, 200.0, 120], [0, 0, 1]])
    depth = rng.uniform(0.3, 2.0, (240, 320)).astype(np.float32)
    for s in GridAligner.STREAMS:   # the camera sends nothing between 0.5 s and 0.9 s
        for a, b in ((0.0, 0.5), (0.9, 2.0)) if s == "depth" else ((0.0, 2.0),):
            _feed(al, s, a, b)
    reasons = []
    for k in range(30):
        al.mark(0.05 * k)
    for t, inputs in al.settled(2.0):
        if inputs.depth is not None:
            inputs.depth = Stamped(inputs.depth.t, depth)
        reasons.append(rec.tick(t, inputs, 2.0))
    stale = [round(0.05 * k, 2) for k, r in enumerate(reasons) if r]
    assert set(reasons) == {"", "stale_frame"} and stale == [0.65, 0.7, 0.75, 0.8, 0.85]   # older than 0.15 s
    assert rec.stop(True, now=3.0) and rec.drop_counts() == {"stale_frame": 5}


def test_full_disk_stops_the_episode_and_keeps_saved_ones(tmp_path):
    free = {"bytes": 10e9}
    rec = _recorder(tmp_path, min_free_mb=100, free_bytes=lambda p: free["bytes"])
    rng = np.random.default_rng(1)
    rec.start("grasp_lift", now=0.0)
    for k in range(5):
        rec.tick(0.05 * k, _inputs(0.05 * k, rng), 0.05 * k)
    saved = rec.stop(True, now=1.0)
    rec.start("grasp_lift", now=2.0)
    for k in range(5):
        rec.tick(2.0 + 0.05 * k, _inputs(2.0 + 0.05 * k, rng), 2.0 + 0.05 * k)
    free["bytes"] = 50e6                        # the disk fills up during the episode
    with pytest.raises(DiskFullError, match="episode was stopped"):
        rec.tick(3.0, _inputs(3.0, rng), 3.0)
    assert not rec.recording
    assert len(load_episode(saved)) == 5       # the saved episode is untouched
    partial = next((tmp_path / "eps").glob(f"*{PARTIAL_SUFFIX}"))
    assert len(read_partial(partial)[1]) == 5  # the steps so far are kept
    with pytest.raises(DiskFullError, match="MB free"):
        rec.start("grasp_lift", now=4.0)       # no new episode on a full disk


def test_write_failure_is_a_clear_error_not_a_lost_step(tmp_path, monkeypatch):
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(2)
    rec.start("grasp_lift", now=0.0)
    rec.tick(0.0, _inputs(0.0, rng), 0.0)

    def enospc(step):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert rec._writer.drain(5.0) and rec._writer.written == 1
    monkeypatch.setattr(rec._log, "append", enospc)
    assert rec.tick(0.05, _inputs(0.05, rng), 0.05) == ""   # handed to the writer thread, which fails
    assert rec._writer.drain(5.0)
    with pytest.raises(DiskFullError, match="No space left.*the 1 steps written so far stay"):
        rec.tick(0.10, _inputs(0.10, rng), 0.10)            # the next tick reports it and stops
    assert not rec.recording and "stopped" in rec.status()["error"]
    partial = next((tmp_path / "eps").glob(f"*{PARTIAL_SUFFIX}"))
    assert len(read_partial(partial)[1]) == 1


def test_a_write_error_met_at_the_last_step_fails_the_save_not_silently(tmp_path, monkeypatch):
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(4)
    rec.start("grasp_lift", now=0.0)
    rec.tick(0.0, _inputs(0.0, rng), 0.0)
    assert rec._writer.drain(5.0)

    def eio(step):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(rec._log, "append", eio)
    rec.tick(0.05, _inputs(0.05, rng), 0.05)
    with pytest.raises(DiskFullError, match="Input/output error"):
        rec.stop(True, now=1.0)
    assert not rec.recording and not list((tmp_path / "eps").glob(f"*{SUFFIX}"))


def test_a_slow_disk_does_not_hold_up_the_tick(tmp_path, monkeypatch):
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(5)
    rec.start("grasp_lift", now=0.0)
    release = threading.Event()
    real_append = rec._log.append

    def stuck(step):   # the disk stalls (a journal commit) until released
        release.wait(10.0)
        real_append(step)
    monkeypatch.setattr(rec._log, "append", stuck)
    for k in range(5):
        assert rec.tick(0.05 * k, _inputs(0.05 * k, rng), 0.05 * k) == ""
    assert rec.status()["unwritten"] == 5
    release.set()
    path = rec.stop(True, now=1.0)
    assert len(load_episode(path)) == 5


def _lerobot_export(tmp_path):
    """Two recorded episodes (two tasks, one failed), exported; depth has a far patch (40 m) and
    a near-limit one (30 m)."""
    rec = _recorder(tmp_path, min_free_mb=1)
    rng = np.random.default_rng(3)
    files = []
    for e in range(2):
        rec.start("grasp_lift" if e == 0 else "grasp_drop", now=10.0 * e)
        for k in range(6 + e):
            t = 10.0 * e + 0.05 * k
            i = _inputs(t, rng)
            i.depth.value[40:80, 40:80] = 40.0
            i.depth.value[100:120, 100:120] = 30.0
            rec.tick(t, i, t)
        files.append(rec.stop(e == 0, now=10.0 * e + 1))
    out = dataset.export_lerobot(tmp_path / "eps", tmp_path / "lerobot", progress=False)
    return out, [load_episode(f) for f in files]


def _nested_shape(value) -> list[int]:
    shape = []
    while isinstance(value, list):
        lengths = {len(v) if isinstance(v, list) else -1 for v in value} if value and isinstance(value[0], list) else None
        shape.append(len(value))
        if lengths is not None and len(lengths) != 1:
            raise AssertionError(f"ragged nesting: {lengths}")
        value = value[0] if value else None
    return shape


def test_the_lerobot_export_reads_back_with_an_independent_reader(tmp_path):
    """The v3 layout read with pyarrow and Pillow alone (no project code): every declared feature
    is a column of its declared shape and dtype, depth decodes to the same millimetres as uint16
    and as int16 (LeRobot's decode), the task comes from tasks.parquet's index, and the episode
    index, timestamps, frame counts and stats agree with the episode files."""
    import io
    import json

    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    from PIL import Image

    out, eps = _lerobot_export(tmp_path)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and isinstance(info["fps"], int)
    assert info["total_episodes"] == 2 and info["total_frames"] == sum(len(e) for e in eps) == 13
    table = pq.read_table(out / info["data_path"].format(chunk_index=0, file_index=0))
    rows = table.to_pylist()
    assert set(table.column_names) == set(info["features"]) and len(rows) == 13
    arrow_dtype = {"float32": pa.float32(), "int64": pa.int64()}
    for key, ft in info["features"].items():
        field_type = table.schema.field(key).type
        if ft["dtype"] == "image":
            assert pa.types.is_struct(field_type)
            for row in rows:
                img = Image.open(io.BytesIO(row[key]["bytes"]))
                assert img.format == "PNG" and img.mode == "I;16" and list(img.size) == ft["shape"][1::-1]
        elif ft["shape"] == [1]:
            assert field_type == arrow_dtype[ft["dtype"]], key
        else:   # nested lists, as deep as the declared shape, ending in the declared dtype
            t = field_type
            for _ in ft["shape"]:
                assert pa.types.is_list(t), (key, field_type)
                t = t.value_type
            assert t == arrow_dtype[ft["dtype"]], key
            for row in rows:
                assert _nested_shape(row[key]) == ft["shape"], key
    # the rows against the episode files
    assert [r["episode_index"] for r in rows] == [0] * 6 + [1] * 7
    assert [r["index"] for r in rows] == list(range(13))
    assert [r["frame_index"] for r in rows] == list(range(6)) + list(range(7))
    assert np.allclose([r["timestamp"] for r in rows], np.r_[np.arange(6), np.arange(7)] / 20.0, atol=1e-6)
    assert np.allclose([r["observation.state"] for r in rows], np.concatenate([e["q"] for e in eps]), atol=1e-6)
    cmd = eps[1]["command"]
    assert np.allclose([r["action"] for r in rows[6:]], np.concatenate([cmd[1:], cmd[-1:]]), atol=1e-6)
    assert np.allclose(np.array([r["observation.visual"] for r in rows], np.float32),
                       np.concatenate([e["visual"] for e in eps]), atol=0)
    # depth: millimetres, lossless up to 32767 mm; beyond it no depth (0), never a wrapped value
    raw = np.concatenate([e["depth"] for e in eps])
    assert raw.max() == 40000 and np.any(raw == 30000)
    expect = np.where(raw > 32767, 0, raw)
    as_u16 = np.stack([np.array(Image.open(io.BytesIO(r["observation.images.depth"]["bytes"]))) for r in rows])
    as_i16 = np.stack([np.array(Image.open(io.BytesIO(r["observation.images.depth"]["bytes"])), np.int16)
                       for r in rows])
    assert np.array_equal(as_u16, expect) and np.array_equal(as_i16.astype(np.int64), expect.astype(np.int64))
    # tasks: LeRobot takes an item's task from tasks.parquet's (pandas) index
    tasks = pq.read_table(out / "meta" / "tasks.parquet")
    assert tasks.schema.pandas_metadata["index_columns"] == ["task"]
    by_index = dict(zip(tasks.column("task_index").to_pylist(), tasks.column("task").to_pylist()))
    assert [by_index[r["task_index"]] for r in rows] == ["grasp_lift"] * 6 + ["grasp_drop"] * 7
    # episodes
    ep_rows = pq.read_table(out / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    assert [(r["episode_index"], r["length"], r["dataset_from_index"], r["dataset_to_index"], r["tasks"])
            for r in ep_rows] == [(0, 6, 0, 6, ["grasp_lift"]), (1, 7, 6, 13, ["grasp_drop"])]
    # stats: every feature, with a count, shaped as LeRobot's writer shapes them
    stats = json.loads((out / "meta" / "stats.json").read_text())
    assert set(stats) == set(info["features"])
    for key, st in stats.items():
        assert {"min", "max", "mean", "std", "count"} <= set(st), key
        assert st["count"] == [13], key
    assert np.array(stats["observation.visual"]["mean"]).shape == tuple(info["features"]["observation.visual"]["shape"])
    assert np.array(stats["observation.images.depth"]["max"]).shape == (1, 1, 1)
    assert stats["observation.images.depth"]["max"] == [[[30000.0]]]
    assert np.allclose(stats["action"]["max"], np.max([r["action"] for r in rows], 0), atol=1e-6)
    assert stats["episode_index"]["max"] == [1.0]


def test_the_header_stamp_is_read_from_serialized_messages_without_deserializing():
    from rclpy.serialization import serialize_message

    from robot_runtime import ros_io
    depth = np.full((4, 6), 0.5, np.float32)
    for msg, t in ((ros_io.joint_state_msg(D.HAND_JOINTS, 1795298295.123456789, np.zeros(16)), 1795298295.123456789),
                   (ros_io.depth_image_msg(depth, 12.75, "cam"), 12.75)):
        assert ros_io.header_stamp_of_serialized(serialize_message(msg)) == pytest.approx(t, abs=1e-9)
    with pytest.raises(ValueError, match="not a CDR"):
        ros_io.header_stamp_of_serialized(b"\x07\x07" + bytes(20))


def test_scripted_expert_plans_off_the_loop_thread_and_holds_while_it_plans():
    """The expert's IK (a tenth of a second or more) must never run on the teleop loop's
    thread: a stalled loop stops the targets and the controllers' watchdog latches a stop."""
    from robot_runtime.config import RuntimeConfig
    from robot_runtime.teleop.factory import make_teleop_input
    from robot_runtime.teleop.inputs import WorldView

    cfg = RuntimeConfig()
    inp = make_teleop_input(cfg)
    q0 = np.concatenate([cfg.robot.arm_home, cfg.robot.hand_home])
    world = WorldView(q=q0, task="grasp_lift", active=("can",),
                      objects={"can": (np.array([0.5, 0.0, 0.055]), np.array([1.0, 0.0, 0.0, 0.0]))})
    try:
        inp.prepare(world)   # plans; what read() returns does not change until the engage
        assert inp.read(10.0, world) is None and inp.status()["episodes"] == 0
        inp.on_engage(10.0, world)
        assert inp.read(10.1, world) is not None and inp.status()["phase"] not in ("idle", "finished")
        # The way home is planned on the planner's thread; meanwhile the loop holds the last posture.
        release, planned_on = threading.Event(), []
        plan_retreat = inp._plan_retreat

        def slow_retreat(q):
            planned_on.append(threading.get_ident())
            assert release.wait(10.0)
            return plan_retreat(q)
        inp._plan_retreat = slow_retreat
        end = 10.0 + inp.expert.duration + inp.ARRIVE_TIMEOUT_S + 0.1   # late enough to count as arrived
        held = [inp.read(end + 0.03 * k, world) for k in range(5)]
        assert inp.status()["phase"] == "done" and inp.status()["success"] is False   # the can never moved
        assert all(np.array_equal(s.joints, held[0].joints) for s in held)
        assert planned_on and planned_on[0] != threading.get_ident()
        release.set()
        inp._retreat.result(timeout=10.0)
        first = inp.read(end + 1.0, world)
        assert inp.read(end + 1.5, world) is not None and inp.status()["phase"] == "retreat"
        assert not np.array_equal(inp.read(end + 3.0, world).joints, first.joints)   # on its way home
    finally:
        inp.close()


def test_a_step_the_writer_cannot_write_stops_the_writing_without_hanging_stop(tmp_path):
    """Only OSError was caught: any other error ended the writer thread, and drain() (stop())
    then waited forever for the steps queued behind it."""
    from robot_runtime.data.episode_file import PartialLog
    from robot_runtime.data.recorder import PartialLogWriter

    writer = PartialLogWriter(PartialLog(tmp_path / f"e{PARTIAL_SUFFIX}", {"test": 1}))
    good = {"q": np.zeros(23, np.float32)}
    writer.put(good)
    writer.put({"q": [[1.0, 2.0], [3.0]]})     # ragged: numpy raises ValueError
    writer.put(good)
    assert writer.drain(timeout_s=10.0), "the writer stopped taking steps"
    assert isinstance(writer.error, ValueError) and writer.written == 1
    writer.close()
    meta, steps, end = read_partial(tmp_path / f"e{PARTIAL_SUFFIX}")
    assert meta == {"test": 1} and len(steps) == 1 and end == "clean"


def test_a_writer_behind_the_loop_drops_counted_steps_instead_of_filling_memory(tmp_path):
    """The writer's queue is bounded: while the disk is behind, a step that does not fit is refused
    (the recorder counts it as ``writer_behind``), the loop never blocks, and what was queued is
    written and made durable once the writer catches up."""
    import threading

    from robot_runtime.data.episode_file import PartialLog
    from robot_runtime.data.recorder import PartialLogWriter

    class CountingLog(PartialLog):
        syncs = 0

        def sync(self):
            CountingLog.syncs += 1
            super().sync()

    disk = threading.Event()   # the writer thread waits on it before its first write: a stalled disk
    writer = PartialLogWriter(CountingLog(tmp_path / f"e{PARTIAL_SUFFIX}", {"test": 1}), disk.wait, max_queued=3)
    step = {"q": np.zeros(23, np.float32)}
    assert [writer.put(step) for _ in range(5)] == [True, True, True, False, False]
    disk.set()
    assert writer.drain(timeout_s=10.0) and writer.written == 3
    assert writer.put(step) and writer.drain(timeout_s=10.0)
    writer.close()
    assert CountingLog.syncs >= 2   # once while writing, once at close
    meta, steps, end = read_partial(tmp_path / f"e{PARTIAL_SUFFIX}")
    assert len(steps) == 4 and end == "clean"


def test_the_aligner_names_the_inputs_that_have_never_arrived():
    """What the recorder node refuses to start an episode without: each stream with no sample yet,
    and the camera's intrinsics."""
    a = _aligner()
    assert a.missing() == list(GridAligner.STREAMS) + ["camera_info"]
    _feed(a, "arm_state", 0.0, 0.1)
    a.add("depth", 0.0, np.zeros((4, 4)))
    assert a.missing() == ["hand_state", "arm_command", "hand_command", "camera_info"]
    a.K = np.eye(3)
    for s in ("hand_state", "arm_command", "hand_command"):
        _feed(a, s, 0.0, 0.1)
    assert a.missing() == []
