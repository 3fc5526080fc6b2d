"""A node for the shutdown test, run through ``ros_io.spin_ros_main`` like every node here.

A thread publishes JointState to the node's own subscription as fast as it can, so the
main thread is nearly always inside rclpy taking a message when a signal arrives.
``close()`` prints ``closed`` (the node's clean-up ran).
"""
import sys
import threading
import time

from rclpy.node import Node
from sensor_msgs.msg import JointState

from robot_runtime import ros_io

TOPIC = "/shutdown_test/busy"


class BusyNode(Node):
    def __init__(self):
        super().__init__("busy_node")
        self.pub = self.create_publisher(JointState, TOPIC, 100)
        self.taken = 0
        self.create_subscription(JointState, TOPIC, self._on_msg, 100)
        self._stop = threading.Event()
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _on_msg(self, msg):
        self.taken += 1

    def _feed(self):
        msg = JointState(name=[f"joint{i}" for i in range(23)], position=[0.0] * 23)
        while not self._stop.is_set():
            self.pub.publish(msg)
            time.sleep(0.0002)

    def close(self):
        self._stop.set()
        self._feeder.join(2.0)
        print(f"closed after taking {self.taken} messages", flush=True)


if __name__ == "__main__":
    sys.exit(ros_io.spin_ros_main(BusyNode, sys.argv))
