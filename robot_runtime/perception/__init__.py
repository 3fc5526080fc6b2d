"""Depth perception: the one preprocessing path from a depth frame to a policy's visual input."""
