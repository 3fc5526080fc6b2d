"""Errors of the policy package: checkpoints that cannot be loaded or do not fit the robot."""
from robot_runtime.errors import RobotRuntimeError


class PolicyError(RobotRuntimeError):
    """Base class of policy errors."""


class CheckpointError(PolicyError):
    """A checkpoint is missing, unreadable, corrupt, or inconsistent with itself.

    The message names the file and what is wrong with it.
    """


class SchemaMismatchError(CheckpointError):
    """A checkpoint's observation/action schema does not fit the live robot configuration."""
