"""camera_node with the replay backend, over real DDS: depth and CameraInfo at the recording's
pace with its intrinsics, and the latched device message naming the backend."""
import json

import numpy as np
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from robot_runtime import ros_io
from tests.ros_probe import RosProbe, start_node, stop_node


def test_camera_node_replays_depth_and_says_which_camera(tmp_path):
    K = np.array([[200.0, 0, 40], [0, 200.0, 30], [0, 0, 1]])
    depth = np.stack([np.full((60, 80), 0.5 + 0.01 * i, np.float32) for i in range(10)])
    np.savez(tmp_path / "rec.npz", depth=depth, stamps=np.arange(10) / 30.0, K=K)
    (tmp_path / "cam.yaml").write_text(f"camera: {{type: replay, path: {tmp_path / 'rec.npz'}}}\n")
    probe = RosProbe("camera_probe")
    images, infos, device = [], [], []
    probe.subscribe(Image, "/camera/depth/image", ros_io.IMAGE_QOS, images)
    probe.subscribe(CameraInfo, "/camera/depth/camera_info", ros_io.IMAGE_QOS, infos)
    probe.subscribe(String, "/camera_node/device", ros_io.LATCHED_QOS, device)
    proc = start_node("robot_runtime.nodes.camera_node", "-p", f"config_file:={tmp_path / 'cam.yaml'}",
                      log_path=tmp_path / "camera.log")
    try:
        assert probe.wait_for(lambda: len(images) >= 12 and infos and device, 20.0), (tmp_path / "camera.log").read_text()
    finally:
        stop_node(proc)
        probe.close()
    assert json.loads(device[-1].data) == {"type": "replay", "serial": ""}
    frames = [float(np.nanmean(ros_io.depth_from_msg(m))) for m in images]
    assert set(np.round(frames, 2)) <= {round(0.5 + 0.01 * i, 2) for i in range(10)}   # the recording's frames
    assert np.allclose(ros_io.intrinsics_from_info(infos[-1]), K)
    # at the recording's pace: each frame stamped when released, 1/30 s after the one before (the
    # replay loops; a delivery stall on a loaded machine shows as a longer gap, never a shorter one)
    gaps = np.diff([ros_io.from_time_msg(m.header.stamp) for m in images])
    gaps = gaps[gaps > 0]   # the wrap of the loop to the first frame
    assert abs(float(np.median(gaps)) - 1 / 30) < 0.005 and gaps.min() > 1 / 30 - 0.005, gaps
