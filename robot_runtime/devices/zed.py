"""Stereolabs ZED 2 through pyzed.

pyzed ships with the ZED SDK (it is not on PyPI); it is imported only when a camera of
type ``zed`` is chosen, and its absence is reported with how to get it.
"""
from __future__ import annotations

import time

import numpy as np

from robot_runtime.devices.base import DepthCamera, DepthFrame
from robot_runtime.errors import DeviceError, DeviceNotAvailableError


class ZedCamera(DepthCamera):
    """Depth (metres, left camera) at the configured resolution, fps, mode and range; with
    ``color_hz`` > 0, the left colour image (the same camera, so the same K) with every frame
    that falls due at that rate."""

    def __init__(self, cfg, node=None):
        self.cfg = cfg
        self.sl = None
        self.cam = None
        self._next_color = 0.0

    def connect(self) -> None:
        try:
            import pyzed.sl as sl  # noqa: PLC0415 - vendor SDK, imported only when chosen
        except ImportError as exc:
            raise DeviceNotAvailableError(
                "camera backend 'zed' needs pyzed, which is installed by the ZED SDK "
                "(run the SDK's get_python_api.py); it is not available from PyPI") from exc
        self.sl = sl
        init = sl.InitParameters()
        init.camera_resolution = getattr(sl.RESOLUTION, self.cfg.resolution)
        init.camera_fps = self.cfg.fps
        init.depth_mode = getattr(sl.DEPTH_MODE, self.cfg.depth_mode)
        init.coordinate_units = sl.UNIT.METER
        init.depth_minimum_distance = self.cfg.min_depth
        init.depth_maximum_distance = self.cfg.max_depth
        if self.cfg.serial_number:
            init.set_from_serial_number(self.cfg.serial_number)
        cam = sl.Camera()
        status = cam.open(init)
        if status != sl.ERROR_CODE.SUCCESS:
            raise DeviceError(f"ZED camera did not open: {status}")
        info = cam.get_camera_information()
        self.serial = str(info.serial_number)
        calib = info.camera_configuration.calibration_parameters.left_cam
        self.K = np.array([[calib.fx, 0, calib.cx], [0, calib.fy, calib.cy], [0, 0, 1]], float)
        self.cam, self._mat, self._rt = cam, sl.Mat(), sl.RuntimeParameters()
        self._color_mat = sl.Mat()

    def read(self, timeout_s: float = 0.1) -> DepthFrame | None:
        if self.cam is None:
            raise DeviceError("ZED camera is not connected")
        sl = self.sl
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            err = self.cam.grab(self._rt)
            if err == sl.ERROR_CODE.SUCCESS:
                t = self.cam.get_timestamp(sl.TIME_REFERENCE.IMAGE).get_nanoseconds() * 1e-9
                self.cam.retrieve_measure(self._mat, sl.MEASURE.DEPTH)
                depth = np.array(self._mat.get_data(), dtype=np.float32, copy=True)
                depth[~np.isfinite(depth)] = np.nan
                color = None
                if self.cfg.color_hz > 0 and t >= self._next_color:
                    self._next_color = max(self._next_color + 1.0 / self.cfg.color_hz, t)
                    self.cam.retrieve_image(self._color_mat, sl.VIEW.LEFT)
                    bgra = self._color_mat.get_data()   # [H, W, 4] uint8, BGRA
                    color = np.ascontiguousarray(bgra[:, :, 2::-1])
                return DepthFrame(depth, self.K, t, color, None if color is None else self.K)
            if err == sl.ERROR_CODE.CAMERA_NOT_DETECTED:
                raise DeviceError("ZED camera vanished (CAMERA_NOT_DETECTED)")
        return None

    def disconnect(self) -> None:
        if self.cam is not None:
            self.cam.close()
            self.cam = None
