"""The in-process twin driven as the controllers drive the robot: one step, shared by every user.

:class:`ShieldedTwinDrive` takes joint targets [23] once per command period (the policy's
50 ms, say), passes the arm's and the hand's through the controllers' safety shield (their
limits, scaled from a controller tick to the period), then runs the physics over the period
with the arm's servo target moving linearly to the shielded command and the hand's PD
torques computed at every physics step from its measured state, as the hand controller
does. The rollout runner, the scripted expert's playback, the scripted demo episodes and the
calibration run on the twin all step through it, so none of them can move the twin in a
way the robot's own controllers would refuse.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from robot_runtime import description as D
from robot_runtime.config import RuntimeConfig
from robot_runtime.control.factory import joint_limits
from robot_runtime.control.pd import pd_torque
from robot_runtime.control.safety import ShieldState, shield_step


class ShieldedTwinDrive:
    """Steps a :class:`robot_runtime.twin.sim.TwinSimulation` one command period at a time.

    Args:
        sim: the twin (already reset, or :meth:`reset` after resetting it).
        cfg: the control limits, hand gains and controller rates.
        period: the command period (s); the physics runs ``round(period / sim.dt)`` steps per command.
    """

    def __init__(self, sim, cfg: RuntimeConfig, period: float):
        self.sim, self.period = sim, float(period)
        self.substeps = max(1, int(round(self.period / sim.dt)))
        self.hand = cfg.control.hand
        # The controllers' limits hold per controller tick; one command period spans several.
        self.limits = {
            "arm": self._per_period(joint_limits(D.ARM_JOINTS, D.ARM_LIMITS, cfg.control.arm), cfg.rates.arm_hz),
            "hand": self._per_period(joint_limits(D.HAND_JOINTS, D.HAND_LIMITS, cfg.control.hand), cfg.rates.hand_hz)}
        self.reset()

    def _per_period(self, limits, rate_hz: float):
        return replace(limits, max_step=limits.max_step * rate_hz * self.period)

    def measured(self) -> np.ndarray:
        """The measured joints [23] (rad): arm then hand."""
        return np.concatenate([self.sim.arm_state().position, self.sim.hand_state().position])

    def reset(self) -> np.ndarray:
        """Start from rest at the measured joints (after the twin's reset); returns them [23]."""
        q0 = self.measured()
        self.shield = {"arm": ShieldState.at_rest(q0[:7]), "hand": ShieldState.at_rest(q0[7:])}
        self.command = q0.copy()
        return q0

    def step(self, target) -> tuple[str, ...]:
        """Shield ``target`` [23] (rad) and run the physics for one period; returns the shield's
        interventions (reasons, empty when the target was taken as is)."""
        target = np.asarray(target, float)
        new = np.empty(23)
        reasons: list[str] = []
        for part, sl in (("arm", slice(0, 7)), ("hand", slice(7, 23))):
            res = shield_step(self.limits[part], self.shield[part], target[sl], self.period)
            self.shield[part] = res.state
            new[sl] = res.q
            reasons += res.reasons
        h, sim, cmd = self.hand, self.sim, self.command
        for i in range(1, self.substeps + 1):
            x = cmd + (new - cmd) * (i / self.substeps)
            sim.set_arm_target(x[:7])
            hs = sim.hand_state()
            sim.set_hand_torque(pd_torque(x[7:], hs.position, hs.velocity, h.kp, h.kd, h.torque_limit))
            sim.step()
        self.command = new
        return tuple(reasons)
