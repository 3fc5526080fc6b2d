"""Message conversions and the shared depth input: what a peer can publish never ends a node."""
import numpy as np
import pytest
import rclpy
from sensor_msgs.msg import Image

from robot_runtime import ros_io


def _image(pixels: np.ndarray, encoding: str, pad: int = 0, big: bool = False) -> Image:
    """An Image of ``pixels`` with ``pad`` bytes after each row, in either byte order."""
    px = pixels.astype(pixels.dtype.newbyteorder(">" if big else "<"))
    rows = px.reshape(px.shape[0], -1).view(np.uint8)
    rows = np.concatenate([rows, np.full((rows.shape[0], pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=pixels.shape[0], width=pixels.shape[1], encoding=encoding, is_bigendian=int(big),
                step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def test_depth_from_msg_reads_padded_rows_either_byte_order_and_millimetres():
    depth = np.arange(12, dtype=np.float32).reshape(3, 4) * 0.25
    for pad in (0, 8):
        for big in (False, True):
            out = ros_io.depth_from_msg(_image(depth, "32FC1", pad, big))
            assert out.dtype == np.float32 and np.array_equal(out, depth), (pad, big)
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    out = ros_io.depth_from_msg(_image(mm, "16UC1", pad=2, big=True))
    assert np.isnan(out[0, 0]) and out[0, 1] == 1.0 and out[1, 0] == 1.5 and out[1, 1] == pytest.approx(65.535)


def test_depth_from_msg_names_what_is_malformed():
    good = _image(np.ones((5, 7), np.float32), "32FC1")
    rgb = ros_io.color_image_msg(np.zeros((5, 7, 3), np.uint8), 0.0, "camera")
    short = _image(np.ones((5, 7), np.float32), "32FC1")
    short.data = short.data[:100]
    narrow = _image(np.ones((5, 7), np.float32), "32FC1")
    narrow.step = 20
    odd = _image(np.ones((5, 7), np.float32), "32FC1", pad=2)
    empty = Image(height=0, width=7, encoding="32FC1", step=28)
    huge = Image(height=100_000, width=7, encoding="32FC1", step=28)
    for msg, match in ((rgb, "unsupported depth encoding 'rgb8'"), (short, "100 bytes, expected 5 rows"),
                       (narrow, "step 20 bytes"), (odd, "step 30 bytes"), (empty, "7x0 pixels"),
                       (huge, "7x100000 pixels")):
        with pytest.raises(ValueError, match=match):
            ros_io.depth_from_msg(msg)
    assert ros_io.depth_from_msg(good).shape == (5, 7)


@pytest.fixture
def node():
    context = rclpy.Context()
    rclpy.init(context=context)
    n = rclpy.create_node("depth_input_check", context=context)
    yield n
    n.destroy_node()
    rclpy.shutdown(context=context)


def test_depth_input_drops_frames_until_intrinsics_and_skips_malformed_ones(node):
    frames = []
    depth = ros_io.DepthInput(node, "/d", "/d_info", node.get_logger(), on_frame=lambda *f: frames.append(f))
    good = ros_io.depth_image_msg(np.full((4, 6), 0.5, np.float32), 2.0, "camera")
    bad = ros_io.color_image_msg(np.zeros((4, 6, 3), np.uint8), 2.0, "camera")
    depth._deliver(good, lambda *f: frames.append(f))
    assert frames == [] and depth.dropped == {"no_intrinsics": 1}   # no K: no identity guess projects it
    depth.on_info(ros_io.camera_info_msg(np.zeros((3, 3)), 6, 4, 1.0, "camera"))
    assert depth.K is None                                          # K = 0 is not usable
    K = np.array([[5.0, 0, 3], [0, 5.0, 2], [0, 0, 1]])
    depth.on_info(ros_io.camera_info_msg(K, 6, 4, 1.0, "camera"))
    assert depth.on_depth(bad) is None and depth.dropped == {"no_intrinsics": 1, "malformed": 1}
    assert "rgb8" in depth.last_drop
    t, d, k = depth.on_depth(good)
    assert t == 2.0 and d.shape == (4, 6) and np.array_equal(k, K)
    depth.destroy()


def test_guarded_callback_drops_what_it_cannot_use(node):
    import json

    seen = []
    cb = ros_io.guarded(lambda m: seen.append(json.loads(m)["mode"]), node.get_logger(), "/x/status")
    cb('{"mode": "armed"}')
    for bad in ("{not json", "[1, 2]", '{"other": 1}', "null"):
        cb(bad)                      # a ValueError, TypeError or KeyError inside: dropped, not raised
    assert seen == ["armed"]
    with pytest.raises(ZeroDivisionError):   # a bug of the callback's own is not hidden
        ros_io.guarded(lambda m: 1 / 0, node.get_logger(), "/x")(None)


_SEGMENT_PROBE = """
import os, sys
from robot_runtime import ros_io
before = set(os.listdir('/dev/shm'))
if sys.argv[1] == 'images':
    ros_io.image_publisher_transport()
import rclpy
rclpy.init()
node = rclpy.create_node('segment_probe')
new = [f for f in set(os.listdir('/dev/shm')) - before if f.startswith('fastrtps_') and '_' not in f[9:]]
print(max((os.path.getsize('/dev/shm/' + f) for f in new), default=0))
node.destroy_node()
rclpy.shutdown()
"""


@pytest.mark.skipif(not __import__("os").path.isdir("/dev/shm"), reason="no /dev/shm")
def test_an_image_publisher_gets_a_shared_memory_segment_that_holds_several_frames(tmp_path):
    """Fast DDS reads the written profile: the participant's segment is 32 MiB, not 512 KiB."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ros_io._PROFILE_VARS}
    env["TMPDIR"] = str(tmp_path)
    sizes = {}
    for kind in ("images", "plain"):
        out = subprocess.run([sys.executable, "-c", _SEGMENT_PROBE, kind], env=env, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        sizes[kind] = int(out.stdout.split()[-1])
    assert sizes["images"] >= ros_io.IMAGE_SHM_SEGMENT_BYTES > 8 * sizes["plain"] > 0, sizes
    assert list(tmp_path.glob("robot_runtime_fastdds_*.xml")), "the profile file was not written"


def test_image_publisher_transport_leaves_a_users_profile_or_another_rmw_alone(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "/etc/lab_profile.xml")
    monkeypatch.delenv("FASTRTPS_DEFAULT_PROFILES_FILE", raising=False)
    assert ros_io.image_publisher_transport() is None
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    monkeypatch.setenv("RMW_IMPLEMENTATION", "rmw_cyclonedds_cpp")
    assert ros_io.image_publisher_transport() is None
    assert "FASTRTPS_DEFAULT_PROFILES_FILE" not in __import__("os").environ
