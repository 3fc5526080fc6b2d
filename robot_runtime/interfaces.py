"""The graph's topic names and the typed status the controllers publish (no ROS here).

Every node takes its topic names from here, and a node that reads a controller's status
parses it with :meth:`ControllerStatus.from_json`: what a stop was is a :class:`StopKind`,
never a reason string matched on the reader's side.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import Enum

CONTROLLERS = ("arm_controller_node", "hand_controller_node")
#: Measured joint states each controller republishes at its loop rate.
STATE_TOPICS = {"arm": "/arm_controller_node/joint_states", "hand": "/hand_controller_node/joint_states"}
#: What each controller sent to its device (the safety shield's output).
COMMAND_TOPICS = {"arm": "/arm_controller_node/command", "hand": "/hand_controller_node/command"}
DIAGNOSTICS_TOPIC = "/diagnostics"
#: The twin's latched episode (task, objects) and its object poses.
TWIN_EPISODE_TOPIC = "/twin/episode"
TWIN_OBJECTS_TOPIC = "/twin/object_poses"


def status_topic(node: str) -> str:
    """A node's latched JSON status topic."""
    return f"/{node}/status"


class Mode(str, Enum):
    """A controller's mode."""

    DISARMED = "disarmed"
    ARMED = "armed"
    STOPPED = "stopped"


class StopKind(str, Enum):
    """Why a controller latched a stop (``NONE`` while it has not)."""

    NONE = "none"
    ESTOP = "estop"                        # the e-stop service, or a caller's estop()
    WATCHDOG = "watchdog"                  # no fresh target for control.latch_after_s
    STATE_STALL = "state_stall"            # the device's joint states stopped arriving
    MEASURED_NOT_FINITE = "measured_not_finite"
    SHIELD_NOT_FINITE = "shield_not_finite"
    DEVICE_FAULT = "device_fault"          # the device reported an error (an xArm error code)
    DEVICE_ERROR = "device_error"          # reading from or sending to the device failed

    @property
    def is_stall(self) -> bool:
        """A stop from late inputs on a loaded machine, which arming again may clear; an e-stop, a
        fault or a non-finite value stays stopped until someone decides."""
        return self in (StopKind.WATCHDOG, StopKind.STATE_STALL)


@dataclass(frozen=True)
class ControllerStatus:
    """What ``/<controller>/status`` says.

    Attributes:
        controller: 'arm' or 'hand'.
        mode: see :class:`Mode`.
        stop: why it stopped (``StopKind.NONE`` unless ``mode`` is STOPPED).
        reason: the stop's (or the start's) explanation, for people.
        source: the target source it follows ('policy' or 'teleop').
        targets: the freshness of that source's targets ('fresh', 'hold', ..., or 'none').
        faults: the device's reported faults, each in words.
    """

    controller: str
    mode: Mode
    stop: StopKind = StopKind.NONE
    reason: str = ""
    source: str = ""
    targets: str = "none"
    faults: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(mode=self.mode.value, stop=self.stop.value, faults=list(self.faults))
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d) -> "ControllerStatus":
        """Raises ValueError naming the field that is missing or not what it must be."""
        if not isinstance(d, dict):
            raise ValueError(f"a controller status is a JSON object, not {type(d).__name__}")
        try:
            mode, stop = Mode(d["mode"]), StopKind(d.get("stop", StopKind.NONE.value))
        except KeyError as exc:
            raise ValueError(f"controller status has no {exc.args[0]!r}") from exc
        except ValueError as exc:
            raise ValueError(f"controller status: {exc}") from exc
        faults = d.get("faults", [])
        if not isinstance(faults, list):
            raise ValueError("controller status: 'faults' must be a list")
        return cls(str(d.get("controller", "")), mode, stop, str(d.get("reason", "")), str(d.get("source", "")),
                   str(d.get("targets", "none")), tuple(str(f) for f in faults))

    @classmethod
    def from_json(cls, text: str) -> "ControllerStatus":
        """Raises ValueError (bad JSON or a bad field)."""
        return cls.from_dict(json.loads(text))
