"""A scripted expert for the twin: solves each HOP task from ground-truth object poses.

It stands in for a human operator when demos are needed for tests and benchmarks. Each
episode gets human-like variation from its random generator: the overall pace, the
approach height and a wobble on the way down, the hand's yaw about the vertical, a few
millimetres of grasp-point error, the lift height, the place/pour spot and the pour angle.

The grasp is a top-down power grasp: the palm faces the table with the fingers pointing
forward, the fingers wrap down around the object and the thumb closes from below the
palm. The bottle, taller than the hand can reach over, is taken from the side instead
(palm facing it, fingers forward and a little down) and poured by rolling the wrist until
it lies on the upturned palm with its mouth over the bowl. Waypoints are flange poses solved by IK on the URDF and joined by minimum-jerk
interpolation in joint space (arm) and posture space (hand).

Pure: :meth:`ScriptedExpert.plan` takes the object poses and the robot's joints;
:meth:`ScriptedExpert.sample` gives the 23 joint targets for any time into the plan.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robot_runtime import description as D
from robot_runtime.control.demo_motion import min_jerk
from robot_runtime.errors import TeleopError
from robot_runtime.ik import solve_ik
from robot_runtime.kinematics import UrdfModel
from robot_runtime.transforms import make_T, quat_to_mat, rot_axis, rpy_to_mat

#: Palm facing down, fingers forward: palm x (the side fingers curl to) -> world -z, palm z -> world +x.
R_PALM_DOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
#: Palm facing the side, fingers forward (a hand-shake): palm x -> world +y, palm y -> world +z,
#: palm z -> world +x. Used for the bottle, which is held round its body and poured by rolling the wrist.
R_PALM_SIDE = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
#: The grasp point in the palm frame (m): below the palm, part-way along the fingers.
GRASP_POINT_PALM = np.array([0.055, 0.0, 0.04])
#: The side grasp's (the bottle's) grasp point in the palm frame (m): 1 cm nearer the palm along
#: the fingers than the top grasp's. Plans with the bottle moved after planning (10 placements
#: each): with the top grasp's point the hand held it 2 cm nearer the wrist (9 of 10) but not 1 or
#: 2 cm farther along the fingers (7 and 1 of 10), where a policy short of a far bottle puts it;
#: with this one 9 of 10 at +2 cm, 5 of 10 at -2 cm.
SIDE_GRASP_POINT_PALM = np.array([0.055, 0.0, 0.03])
#: Closed hand (rad, driver order): fingers wrapped, thumb opposed.
HAND_GRASP = np.array([0.0, 1.2, 1.2, 1.0] * 3 + [1.3, 0.4, 1.0, 1.0])
#: Height of the grasp point above the table per object (m).
GRASP_HEIGHT = {"cube": 0.025, "can": 0.05, "ball": 0.035, "block": 0.035, "mug": 0.045, "bottle": 0.09}
#: Objects the top-down grasp can take (the bottle is taller than the hand reaches over).
TOP_GRASP = ("cube", "can", "ball", "block", "mug")
#: Height of each object's top above the table (m; the bowl's rim), for letting go over it.
TOP_HEIGHT = {"cube": 0.05, "can": 0.11, "ball": 0.07, "block": 0.07, "mug": 0.09, "bowl": 0.054}
#: How often an interaction carries its object to the other object on the table rather than to a
#: random spot, and how far (m) above that object's top the held object's bottom is let go.
TOWARD_OTHER_P = 0.5
LET_GO_ABOVE = (0.02, 0.06)
#: The wrist roll (rad) of a bottle interaction, drawn in this range (the pour rolls 1.75-2.0).
BOTTLE_ROLL = (0.0, 2.0)
#: Where an interaction may carry an object (base frame x, y ranges, m).
INTERACTION_X = (0.38, 0.62)
INTERACTION_Y = (-0.22, 0.22)
#: The canonical flange targets (grasp point, base frame, m) each kind of grasp's IK branch is
#: solved at once and continued from: over the middle of the table, at a typical approach height.
CANONICAL_TOP = np.array([0.5, 0.0, 0.17])
CANONICAL_SIDE = np.array([0.45, 0.0, 0.22])
#: Lift counted as a success (m above the start height).
LIFT_SUCCESS_M = 0.08
#: The bowl's inner radius (m) for the drop check; the pour needs the bottle tilted this much (rad).
BOWL_RADIUS = 0.075
#: How high over the table the grasp point is when the drop lets go (m; the bowl's wall is 5.4 cm).
DROP_ABOVE_TABLE = 0.09
POUR_TILT = math.radians(70.0)
#: The bottle's mouth is this far along its axis from its frame (m); pouring needs the mouth
#: within this distance (m, horizontally) of the bowl's centre.
BOTTLE_HEIGHT = 0.19
POUR_RADIUS = 0.1


#: How long a task's plan holds its final posture (s): long enough that a policy learns that the
#: end of the task is to stay there (a policy rolled out past the demos' end otherwise has seen
#: under two seconds of it, and some let go of the object they had lifted).
FINAL_HOLD_S = 3.0
#: Spread (rad, std) of the hand's yaw about :func:`facing_yaw`.
YAW_NOISE = 0.04


def facing_yaw(position) -> float:
    """The hand's yaw (rad) for an object at ``position`` [3] (m, base frame): fingers pointing away
    from the robot's base. A function of what the camera sees, not a hidden draw: a demo set whose
    yaw is drawn at random from a symmetric object's grasp is one a policy can only average."""
    return float(math.atan2(position[1], position[0]))


