"""Rerun visualisation of rollouts: the robot model, the policy's inputs, targets and timing.

:mod:`robot_runtime.viz.rerun_log` holds :class:`~robot_runtime.viz.rerun_log.RolloutLogger`
(no ROS in it), used by ``viz_node``, ``robot-runtime replay`` and ``robot-runtime eval --rrd``.
The Rerun SDK is imported only when a logger is made.
"""
