"""A node for the shutdown test whose start swallows a KeyboardInterrupt, as a library that
catches every exception while it initialises does. It prints ``starting`` when its start begins,
keeps starting for 3 s whatever happens, and ``close()`` prints ``closed``."""
import sys
import time

from rclpy.node import Node

from robot_runtime import ros_io


class SwallowingNode(Node):
    def __init__(self):
        super().__init__("swallowing_node")
        print("starting", flush=True)
        end = time.monotonic() + 3.0
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
            except KeyboardInterrupt:
                pass

    def close(self):
        print("closed", flush=True)


if __name__ == "__main__":
    sys.exit(ros_io.spin_ros_main(SwallowingNode, sys.argv))
