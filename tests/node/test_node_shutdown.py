"""Every node stops the same way on SIGINT or SIGTERM, whatever its main thread is doing:
its clean-up runs and it exits 0 (ros_io.spin_ros_main)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from sensor_msgs.msg import JointState

from robot_runtime import ros_io
from tests.node.busy_node import TOPIC
from tests.ros_probe import REPO, RosProbe, process_running, start_node


def _signal_and_wait(proc: subprocess.Popen, sig, log, what: str = "", timeout: float = 10.0) -> int:
    """Send ``sig`` to ``proc``'s group and return its exit code; fail the test (after SIGKILL)
    when it is still running ``timeout`` s later, with the end of its log."""
    os.killpg(proc.pid, sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{what}still running {timeout:g} s after {sig.name}\n{log.read_text()[-1500:]}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_node_busy_taking_messages_stops_cleanly(tmp_path, sig):
    # Under Python's own SIGINT handling the KeyboardInterrupt could land inside rclpy's
    # message take: the node then died with a RuntimeError and a traceback (viz_node did,
    # twice in fifteen test runs), or the executor lost it and the node spun on until
    # killed. SIGTERM used to kill a node without its clean-up. Five tries each: on the
    # old code the SIGINT failure did not strike every try.
    probe = RosProbe("shutdown_probe")
    seen = []
    probe.subscribe(JointState, TOPIC, ros_io.STATE_QOS, seen)
    try:
        for attempt in range(5):
            log = tmp_path / f"busy{attempt}.log"
            proc = start_node("tests.node.busy_node", log_path=log)
            n = len(seen)
            assert probe.wait_for(lambda: len(seen) > n + 200, 30.0), log.read_text()
            code = _signal_and_wait(proc, sig, log, f"attempt {attempt}: ")
            text = log.read_text()
            assert code == 0 and "closed after taking" in text and "Traceback" not in text, (attempt, code, text[-1500:])
    finally:
        probe.close()


def test_a_signal_during_a_start_that_swallows_it_still_stops_the_node(tmp_path):
    # A node killed while it starts (the launcher died: every node gets SIGINT at once) used to
    # spin on for good when something in its start caught the KeyboardInterrupt: the signal was
    # spent, and no other would come.
    log = tmp_path / "swallow.log"
    proc = start_node("tests.node.swallowing_node", log_path=log)
    deadline = time.monotonic() + 30.0
    while "starting" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    code = _signal_and_wait(proc, signal.SIGINT, log)
    text = log.read_text()
    assert code == 0 and "closed" in text, (code, text[-1500:])


def test_a_node_whose_launcher_is_gone_stops_even_without_a_signal(tmp_path):
    # The SIGINT the kernel sends a node when its launcher dies can be lost (it arrived before the
    # node's handler, or its start swallowed it), and no other comes: the node also stops when
    # its parent is no longer the launcher named in its environment. Here no signal is sent at all.
    from robot_runtime.launcher import LAUNCHER_PID_ENV

    log = tmp_path / "orphan.log"
    parent_code = ("import os, subprocess, sys, time\n"
                   f"p = subprocess.Popen([sys.executable, '-m', 'tests.node.busy_node'], cwd={str(REPO)!r},\n"
                   f"    env={{**os.environ, 'PYTHONUNBUFFERED': '1', {LAUNCHER_PID_ENV!r}: str(os.getpid())}},\n"
                   f"    stdout=open({str(log)!r}, 'w'), stderr=subprocess.STDOUT, start_new_session=True)\n"
                   "print(p.pid, flush=True)\n"
                   "time.sleep(120)\n")
    probe = RosProbe("orphan_probe")
    seen = []
    probe.subscribe(JointState, TOPIC, ros_io.STATE_QOS, seen)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        assert probe.wait_for(lambda: len(seen) > 200, 30.0), log.read_text()   # the node spins
        parent.kill()
        parent.wait()
        assert probe.wait_for(lambda: not process_running(child), 10.0), \
            f"still running 10 s after its launcher died\n{log.read_text()[-1500:]}"
        assert "closed after taking" in log.read_text()
    finally:
        if process_running(child):
            os.kill(child, signal.SIGKILL)
        probe.close()
