"""The project's error hierarchy.

Every error the runtime raises on purpose derives from :class:`RobotRuntimeError`, so a
node's ``main`` can catch it, print one clear line and exit non-zero.
"""


class RobotRuntimeError(Exception):
    """Base class of every error robot_runtime raises on purpose."""


class ConfigError(RobotRuntimeError):
    """A configuration file is missing, malformed, or holds a bad key or value.

    The message always names the file and the dotted key path.
    """

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None):
        self.file = file
        self.key = key
        where = []
        if file:
            where.append(str(file))
        if key:
            where.append(f"key '{key}'")
        super().__init__(f"{': '.join(where)}: {message}" if where else message)


class DescriptionError(RobotRuntimeError):
    """The robot description (URDF/MJCF) is missing or inconsistent."""


class DeviceError(RobotRuntimeError):
    """A device backend failed: not connected, not reachable, or reporting a fault."""


class DeviceNotAvailableError(DeviceError):
    """A backend's vendor SDK is not installed, or its device is not connected."""


class TwinError(RobotRuntimeError):
    """The MuJoCo twin was asked for something it cannot do (unknown task, bad state)."""


class LaunchError(RobotRuntimeError):
    """A node of the launched graph failed to start or died."""


class TeleopError(RobotRuntimeError):
    """A teleoperation input or retargeting failed (no device, bad keypoints file, unreachable pose)."""


class RecordingError(RobotRuntimeError):
    """Recording or reading demonstration episodes failed."""


class DiskFullError(RecordingError):
    """Free disk space fell below the recorder's floor; the episode was stopped."""


class EpisodeFileError(RecordingError):
    """An episode file is missing, partial, corrupt, or not an episode file; the message names it."""
