"""Joint-space PD torque law (pure)."""
from __future__ import annotations

import numpy as np


def pd_torque(q_target, q, qd, kp, kd, tau_limit) -> np.ndarray:
    """tau = kp (q* - q) - kd q', clipped to +-tau_limit (all [n]; rad, rad/s, N m/rad, N m s/rad, N m)."""
    tau = np.asarray(kp) * (np.asarray(q_target) - np.asarray(q)) - np.asarray(kd) * np.asarray(qd)
    return np.clip(tau, -np.asarray(tau_limit), np.asarray(tau_limit))
