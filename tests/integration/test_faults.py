"""The fault suite's fast cases against the live twin graph (``python -m bench.faults`` runs them all)."""
from bench.faults import run

FAST = ("duplicate_config_key", "finetune_hostile_parameter", "policy_kill9_mid_grasp", "nan_and_out_of_limit_targets",
        "nan_measured_joints", "camera_stall", "recorder_kill9_mid_episode")


def test_the_fast_faults_leave_the_robot_safe_and_lose_no_data(tmp_path):
    results = run(FAST, tmp=tmp_path)
    assert [r.name for r in results] == [n for n in FAST], results
    failed = [(r.name, r.observed) for r in results if not r.passed or r.lost]
    assert not failed, failed
