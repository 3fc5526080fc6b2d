"""A test-side rclpy node spinning on its own thread, with event-based waiting."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.qos import HistoryPolicy, QoSProfile

from robot_runtime.ros_io import PolledSubscription, SpunNode

REPO = Path(__file__).resolve().parent.parent


class RosProbe:
    """Services and publishers on ``node`` (spun by a thread); recorded topics are polled
    subscriptions on a second node, drained every 2 ms (executor callbacks at the rates
    the controllers publish would cost the test a third of a core)."""

    def __init__(self, name: str = "test_probe"):
        self.spun = SpunNode(name)
        self.context, self.node = self.spun.context, self.spun.node
        self.io = rclpy.create_node(f"{name}_io", context=self.context)
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._recorded: list[tuple] = []
        self._lock = threading.Lock()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()

    def _drain(self):
        while not self._stop.wait(0.002):
            with self._lock:
                recorded = list(self._recorded)
            got = False
            for sub, store in recorded:
                msgs = sub.take_all(limit=1000)
                if msgs:
                    got = True
                    with self._cv:
                        store.extend(msgs)
            if got:
                with self._cv:
                    self._cv.notify_all()

    def subscribe(self, msg_type, topic, qos, store: list, keep: int = 500):
        """Append every message on ``topic`` to ``store`` and wake waiters (``keep``: queue depth
        between drains)."""
        deep = QoSProfile(depth=max(qos.depth, keep), reliability=qos.reliability, durability=qos.durability,
                          history=HistoryPolicy.KEEP_LAST)
        sub = PolledSubscription(self.io, msg_type, topic, deep)
        with self._lock:
            self._recorded.append((sub, store))
        return sub

    def wait_for(self, predicate, timeout: float) -> bool:
        """Block until ``predicate()`` is true (checked on every message) or ``timeout``."""
        end = time.monotonic() + timeout
        with self._cv:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.1))
        return True

    def call(self, client, request, timeout: float = 10.0):
        if not client.wait_for_service(timeout_sec=timeout):
            raise TimeoutError(f"service {client.srv_name} not available")
        fut = client.call_async(request)
        done = threading.Event()
        fut.add_done_callback(lambda _f: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"service {client.srv_name} did not answer")
        return fut.result()

    def close(self):
        self._stop.set()
        self._drainer.join(2.0)
        self.io.destroy_node()
        self.spun.close()


def start_node(module: str, *ros_args: str, log_path: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], env=env, cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop_node(proc: subprocess.Popen, timeout: float = 10.0, sig=None) -> int:
    """Stop a process started in a session of its own: ``sig`` (default SIGINT) to its group, then
    SIGKILL if it is still running after ``timeout`` s; returns its exit code."""
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT if sig is None else sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not exited (a zombie counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")
