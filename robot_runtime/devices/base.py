"""One small interface per device family, and :func:`make_device`, which builds the backend
a config's ``type`` names.

Backends are registered once, with their config dataclass, in :mod:`robot_runtime.config`
(:func:`~robot_runtime.config.register_backend_config`), by module path, so a vendor SDK
(pyzed, xarm) is imported only when its backend is chosen. The twin and replay backends are
registered exactly like the real ones.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from robot_runtime.config import backend_target


@dataclass(frozen=True)
class JointSample:
    """Joint positions (rad), velocities (rad/s) and efforts (N m), each [n], acquired at ``t`` (s)."""

    t: float
    position: np.ndarray
    velocity: np.ndarray
    effort: np.ndarray


@dataclass(frozen=True)
class DepthFrame:
    """Depth [H, W] float32 (m along the optical axis, NaN = invalid), intrinsics K [3, 3],
    acquisition time ``t`` (s); and, when the camera's colour stream is on and one is due, the
    colour image taken with it [Hc, Wc, 3] uint8 RGB with its intrinsics ``color_K`` [3, 3]."""

    depth: np.ndarray
    K: np.ndarray
    t: float
    color: np.ndarray | None = None
    color_K: np.ndarray | None = None


@dataclass(frozen=True)
class DeviceFault:
    """A fault reported by a device: its code, what it means, and whether it is an error
    (motion must stop) or a warning (reported only)."""

    code: int | None
    text: str
    error: bool = True

    def __str__(self) -> str:
        return self.text


class ArmDevice(ABC):
    """A 7-DoF arm taking joint servo targets (rad) in ``joint1..joint7`` order.

    ``rejected_states`` counts joint states the backend received and refused (malformed, not
    finite); the controller reports it.
    """

    rejected_states = 0

    @abstractmethod
    def connect(self) -> None:
        """Open the connection; raise DeviceError / DeviceNotAvailableError when it cannot."""

    @abstractmethod
    def read_state(self) -> JointSample | None:
        """Newest joint state, or None when none has arrived yet."""

    @abstractmethod
    def send_servo_target(self, q: np.ndarray) -> None:
        """Stream one servo target [7] (rad). The caller is responsible for small steps."""

    @abstractmethod
    def stop(self) -> None:
        """Stop motion now."""

    @abstractmethod
    def disconnect(self) -> None: ...

    def enable(self) -> None:
        """Make the arm ready to stream servo targets (explicit operator action: clears errors).

        Raises:
            DeviceError: the arm refused; the message names the fault.
        """

    def faults(self) -> list[DeviceFault]:
        """Active faults (empty when healthy)."""
        return []


class HandDevice(ABC):
    """A 16-DoF Allegro hand taking joint torques (N m) in the driver's joint order
    (``rejected_states``: as :class:`ArmDevice`'s)."""

    rejected_states = 0

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def read_state(self) -> JointSample | None: ...

    @abstractmethod
    def send_torque(self, tau: np.ndarray) -> None:
        """Send torques [16] (N m)."""

    @abstractmethod
    def disconnect(self) -> None: ...


class DepthCamera(ABC):
    """A depth camera giving metric depth frames stamped at acquisition. ``serial`` is the
    connected camera's serial number ('' where the backend has none)."""

    serial: str = ""

    @abstractmethod
    def connect(self) -> None: ...

    @abstractmethod
    def read(self, timeout_s: float = 0.1) -> DepthFrame | None:
        """The next new frame, or None when none arrived within ``timeout_s``."""

    @abstractmethod
    def disconnect(self) -> None: ...


def make_device(family: str, cfg, **deps):
    """Build the backend for ``cfg.type`` (``deps``: e.g. ``node=`` for topic backends).

    Raises:
        ConfigError: no backend of that type is registered.
    """
    module, cls = backend_target(family, cfg.type).split(":")
    return getattr(importlib.import_module(module), cls)(cfg, **deps)
