"""recorder_node: demonstrations on the policy's grid, one crash-safe file per episode.

A deadline loop at ``rates.policy_hz`` takes every depth frame, both controllers' joint
states and both controllers' sent commands (``/<controller>/command``: what the safety
shield let through) into a :class:`robot_runtime.data.recorder.GridAligner`, which gives
each grid instant (on the camera's frames when the camera's rate divides the grid's and
``policy.tick_lock`` is ``camera``, as the policy's ticks are:
:class:`robot_runtime.control.loop.FrameLockedInstants`) the newest of each acquired at or before it (by acquisition stamp; a
loop that wakes late catches up rather than dropping steps), and hands each instant to
:class:`robot_runtime.data.recorder.EpisodeRecorder`. The fast streams stay serialized
until an instant uses them.
The policy input is made by the same preprocessing as ``policy_node`` (the checkpoint's,
when ``policy.checkpoint`` is set), and the proprioception is also stored in its order.

Parameters: ``config_file``; ``task`` and ``operator_note`` (read when an episode starts).
Services: ``~/start_episode`` (Trigger), ``~/stop_episode`` (SetBool: ``data`` is the
success flag; saves), ``~/discard_episode`` (Trigger). Topics: ``~/status`` (latched JSON:
recording, steps, dropped steps by reason, last file, error), ``/diagnostics``.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

from calibration.extrinsics import calibration_metadata
from policies.schema import PolicySchema
from robot_runtime import description as D
from robot_runtime import ros_io
from robot_runtime.config import config_to_dict, load_config
from robot_runtime.control.loop import FrameLockedInstants, request_realtime, tighten_gil_switching
from robot_runtime.data.recorder import WAITING_FOR_INPUTS, EpisodeRecorder, GridAligner
from robot_runtime.errors import RecordingError
from robot_runtime.interfaces import COMMAND_TOPICS, STATE_TOPICS
from robot_runtime.nodes.loop_node import LoopNode
from robot_runtime.perception.preprocess import VisualPreprocessor

NAME = "recorder_node"
#: Samples kept per stream, in the DDS queue and in the aligner: about 1 s at each stream's
#: rate (depth 30 Hz, arm 120 Hz, hand 300 Hz), so a recorder loop stalled that long loses no step.
HISTORY_DEPTH = {"depth": 32, "arm_state": 128, "arm_command": 128, "hand_state": 320, "hand_command": 320}


def _decode_positions(raw: bytes) -> np.ndarray:
    return np.asarray(deserialize_message(raw, JointState).position, float)


def _history_qos(stream: str) -> QoSProfile:
    # images are best effort (ros_io.IMAGE_QOS says why); the joint streams reliable
    reliability = ReliabilityPolicy.BEST_EFFORT if stream == "depth" else ReliabilityPolicy.RELIABLE
    return QoSProfile(depth=HISTORY_DEPTH[stream], reliability=reliability,
                      history=HistoryPolicy.KEEP_LAST)


def policy_schema(cfg) -> PolicySchema:
    """The configured checkpoint's schema (its order and preprocessing), else HOP's default."""
    if cfg.policy.checkpoint:
        from policies.checkpoint import load_checkpoint  # noqa: PLC0415

        return load_checkpoint(cfg.policy.checkpoint).schema
    return PolicySchema.hop()


class RecorderNode(LoopNode):
    hardware_id = "recorder"

    def __init__(self):
        super().__init__(NAME)
        cfg = load_config(self.declare_parameter("config_file", "").value)
        self.cfg, self.rcfg = cfg, cfg.recorder
        self.declare_parameter("task", cfg.twin.task)
        self.declare_parameter("operator_note", "")
        schema = policy_schema(cfg)
        calibration = calibration_metadata(cfg)   # the calibration file read once, for the pose and the metadata
        T = calibration["T_base_camera"]
        T_base_camera = None if T is None else np.asarray(T, dtype=float)
        out = Path(self.rcfg.out_dir)   # absolute: the config loader resolved it
        static = {"joint_names": list(D.ALL_JOINTS), "proprio_joint_names": list(schema.joint_names),
                  "config": config_to_dict(cfg), "calibration": calibration,
                  "source": {"teleop_input": cfg.teleop.input.type if cfg.teleop.enabled else "",
                             "policy_checkpoint": str(cfg.policy.checkpoint)}}
        self.recorder = EpisodeRecorder(out, cfg.rates.policy_hz, VisualPreprocessor(schema.visual, T_base_camera),
                                        schema.index_in(D.ALL_JOINTS), static, self.rcfg.depth_stride,
                                        self.rcfg.min_free_mb, self.rcfg.max_episode_s,
                                        cfg.policy.max_frame_age_s, cfg.policy.max_state_age_s,
                                        writer_setup=self._writer_setup)
        self.depth = ros_io.DepthInput(self.io, cfg.camera.depth_topic, cfg.camera.info_topic, self.get_logger(),
                                       _history_qos("depth"))
        self.sub_state = {p: ros_io.PolledSubscription(self.io, JointState, t, _history_qos(f"{p}_state"))
                          for p, t in STATE_TOPICS.items()}
        self.sub_cmd = {p: ros_io.PolledSubscription(self.io, JointState, t, _history_qos(f"{p}_command"))
                        for p, t in COMMAND_TOPICS.items()}
        self.create_service(Trigger, f"/{NAME}/start_episode", self._on_start)
        self.create_service(SetBool, f"/{NAME}/stop_episode", self._on_stop)
        self.create_service(Trigger, f"/{NAME}/discard_episode", self._on_discard)
        period = 1.0 / cfg.rates.policy_hz
        self._streams = {**{f"{p}_state": s for p, s in self.sub_state.items()},
                         **{f"{p}_command": s for p, s in self.sub_cmd.items()}}
        decode = {s: _decode_positions for s in self._streams}   # depth arrives decoded and checked
        self.aligner = GridAligner(period, cfg.policy.max_frame_age_s, HISTORY_DEPTH, decode)
        self._lock = threading.Lock()
        self._new_frames: list[float] = []
        self.instants = FrameLockedInstants(period) if cfg.policy.tick_lock == "camera" else None
        self._wall_offset = time.time() - time.monotonic()   # the loop's deadlines are monotonic
        self.start_loop(cfg.rates.policy_hz, self.rcfg.realtime_priority, cfg.control.spin_us * 1e-6,
                        "recorder.realtime_priority")
        self.publish_status()
        self.get_logger().info(f"recording to {out} at {cfg.rates.policy_hz:g} Hz; "
                               f"start with /{NAME}/start_episode")

    def _writer_setup(self) -> None:
        """The episode log writer runs just below the loop's priority: descheduled while holding
        the GIL, a normal-priority writer would hold up the real-time loop."""
        if self.rcfg.realtime_priority > 1:
            request_realtime(self.rcfg.realtime_priority - 1)
        tighten_gil_switching()

    def _take_inputs(self) -> None:
        """Every message that arrived, into the aligner's histories by acquisition stamp. Joint
        streams stay serialized: only the few an instant uses are deserialized (``_decode_*``).
        Depth frames are checked as they arrive (:class:`robot_runtime.ros_io.DepthInput`): one
        that cannot be used is dropped and counted, before the aligner ever holds it."""
        a = self.aligner
        for stamp, depth, K in self.depth.take_all(HISTORY_DEPTH["depth"]):
            a.K = K
            a.add("depth", stamp, depth)
            self._new_frames.append(stamp)
        for stream, sub in self._streams.items():
            for raw in sub.take_serialized_all(HISTORY_DEPTH[stream]):
                a.add(stream, ros_io.header_stamp_of_serialized(raw), raw)

    def _mark(self, t: float) -> None:
        """The grid instants reached by ``t`` (s): on the camera's frames when the policy's ticks
        are (policy.tick_lock), so that a step's observation is as old as the policy's will be."""
        frames, self._new_frames = sorted(self._new_frames), []
        if self.instants is None:
            self.aligner.mark(t)
            return
        for instant in self.instants.instants(frames, t):
            self.aligner.mark(instant)

    def _record_settled(self, now: float, flush: bool = False) -> None:
        """Record every grid instant the aligner has settled; the caller holds the lock."""
        for t, inputs in self.aligner.settled(now, flush):
            try:
                self.recorder.tick(t, inputs, now)
            except RecordingError as exc:
                self.get_logger().error(str(exc))

    def tick(self, now: float, deadline: float) -> None:
        if not self._lock.acquire(blocking=False):   # a save is in progress: the next tick catches up
            return
        try:
            self._take_inputs()
            self._mark(deadline + self._wall_offset)   # the stamps' (wall) clock
            self._record_settled(now)
        finally:
            self._lock.release()

    def diagnostics(self, now: float) -> tuple[dict, int, str]:
        st = self.recorder.status()
        values = {"recording": st["recording"], "steps": st["steps"], "total_dropped": st["total_dropped"],
                  "saved": st["saved"], **{f"depth_dropped_{k}": v for k, v in self.depth.dropped.items()}}
        return values, 2 if st["error"] else 0, st["error"] or "ok"

    # ------------------------------------------------------------------ services
    def _on_start(self, request, response):
        task = self.get_parameter("task").value
        note = self.get_parameter("operator_note").value

        def start() -> str:
            # an episode opened before every input has arrived once would begin with dropped steps
            self._take_inputs()
            missing = self.aligner.missing()
            if missing:
                raise RecordingError(f"{WAITING_FOR_INPUTS}: nothing has arrived yet on {', '.join(missing)}")
            return str(self.recorder.start(task, note))
        return self._serve(response, start)

    def _on_stop(self, request, response):
        def stop() -> str:
            if self.recorder.recording:   # the grid instants up to now, with what has arrived
                self._take_inputs()
                self.aligner.mark_through(time.time())
                self._record_settled(time.time(), flush=True)
            path = self.recorder.stop(bool(request.data))
            return json.dumps({"file": str(path), "dropped": self.recorder.status()["dropped"]})
        return self._serve(response, stop)

    def _on_discard(self, request, response):
        return self._serve(response, lambda: self.recorder.stop(None, discard=True) or "discarded")

    def _serve(self, response, action):
        """Run a recorder action under the lock; its message, or the RecordingError's, answers."""
        with self._lock:
            try:
                response.success, response.message = True, action()
            except RecordingError as exc:
                response.success, response.message = False, str(exc)
        self._log(response)
        return response

    def _log(self, response) -> None:
        if response.success:
            self.get_logger().info(response.message)
        else:
            self.get_logger().error(response.message)
        self.publish_status()

    def status(self) -> dict:
        return {**self.recorder.status(), "depth_dropped": dict(self.depth.dropped)}

    def status_key(self, status: dict):
        if status["recording"]:   # while recording every status goes out (the steps move)
            return status
        return {k: v for k, v in status.items() if k not in ("steps", "dropped", "total_dropped", "depth_dropped")}

    def close(self) -> None:
        self.stop_loop()
        if self.recorder.recording:   # shut down mid-episode: keep the steps in the .partial log
            self.get_logger().warn(f"stopped mid-episode; the steps stay in {self.recorder.status()['episode']}")
            self.recorder.close()
        self.destroy_io()


def main(args=None) -> int:
    return ros_io.spin_ros_main(RecorderNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