#: Objects whose faces the hand lines up with, and the angle (rad) their shape repeats after about
#: the vertical: the fingers close across a box's faces, not over its corners.
#: The cube is not in it: a 5 cm cube is taken at the facing yaw whichever way it is turned (18 of
#: 20 scripted drops succeed so, 20 of 20 with the yaw on its faces), and a policy cannot read a
#: 5 cm cube's yaw from the 15 or so points of it in a 100-point cloud: aligned, the wrist's joint
#: 5 spread over +-0.8 rad between demos for what the policy can hardly see.
BOX_SYMMETRY = {"block": math.pi / 2}
#: Which of a box's axes the fingers point along, as an angle (rad) from its x axis.
BOX_GRASP_AXIS = {"block": 0.0}


def grasp_yaw(obj: str, position, quaternion) -> float:
    """The hand's yaw (rad) for a top grasp of ``obj``: :func:`facing_yaw`, or for a box the direction
    of its faces nearest to it (the box's yaw from ``quaternion`` wxyz, repeated by its symmetry)."""
    facing = facing_yaw(position)
    if obj not in BOX_SYMMETRY:
        return facing
    w, x, y, z = (float(v) for v in quaternion)
    box = math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z)) + BOX_GRASP_AXIS[obj]
    period = BOX_SYMMETRY[obj]
    return facing + (box - facing + period / 2) % period - period / 2


@dataclass
class Waypoint:
    t: float            # s from the plan's start
    arm: np.ndarray     # [7] rad
    hand: np.ndarray    # [16] rad
    label: str


def task_objects(task: str, active) -> tuple[str, str | None]:
    """(object to grasp, container or None) for ``task`` given the twin's active objects."""
    active = list(active)
    if task == "grasp_lift":
        return active[0], None
    if task == "grasp_drop":
        return "cube", "bowl"
    if task == "grasp_pour":
        return "bottle", "bowl"
    raise TeleopError(f"the scripted expert has no plan for task {task!r}")


def task_success(task: str, active, start: dict, now: dict) -> bool:
    """Whether the task is solved, from object poses ``{name: (position [3], quaternion wxyz [4])}``."""
    obj, container = task_objects(task, active)
    p0, p = np.asarray(start[obj][0]), np.asarray(now[obj][0])
    if task == "grasp_lift":
        return bool(p[2] - p0[2] > LIFT_SUCCESS_M)
    c = np.asarray(now[container][0])
    if task == "grasp_drop":
        return bool(np.linalg.norm(p[:2] - c[:2]) < BOWL_RADIUS and p[2] < c[2] + 0.06)
    up = quat_to_mat(now[obj][1])[:, 2]
    tilt = math.acos(float(np.clip(up[2], -1.0, 1.0)))
    mouth = p + up * BOTTLE_HEIGHT
    return bool(tilt > POUR_TILT and np.linalg.norm(mouth[:2] - c[:2]) < POUR_RADIUS and mouth[2] > c[2] + 0.03)


