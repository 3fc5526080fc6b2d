"""The recorder node alone over DDS: it refuses to open an episode before its inputs arrive."""
from std_srvs.srv import Trigger

from robot_runtime.data.recorder import WAITING_FOR_INPUTS
from robot_runtime.teleop.collect import DemoCollector, write_twin_collect_config
from tests.ros_probe import REPO, start_node, stop_node


def test_the_recorder_refuses_to_start_an_episode_before_its_inputs_arrive(tmp_path):
    """No camera, joint state or command has been published: starting an episode is refused with the
    inputs named (an episode opened then would begin with dropped steps), and no file is opened."""
    cfg_path = write_twin_collect_config(tmp_path, REPO / "config")
    proc = start_node("robot_runtime.nodes.recorder_node", "-p", f"config_file:={cfg_path}",
                      log_path=tmp_path / "recorder_node.log")
    col = DemoCollector(timeout_s=60.0)
    try:
        col.wait("the recorder node", lambda: "/recorder_node/status" in col.status, timeout=90.0)
        res = col.call(Trigger, "/recorder_node/start_episode", Trigger.Request())
        assert not res.success and res.message.startswith(WAITING_FOR_INPUTS), res.message
        assert all(s in res.message for s in ("depth", "arm_state", "hand_state", "arm_command", "hand_command"))
        episodes = tmp_path / "episodes"
        assert not episodes.exists() or not any(episodes.iterdir())
    finally:
        col.close()
        stop_node(proc)
