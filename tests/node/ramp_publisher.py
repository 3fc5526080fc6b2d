"""A stand-alone 20 Hz target publisher (a process of its own, so a test can kill it).

Publishes the 23 joint targets on a topic, each stamped for the next tick: the home
pose plus a ramp of ``speed`` rad/s on arm joints 1 and 4 and on the index finger's
joints 1 and 2, started once ``subscribers`` readers are matched. It imports only rclpy
and numpy, so it starts quickly.

Usage: python tests/node/ramp_publisher.py TOPIC SPEED SUBSCRIBERS NAME=HOME ...
"""
import signal
import sys
import threading
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import JointState

RAMPED = ("joint1", "joint4", "joint_1.0", "joint_2.0")


def main() -> None:
    topic, speed, subscribers = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    names = [a.split("=")[0] for a in sys.argv[4:]]
    home = np.array([float(a.split("=")[1]) for a in sys.argv[4:]])
    mask = np.array([n in RAMPED for n in names], float)
    # SIGINT/SIGTERM set a flag the loop checks (an exception raised at an arbitrary point, inside
    # a publish, is what the default handler would do)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("ramp_publisher")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
    pub = node.create_publisher(JointState, topic, qos)
    while pub.get_subscription_count() < subscribers and not stop.is_set():
        stop.wait(0.01)
    period = 0.05
    t0 = time.time()
    k = 1
    while not stop.wait(max(0.0, t0 + k * period - time.time())):
        k += 1
        t_for = time.time() + period
        msg = JointState(name=names, position=[float(v) for v in home + speed * (t_for - t0) * mask])
        sec = int(t_for)
        msg.header.stamp = Time(sec=sec, nanosec=int((t_for - sec) * 1e9))
        pub.publish(msg)
    node.destroy_node()
    rclpy.try_shutdown()


if __name__ == "__main__":
    main()