class ScriptedExpert:
    """Plans and samples one demonstration.

    Args:
        model: the robot URDF model.
        mount_xyz, mount_rpy: the hand mount (palm frame in the flange frame).
        hand_open: the open hand posture [16] (rad).
        arm_home: the arm's home posture [7] (rad): every plan's IK starts from it, so the same
            object pose gives the same arm posture wherever the arm happens to be.
        table_z: table height in the base frame (m).
        max_arm_speed, max_hand_speed: joint speed (rad/s) no segment may exceed at its peak; a
            segment is slowed down to respect them (keep them under the teleop session's limits,
            so the robot keeps up with the plan).
    """

    def __init__(self, model: UrdfModel, mount_xyz, mount_rpy, hand_open, arm_home, table_z: float = 0.0,
                 max_arm_speed: float = 0.8, max_hand_speed: float = 2.4):
        self.model = model
        self.max_arm_speed = max_arm_speed
        self.max_hand_speed = max_hand_speed
        self.arm_home = np.asarray(arm_home, dtype=float)
        self.T_mount_inv = np.linalg.inv(make_T(rpy_to_mat(mount_rpy), mount_xyz))
        self.hand_open = np.asarray(hand_open, dtype=float)
        self.table_z = table_z
        self.waypoints: list[Waypoint] = []
        self.duration = 0.0
        self.grasped = ""
        self.carried_to = ""      # the object an interaction carries the grasped one to ("": a random spot)
        self._refs: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def _flange(self, point, yaw: float, tilt: float = 0.0, tilt_axis=(1.0, 0.0, 0.0),
                palm: np.ndarray = R_PALM_DOWN, point_in_palm=None) -> np.ndarray:
        """Flange pose putting the palm's grasp point (``point_in_palm``, m, palm frame; default
        :data:`GRASP_POINT_PALM`) at ``point`` with the palm as ``palm`` (down by default), turned by
        ``yaw`` about the vertical, then tilted by ``tilt`` about ``tilt_axis`` (base frame)."""
        R = rot_axis((0, 0, 1), yaw) @ palm
        if tilt:
            R = rot_axis(tilt_axis, tilt) @ R
        at = GRASP_POINT_PALM if point_in_palm is None else point_in_palm
        T_palm = make_T(R, np.asarray(point, float) - R @ at)
        return T_palm @ self.T_mount_inv

    def _side_flange(self, point, yaw: float) -> np.ndarray:
        """The side grasp's flange pose with the fingers tilted down by the middle of the plans' range:
        the reference of every pour plan's branch, whatever tilt the first plan drew."""
        return self._flange(point, yaw=yaw, palm=rot_axis(R_PALM_SIDE[:, 0], 0.375) @ R_PALM_SIDE,
                            point_in_palm=SIDE_GRASP_POINT_PALM)

    def prepare(self) -> "ScriptedExpert":
        """Solve both grasp kinds' reference postures now (a plan made later is then quicker)."""
        self._reference("top", CANONICAL_TOP, self._flange)
        self._reference("side", CANONICAL_SIDE, self._side_flange)
        return self

    def _ik(self, q, T, q_rest=None) -> np.ndarray:
        q, pos_err, rot_err = solve_ik(self.model, q, D.FLANGE_FRAME, T, np.arange(7), iters=200, q_rest=q_rest)
        if pos_err > 0.01 or rot_err > 0.05:
            raise TeleopError(f"scripted expert: pose out of reach (IK error {pos_err * 1000:.0f} mm, "
                              f"{math.degrees(rot_err):.0f} deg)")
        return q

    def _reference(self, key: str, point, flange_of) -> tuple[np.ndarray, np.ndarray]:
        """The branch every plan of one kind starts from: the joints [23] reaching ``flange_of(point, 0)``
        (a canonical pose over the table's middle, no yaw), solved once, and the point.

        It is solved from the home posture and from the home posture with joint 5 turned by +-pi
        (from a home with the wrist not yet turned over, the solver falls to +pi or -pi by the sign
        of the hand's yaw), and the solution nearest the home posture is kept."""
        if key not in self._refs:
            found = []
            for turn in (0.0, math.pi, -math.pi):
                seed = self.arm_home.copy()
                seed[4] += turn
                try:
                    q = self._ik(np.concatenate([seed, self.hand_open]), flange_of(point, 0.0))
                except TeleopError:
                    continue
                found.append((float(np.abs(q[:7] - self.arm_home).sum()), len(found), q))
            if not found:
                raise TeleopError(f"scripted expert: the canonical {key} grasp pose is out of reach")
            self._refs[key] = (min(found)[2], np.asarray(point, float))
        return self._refs[key]

    def _ik_on_branch(self, key: str, point, yaw: float, flange_of, canonical, steps: int = 3,
                      reference_flange_of=None) -> np.ndarray:
        """IK for ``flange_of(point, yaw)`` continued from the kind's reference posture: the point and
        the yaw move from the canonical ones in ``steps`` small steps, each solve warm-started from the
        last, so every demo of a task lands on one IK branch (no wrap of the +-2 pi joints)."""
        q, p0 = self._reference(key, canonical, reference_flange_of or flange_of)
        p1 = np.asarray(point, float)
        rest = q
        for s in np.linspace(0.0, 1.0, steps + 1)[1:]:
            q = self._ik(q, flange_of(p0 + s * (p1 - p0), s * yaw), q_rest=rest if s == 1.0 else None)
        return q

    def _carried_over(self, spot, yaw: float, start) -> tuple[np.ndarray, float]:
        """The top-grasp joints [23] holding the hand over ``spot`` (m) after a carry from ``start``
        (m), and the hand's yaw there: it turns with the carry, facing away from the base over the
        spot as it did over the start, on the approach's IK branch. Keeping the grasp's yaw instead,
        joint 5 of 4 in 15 drop plans turned over to 3.9-4.3 rad against 1.9-2.5 for the rest."""
        yaw_over = yaw - facing_yaw(start) + facing_yaw(spot)
        return self._ik_on_branch("top", spot, yaw_over, self._flange, CANONICAL_TOP), yaw_over

    @staticmethod
    def _spot_over(position, height: float, rng: np.random.Generator) -> np.ndarray:
        """Where a carry ends over an object at ``position`` (its x, y at least, m): ``height`` (m)
        up, a centimetre or so off its centre."""
        return np.array([position[0], position[1], height]) + np.append(rng.normal(0, 0.01, 2), 0)

    def _carry_and_lower(self, steps: list, spot, yaw: float, start, low_above_table: float) -> np.ndarray:
        """Append to ``steps`` the carry of the grasped object (hand closed as the last step has it)
        from ``start`` to ``spot`` (:meth:`_carried_over`) and the lowering straight down until the
        grasp point is ``low_above_table`` (m) over the table; returns the lowered joints [23]."""
        c = steps[-1][2]
        q_over, yaw_over = self._carried_over(spot, yaw, start)
        low = np.array([spot[0], spot[1], self.table_z + low_above_table])
        q_low = self._ik(q_over, self._flange(low, yaw_over))
        steps += [("carry", q_over[:7], c, 2.0), ("lower", q_low[:7], c, 1.0)]
        return q_low

    def plan(self, task: str, poses: dict, active, q_now, rng: np.random.Generator) -> list[Waypoint]:
        """Plan from the joints ``q_now`` [23] for ``task`` given ``poses`` {name: (position, quaternion)}."""
        obj, container = task_objects(task, active)
        if obj not in poses or (container and container not in poses):
            raise TeleopError(f"scripted expert: no pose for {obj!r}" + (f" or {container!r}" if container else ""))
        q_now = np.asarray(q_now, dtype=float)
        self.carried_to = container or ""
        pace = rng.uniform(0.85, 1.2)
        if task == "grasp_pour":
            self._set_timed(self._pour_steps(poses[obj][0], poses[container][0], q_now, rng), pace)
            self.grasped = obj
            return self.waypoints
        steps, q_lift, lift, yaw = self._grasp_lift_steps(poses[obj], obj, q_now, rng)
        c = steps[-1][2]
        if task == "grasp_lift":
            steps.append(("hold", q_lift[:7], c, FINAL_HOLD_S))
        else:
            spot = self._spot_over(poses[container][0], lift[2], rng)
            # let go a few cm over the rim: from the carry's height the opening fingers flung the
            # cube, or it bounced off the bowl, in 2 of 20 drops
            q_low = self._carry_and_lower(steps, spot, yaw, poses[obj][0], GRASP_HEIGHT[obj] + DROP_ABOVE_TABLE)
            steps += [("release", q_low[:7], self.hand_open, 0.8), ("hold", q_low[:7], self.hand_open, FINAL_HOLD_S)]
        self._set_timed(steps, pace)
        self.grasped = obj
        return self.waypoints

    def plan_interaction(self, poses: dict, active, q_now, rng: np.random.Generator) -> list[Waypoint]:
        """A task-agnostic hand-object interaction: grasp one of the ``active`` objects (chosen by
        ``rng``; from above, or the bottle from the side), lift it and carry it either to a random
        spot over the table or over the other object on it (:data:`TOWARD_OTHER_P`). A top-grasped
        object is then set down, let go from above, or kept held; over the other object it is
        lowered to a few cm above that object's top and let go or held. The bottle is rolled about
        the fingers by an angle drawn in :data:`BOTTLE_ROLL` and held.

        The interactions know nothing of the tasks' goals (which object goes where, or whether it
        is let go or tilted): they are the varied reach-grasp-move data a prior is pretrained on
        before few-shot finetuning, with the other object on the table as often a target of the
        carry as not.

        Raises:
            TeleopError: no active object can be grasped, or a pose is out of reach.
        """
        graspable = [o for o in active if (o in TOP_GRASP or o == "bottle") and o in poses]
        if not graspable:
            raise TeleopError(f"scripted expert: none of {list(active)} can be grasped")
        obj = graspable[int(rng.integers(len(graspable)))]
        others = [o for o in active if o != obj and o in TOP_HEIGHT and o in poses]
        toward = others[int(rng.integers(len(others)))] if others and rng.random() < TOWARD_OTHER_P else None
        self.carried_to = toward or ""
        q_now = np.asarray(q_now, dtype=float)
        pace = rng.uniform(0.85, 1.2)
        random_spot = np.array([rng.uniform(*INTERACTION_X), rng.uniform(*INTERACTION_Y)])
        target = np.asarray(poses[toward][0], float)[:2] if toward else random_spot
        if obj == "bottle":
            self._set_timed(self._pour_steps(poses[obj][0], target, q_now, rng, roll=rng.uniform(*BOTTLE_ROLL)), pace)
            self.grasped = obj
            return self.waypoints
        steps, q_lift, lift, yaw = self._grasp_lift_steps(poses[obj], obj, q_now, rng)
        c = steps[-1][2]
        if toward:
            spot = self._spot_over(target, lift[2], rng)
            q_low = self._carry_and_lower(steps, spot, yaw, poses[obj][0],
                                          TOP_HEIGHT[toward] + GRASP_HEIGHT[obj] + rng.uniform(*LET_GO_ABOVE))
            if rng.random() < 2 / 3:
                steps += [("release", q_low[:7], self.hand_open, 0.8), ("hold", q_low[:7], self.hand_open, 1.0)]
            else:
                steps.append(("hold", q_low[:7], c, 1.0))
        else:
            spot = np.array([target[0], target[1], lift[2] + rng.uniform(-0.03, 0.06)])
            q_carry, yaw_over = self._carried_over(spot, yaw + rng.uniform(-0.2, 0.2), poses[obj][0])
            steps.append(("carry", q_carry[:7], c, 2.0))
            ending = rng.integers(3)
            if ending == 0:       # set it down where it is and let go
                down = np.array([spot[0], spot[1], self.table_z + GRASP_HEIGHT[obj] + 0.01])
                q_down = self._ik(q_carry, self._flange(down, yaw_over))
                steps += [("lower", q_down[:7], c, 1.5), ("release", q_down[:7], self.hand_open, 0.8),
                          ("hold", q_down[:7], self.hand_open, 0.5)]
            elif ending == 1:     # let go from above
                steps += [("release", q_carry[:7], self.hand_open, 0.8), ("hold", q_carry[:7], self.hand_open, 0.8)]
            else:                 # keep holding
                steps.append(("hold", q_carry[:7], c, 1.0))
        self._set_timed(steps, pace)
        self.grasped = obj
        return self.waypoints

    def _grasp_lift_steps(self, pose, obj: str, q_now, rng: np.random.Generator):
        """The top-down reach, grasp and lift of ``obj`` at ``pose`` (position [3] m, quaternion wxyz):
        the steps, the joints at the lift [23], the lift point (m) and the hand's yaw (rad)."""
        p = np.asarray(pose[0], dtype=float)
        yaw = grasp_yaw(obj, p, pose[1]) + rng.normal(0.0, YAW_NOISE)
        grasp = np.array([p[0], p[1], self.table_z + GRASP_HEIGHT[obj]]) + np.append(rng.normal(0, 0.004, 2), 0)
        above = grasp + [0.0, 0.0, rng.uniform(0.10, 0.18)]
        wobble = (above + grasp) / 2 + np.append(rng.normal(0, 0.01, 2), 0)
        lift = grasp + [0.0, 0.0, rng.uniform(0.15, 0.22)]
        o, c = self.hand_open, HAND_GRASP + rng.normal(0, 0.03, 16)
        q_above = self._ik_on_branch("top", above, yaw, self._flange, CANONICAL_TOP)
        q_wobble = self._ik(q_above, self._flange(wobble, yaw))
        q_grasp = self._ik(q_wobble, self._flange(grasp, yaw))
        q_lift = self._ik(q_grasp, self._flange(lift, yaw))
        # The pauses (settle, squeeze) let the arm arrive and the fingers close before the next
        # move: the plan is open-loop, and the controllers follow it a few ticks behind.
        steps = [("start", q_now[:7], q_now[7:], 0.0), ("above", q_above[:7], o, 2.0),
                 ("descend", q_wobble[:7], o, 0.7), ("grasp", q_grasp[:7], o, 0.7), ("settle", q_grasp[:7], o, 0.3),
                 ("close", q_grasp[:7], c, 1.0), ("squeeze", q_grasp[:7], c, 0.4), ("lift", q_lift[:7], c, 2.0)]
        return steps, q_lift, lift, yaw

    def _pour_steps(self, bottle, bowl, q_now, rng: np.random.Generator, roll: float | None = None) -> list[tuple]:
        """Grasp & pour: the bottle is held round its body from the side (palm facing it, fingers
        forward), lifted, carried next to the bowl and poured by rolling the wrist about the
        fingers' direction, so that the bottle comes to lie on the upturned palm with its mouth
        over the bowl (``bowl``: its x, y at least, m). ``roll`` (rad) overrides the pour's own draw."""
        noise = rng.normal(0.0, YAW_NOISE)
        yaw = float(np.clip(facing_yaw(bottle), -0.3, 0.3)) + noise
        turn = rot_axis((0, 0, 1), yaw)
        normal = turn @ R_PALM_SIDE[:, 0]          # the palm's normal
        # fingers pointing a little down, so that the wrist stays clear of the table
        palm = rot_axis(R_PALM_SIDE[:, 0], rng.uniform(0.3, 0.45)) @ R_PALM_SIDE
        bottle, bowl = np.asarray(bottle, float), np.asarray(bowl, float)
        grasp = np.array([bottle[0], bottle[1], self.table_z + GRASP_HEIGHT["bottle"]]) \
            + np.append(rng.normal(0, 0.003, 2), 0)
        beside = grasp - normal * rng.uniform(0.05, 0.07)          # palm clear of the bottle
        above = beside + [0.0, 0.0, rng.uniform(0.10, 0.16)]
        lift = grasp + [0.0, 0.0, rng.uniform(0.15, 0.20)]
        pour_roll = rng.uniform(1.75, 2.0)                         # rad: 100-115 degrees
        roll = pour_roll if roll is None else roll
        # the hand turns with the carry, to face the bowl as it faced the bottle: keeping the grasp's
        # yaw, 2 of 8 plans poured with joint 1 a radian away from the rest
        yaw_over = float(np.clip(facing_yaw(np.asarray(bowl, float)), -0.3, 0.3)) + noise
        along = rot_axis((0, 0, 1), yaw_over) @ R_PALM_SIDE[:, 2]    # the fingers' direction over the bowl
        mouth = rot_axis(along, roll) @ [0.0, 0.0, BOTTLE_HEIGHT - GRASP_HEIGHT["bottle"]]
        spot = np.array([bowl[0] - mouth[0], bowl[1] - mouth[1], lift[2]]) + np.append(rng.normal(0, 0.01, 2), 0)
        o, c = self.hand_open, HAND_GRASP + rng.normal(0, 0.03, 16)
        side = {"yaw": yaw, "palm": palm, "point_in_palm": SIDE_GRASP_POINT_PALM}
        q_above = self._ik_on_branch("side", above, yaw, lambda p, y: self._flange(p, **(side | {"yaw": y})),
                                     CANONICAL_SIDE, reference_flange_of=self._side_flange)
        q_beside = self._ik(q_above, self._flange(beside, **side))
        q_grasp = self._ik(q_beside, self._flange(grasp, **side))
        q_lift = self._ik(q_grasp, self._flange(lift, **side))
        over = {"yaw": yaw_over, "palm": palm, "point_in_palm": SIDE_GRASP_POINT_PALM}
        q_over = self._ik_on_branch("side", spot, yaw_over, lambda p, y: self._flange(p, **(over | {"yaw": y})),
                                    CANONICAL_SIDE, reference_flange_of=self._side_flange)
        q_pour = self._ik(q_over, self._flange(spot, tilt=roll, tilt_axis=along, **over))
        return [("start", q_now[:7], q_now[7:], 0.0), ("above", q_above[:7], o, 2.0),
                ("descend", q_beside[:7], o, 1.0), ("grasp", q_grasp[:7], o, 0.8), ("settle", q_grasp[:7], o, 0.3),
                ("close", q_grasp[:7], c, 1.0), ("squeeze", q_grasp[:7], c, 0.4), ("lift", q_lift[:7], c, 2.0),
                ("carry", q_over[:7], c, 2.0), ("pour", q_pour[:7], c, 1.6),
                ("hold", q_pour[:7], c, FINAL_HOLD_S)]

    def _set_timed(self, steps, pace: float) -> None:
        """Waypoints from (label, arm, hand, nominal duration) steps, each segment lasting at least
        long enough that its minimum-jerk peak speed (1.875 x distance / duration) stays in bounds."""
        t, prev, self.waypoints = 0.0, None, []
        for label, arm, hand, dur in steps:
            arm, hand = np.asarray(arm, float), np.asarray(hand, float)
            if prev is not None:
                need = 1.875 * max(np.abs(arm - prev[0]).max() / self.max_arm_speed,
                                   np.abs(hand - prev[1]).max() / self.max_hand_speed)
                dur = max(dur * pace, need)
            t += dur
            self.waypoints.append(Waypoint(t, arm, hand, label))
            prev = (arm, hand)
        self.duration = t

    def retreat(self, q_now, arm_home, rng: np.random.Generator) -> list[Waypoint]:
        """After an episode: open the hand, lift clear and go home (a plan of its own)."""
        q_now = np.asarray(q_now, dtype=float)
        flange = self.model.link_pose(q_now, D.FLANGE_FRAME)
        up = flange.copy()
        up[2, 3] += 0.08
        q_up = self._ik(q_now, up)
        pace = rng.uniform(0.9, 1.1)
        steps = [("start", q_now[:7], q_now[7:], 0.0), ("open", q_now[:7], self.hand_open, 0.6),
                 ("clear", q_up[:7], self.hand_open, 0.8), ("home", np.asarray(arm_home, float), self.hand_open, 2.0)]
        self._set_timed(steps, pace)
        return self.waypoints

    def sample(self, t: float) -> tuple[np.ndarray, str]:
        """Joint targets [23] (rad) at ``t`` s into the plan, and the phase's label."""
        wps = self.waypoints
        if not wps:
            raise TeleopError("scripted expert: sample before plan")
        if t >= wps[-1].t:
            return np.concatenate([wps[-1].arm, wps[-1].hand]), "done"
        for a, b in zip(wps[:-1], wps[1:]):
            if a.t <= t < b.t:
                s = min_jerk((t - a.t) / (b.t - a.t))
                return np.concatenate([a.arm + s * (b.arm - a.arm), a.hand + s * (b.hand - a.hand)]), b.label
        return np.concatenate([wps[0].arm, wps[0].hand]), wps[1].label if len(wps) > 1 else "done"
