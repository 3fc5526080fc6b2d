"""Teleoperation: hand keypoints or a 6-DoF input to 23 joint targets (retargeting, IK, filtering)."""
