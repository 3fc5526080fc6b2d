"""camera_node: a real or replayed depth camera published as 32FC1 depth (m) plus CameraInfo,
and, when ``camera.color_hz`` is set (calibration), the colour image (rgb8) plus its CameraInfo;
``/camera_node/device`` (latched JSON: backend type and the camera's serial number).

Backends: ``zed`` (pyzed) and ``replay`` (recorded depth). In twin mode sim_node
publishes the same topics and this node is not started.
"""
from __future__ import annotations

import json
import threading

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

from robot_runtime import ros_io
from robot_runtime.config import load_config
from robot_runtime.devices.base import make_device
from robot_runtime.errors import ConfigError

FRAME = "camera_depth_optical_frame"


class CameraNode(Node):
    publishes_images = True   # depth (and colour): a large shared-memory segment (ros_io.image_publisher_transport)

    def __init__(self):
        super().__init__("camera_node")
        cfg = load_config(self.declare_parameter("config_file", "").value)
        if cfg.camera.type == "twin":
            raise ConfigError("camera_node serves zed or replay cameras; the twin's depth comes from sim_node",
                              file=cfg.source_file, key="camera.type")
        self.cfg = cfg.camera
        self.camera = make_device("camera", cfg.camera)
        self.camera.connect()
        self.pub_depth = self.create_publisher(Image, cfg.camera.depth_topic, ros_io.IMAGE_QOS)
        self.pub_info = self.create_publisher(CameraInfo, cfg.camera.info_topic, ros_io.IMAGE_QOS)
        if getattr(cfg.camera, "color_hz", 0.0) > 0:
            self.pub_color = self.create_publisher(Image, cfg.camera.color_topic, ros_io.IMAGE_QOS)
            self.pub_color_info = self.create_publisher(CameraInfo, cfg.camera.color_info_topic, ros_io.IMAGE_QOS)
        self.pub_device = self.create_publisher(String, "/camera_node/device", ros_io.LATCHED_QOS)
        self.pub_device.publish(String(data=json.dumps({"type": cfg.camera.type, "serial": self.camera.serial})))
        self.frames = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._grab_loop, daemon=True)
        self._thread.start()
        self.create_timer(0.5, self._watch)

    def _grab_loop(self) -> None:
        try:
            while not self._stop.is_set():
                f = self.camera.read(timeout_s=0.1)
                if f is None:
                    continue
                h, w = f.depth.shape
                self.pub_depth.publish(ros_io.depth_image_msg(f.depth, f.t, FRAME))
                self.pub_info.publish(ros_io.camera_info_msg(f.K, w, h, f.t, FRAME))
                if f.color is not None:
                    ch, cw = f.color.shape[:2]
                    self.pub_color.publish(ros_io.color_image_msg(f.color, f.t, FRAME))
                    self.pub_color_info.publish(ros_io.camera_info_msg(f.color_K, cw, ch, f.t, FRAME))
                self.frames += 1
        except BaseException as exc:
            self.error = exc

    def _watch(self) -> None:
        if self.error is not None:
            self.get_logger().fatal(f"camera failed: {self.error}")
            raise SystemExit(1)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1.0)
        self.camera.disconnect()


def main(args=None) -> int:
    return ros_io.spin_ros_main(CameraNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
