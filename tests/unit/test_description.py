import mujoco
import numpy as np
import pytest

from robot_runtime import description as D
from robot_runtime.description import build
from robot_runtime.errors import DescriptionError
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel


@pytest.fixture(scope="module")
def urdf():
    return UrdfModel.from_file(D.description_path(D.URDF_NAME))


def test_packaged_files_are_generated_from_the_table():
    assert D.description_path(D.URDF_NAME).read_text() == build.urdf_text()
    assert D.description_path(D.MJCF_NAME).read_text() == build.mjcf_text()


def test_same_joint_names_order_and_limits(urdf):
    m = mujoco.MjModel.from_xml_path(str(D.description_path(D.MJCF_NAME)))
    assert urdf.joint_names == D.ALL_JOINTS
    assert tuple(m.joint(i).name for i in range(m.njnt)) == D.ALL_JOINTS
    np.testing.assert_allclose(urdf.limits, np.array(D.ALL_LIMITS), atol=1e-6)
    np.testing.assert_allclose(m.jnt_range, np.array(D.ALL_LIMITS), atol=1e-6)
    # Published values (HOP_POLICY / ROBOT_KINEMATICS): spot checks.
    assert D.ARM_LIMITS[3] == (-0.19198, 3.927) and D.HAND_LIMITS[12] == (0.263, 1.396)


def test_urdf_and_mjcf_forward_kinematics_agree(urdf):
    m = mujoco.MjModel.from_xml_path(str(D.description_path(D.MJCF_NAME)))
    d = mujoco.MjData(m)
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(100):
        q = rng.uniform(urdf.limits[:, 0], urdf.limits[:, 1])
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        poses = urdf.forward(q)
        for frame in (D.FLANGE_FRAME, *D.FINGERTIP_FRAMES):
            worst = max(worst, float(np.linalg.norm(poses[frame][:3, 3] - d.site(frame).xpos)))
    assert worst < 1e-3


def test_dh_lengths_at_zero_pose(urdf):
    # The xArm7's zero pose puts the flange at (206, 0, 120.5) mm: x = a3 + a4 + a6,
    # z = d1 + d3 - d5 - d7 (upper arm up, forearm back down, flange pointing down).
    p = urdf.link_pose(np.zeros(23), D.FLANGE_FRAME)[:3, 3]
    np.testing.assert_allclose(p, [0.0525 + 0.0775 + 0.076, 0.0, 0.267 + 0.293 - 0.3425 - 0.097], atol=1e-8)
    np.testing.assert_allclose(p, [0.206, 0.0, 0.1205], atol=1e-8)


def test_mount_is_configuration():
    text = build.urdf_text(mount_xyz=(0.0, 0.0, 0.2))
    a = UrdfModel(text).link_pose(np.zeros(23), "palm")[:3, 3]
    b = UrdfModel(build.urdf_text()).link_pose(np.zeros(23), "palm")[:3, 3]
    assert np.linalg.norm(a - b) == pytest.approx(0.1, abs=1e-9)


def test_jacobian_matches_finite_differences(urdf):
    """Linear rows of a point on the link (offset in the link frame) and angular rows, against
    central differences, for arm and hand joints (the hand's columns in the robot's order,
    not pinocchio's tree order)."""
    from robot_runtime.transforms import rot_log

    q = np.array(D.ARM_HOME + D.HAND_HOME)
    point = np.array([0.01, -0.02, 0.015])
    for link in ("index_tip", "thumb_tip", "ring_tip"):
        J = urdf.jacobian(q, link, point)
        eps = 1e-6
        for i in (0, 3, 6, 8, 12, 15, 19, 22):
            dq = np.zeros(23)
            dq[i] = eps
            Tp, Tm = urdf.link_pose(q + dq, link), urdf.link_pose(q - dq, link)
            num = ((Tp[:3, :3] @ point + Tp[:3, 3]) - (Tm[:3, :3] @ point + Tm[:3, 3])) / (2 * eps)
            np.testing.assert_allclose(J[:3, i], num, atol=1e-6, err_msg=f"{link} joint {D.ALL_JOINTS[i]}")
            np.testing.assert_allclose(J[3:, i], rot_log(Tp[:3, :3] @ Tm[:3, :3].T) / (2 * eps), atol=1e-6)


def test_ik_reaches_a_reachable_pose_within_limits(urdf):
    rng = np.random.default_rng(3)
    q_goal = np.array(D.ARM_HOME + D.HAND_HOME)
    q_goal[:7] += rng.uniform(-0.3, 0.3, 7)
    target = urdf.link_pose(q_goal, D.FLANGE_FRAME)
    q, e_pos, e_rot = solve_ik(urdf, np.array(D.ARM_HOME + D.HAND_HOME), D.FLANGE_FRAME, target, np.arange(7), iters=300)
    assert e_pos < 2e-3 and e_rot < 1e-2
    assert np.all(q[:7] >= urdf.limits[:7, 0]) and np.all(q[:7] <= urdf.limits[:7, 1])


def test_bad_urdf_is_named(tmp_path):
    p = tmp_path / "bad.urdf"
    p.write_text("<robot><link")
    with pytest.raises(DescriptionError, match="bad.urdf: not a valid URDF"):
        UrdfModel.from_file(p)
    with pytest.raises(DescriptionError, match="not found"):
        UrdfModel.from_file(tmp_path / "absent.urdf")
