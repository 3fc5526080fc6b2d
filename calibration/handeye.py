"""Hand-eye calibration of the fixed camera's pose in the robot base frame (eye-to-hand).

A marker (:mod:`robot_runtime.description.marker`) rides on the hand. At each of N arm poses we know the
marker's link pose in the base frame from forward kinematics of the measured joints
(``T_base_link``), and we see the marker's four corners in the colour image. Two rigid
transforms are unknown: the camera in the base frame (``T_base_camera``) and the marker on
the link (``T_link_marker``). For every pose

    corners_i = project(K, inv(T_base_camera) @ T_base_link_i @ T_link_marker @ corner points)

The solution:

1. per pose, the marker's pose in the camera by ``cv2.solvePnP`` (IPPE_SQUARE);
2. an initial ``T_base_camera`` from ``cv2.calibrateHandEye`` (Park's method; the robot's
   poses are inverted, the usual eye-to-hand form) or, where the installed OpenCV lacks it
   (the 5.0 Python wheels do), the same Park-Martin solution in numpy; ``T_link_marker``
   averaged from it;
3. Levenberg-Marquardt on the reprojection error of every corner of every pose (both
   transforms, 12 parameters), the poses whose RMS error exceeds
   ``max(3 x median, min_outlier_px)`` rejected, then solved again on the rest.

Residuals are reported per pose: reprojection RMS (px), and the marker's position (mm) and
orientation (deg) disagreement between the solution and that pose's own PnP.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from robot_runtime.description.marker import MarkerSpec, aruco_dictionary
from robot_runtime.errors import RobotRuntimeError
from robot_runtime.transforms import make_T, rot_exp, rot_log


class CalibrationError(RobotRuntimeError):
    """Calibration cannot be solved (too few marker sightings, degenerate poses) or its file is bad."""


@dataclass
class MarkerSighting:
    """One arm pose: the link carrying the marker in the base frame [4, 4] (from FK of the
    measured joints), the marker's corners in the image [4, 2] (px, OpenCV order), and the
    joints it was taken at [n] (rad)."""

    T_base_link: np.ndarray
    corners: np.ndarray
    q: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class HandEyeResult:
    T_base_camera: np.ndarray
    T_link_marker: np.ndarray
    inliers: np.ndarray            # bool [N]
    reprojection_px: np.ndarray    # RMS per pose [N]
    position_mm: np.ndarray        # |solution - PnP| marker position per pose [N]
    rotation_deg: np.ndarray       # marker orientation disagreement per pose [N]
    initial: str = ""              # how the starting point was found

    def summary(self) -> dict:
        i = self.inliers
        return {"poses": int(len(i)), "inliers": int(i.sum()), "rejected": [int(k) for k in np.flatnonzero(~i)],
                "reprojection_px": {"median": float(np.median(self.reprojection_px[i])),
                                    "max": float(self.reprojection_px[i].max())},
                "marker_position_mm": {"median": float(np.median(self.position_mm[i])),
                                       "max": float(self.position_mm[i].max())},
                "marker_rotation_deg": {"median": float(np.median(self.rotation_deg[i])),
                                        "max": float(self.rotation_deg[i].max())}}


def detect_marker(image: np.ndarray, spec: MarkerSpec) -> np.ndarray | None:
    """The corners [4, 2] (px, OpenCV order, sub-pixel) of ``spec``'s marker in an RGB or grey
    image, or None when it is not seen."""
    import cv2  # noqa: PLC0415

    grey = image if image.ndim == 2 else cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    params = cv2.aruco.DetectorParameters()
    params.cornerRefinementMethod = cv2.aruco.CORNER_REFINE_SUBPIX
    corners, ids, _ = cv2.aruco.ArucoDetector(aruco_dictionary(spec.dictionary), params).detectMarkers(grey)
    if ids is None:
        return None
    for c, i in zip(corners, ids.ravel()):
        if int(i) == spec.marker_id:
            return np.asarray(c, float).reshape(4, 2)
    return None


def marker_pose_pnp(corners: np.ndarray, K: np.ndarray, spec: MarkerSpec) -> np.ndarray:
    """The marker's pose in the camera [4, 4] from its corners (IPPE_SQUARE)."""
    import cv2  # noqa: PLC0415

    ok, rvec, tvec = cv2.solvePnP(spec.object_points(), np.asarray(corners, float), np.asarray(K, float), None,
                                  flags=cv2.SOLVEPNP_IPPE_SQUARE)
    if not ok:
        raise CalibrationError("solvePnP failed on a marker sighting")
    return make_T(cv2.Rodrigues(rvec)[0], tvec.ravel())


def _project(K, T_cam_pts, pts):
    """pts [M, 3] in a frame posed by T_cam_pts [N, 4, 4] -> pixels [N, M, 2]."""
    p = np.einsum("nij,mj->nmi", T_cam_pts[:, :3, :3], pts) + T_cam_pts[:, None, :3, 3]
    uv = np.einsum("ij,nmj->nmi", K, p)
    return uv[..., :2] / uv[..., 2:3]


def _perturb(T, d):
    return make_T(rot_exp(d[:3]) @ T[:3, :3], T[:3, 3] + d[3:])


def _residuals(params_T, links, corners, K, obj):
    T_base_cam, T_link_marker = params_T
    T_cam_marker = np.linalg.inv(T_base_cam)[None] @ links @ T_link_marker[None]
    return (_project(K, T_cam_marker, obj) - corners).reshape(len(links), -1)


def _refine(T_base_cam, T_link_marker, links, corners, K, obj, iters: int = 50):
    """Levenberg-Marquardt on the corners' reprojection error; both transforms (12 parameters)."""
    lam = 1e-3
    cur = _residuals((T_base_cam, T_link_marker), links, corners, K, obj).ravel()
    cost = cur @ cur
    for _ in range(iters):
        J = np.empty((cur.size, 12))
        eps = 1e-6
        for k in range(12):
            d = np.zeros(12)
            d[k] = eps
            r = _residuals((_perturb(T_base_cam, d[:6]), _perturb(T_link_marker, d[6:])), links, corners, K, obj)
            J[:, k] = (r.ravel() - cur) / eps
        H = J.T @ J
        g = J.T @ cur
        improved = False
        for _ in range(10):
            step = -np.linalg.solve(H + lam * np.diag(np.diag(H) + 1e-12), g)
            cand = (_perturb(T_base_cam, step[:6]), _perturb(T_link_marker, step[6:]))
            r = _residuals(cand, links, corners, K, obj).ravel()
            if r @ r < cost:
                T_base_cam, T_link_marker = cand
                cur, cost = r, r @ r
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 5
        if not improved or np.abs(step).max() < 1e-10:
            break
    return T_base_cam, T_link_marker


def park_martin(links: np.ndarray, T_cam_markers: np.ndarray) -> np.ndarray:
    """Closed-form eye-to-hand T_base_camera (Park & Martin's AX = XB over every pair of poses):
    with L_i the link poses and C_i the marker seen in the camera, L_j L_i^-1 X = X C_j C_i^-1."""
    n = len(links)
    M = np.zeros((3, 3))
    inv_l, inv_c = np.linalg.inv(links), np.linalg.inv(T_cam_markers)
    pairs = [(links[j] @ inv_l[i], T_cam_markers[j] @ inv_c[i]) for i in range(n) for j in range(i + 1, n)]
    for A, B in pairs:
        M += np.outer(rot_log(B[:3, :3]), rot_log(A[:3, :3]))
    w, V = np.linalg.eigh(M.T @ M)
    if w.min() < 1e-12:
        raise CalibrationError("the calibration poses do not turn the hand about enough different axes")
    R = V @ np.diag(w ** -0.5) @ V.T @ M.T
    lhs = np.concatenate([A[:3, :3] - np.eye(3) for A, _ in pairs])
    rhs = np.concatenate([R @ B[:3, 3] - A[:3, 3] for A, B in pairs])
    t = np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return make_T(R, t)


def _initial(links, T_cam_markers):
    """An initial T_base_camera, then T_link_marker averaged over the poses. OpenCV's
    ``calibrateHandEye`` (Park's method, in its eye-to-hand form: the robot's poses inverted)
    when the installed OpenCV has it (its 5.0 Python build does not), else :func:`park_martin`."""
    import cv2  # noqa: PLC0415

    inv = np.linalg.inv(links)          # base in the link frame
    if hasattr(cv2, "calibrateHandEye"):
        R, t = cv2.calibrateHandEye([x[:3, :3] for x in inv], [x[:3, 3] for x in inv],
                                    [x[:3, :3] for x in T_cam_markers], [x[:3, 3] for x in T_cam_markers],
                                    method=cv2.CALIB_HAND_EYE_PARK)
        T_base_cam, how = make_T(R, np.ravel(t)), "cv2.calibrateHandEye (Park)"
    else:
        T_base_cam, how = park_martin(links, T_cam_markers), "Park-Martin closed form"
    cands = inv @ T_base_cam[None] @ T_cam_markers
    R_mean = _mean_rotation(cands[:, :3, :3])
    return T_base_cam, make_T(R_mean, cands[:, :3, 3].mean(axis=0)), how


def _mean_rotation(Rs: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(Rs.sum(axis=0))
    R = U @ Vt
    if np.linalg.det(R) < 0:
        U[:, -1] *= -1
        R = U @ Vt
    return R


def solve_hand_eye(sightings: list[MarkerSighting], K: np.ndarray, spec: MarkerSpec | None = None,
                   min_poses: int = 6, min_outlier_px: float = 1.0) -> HandEyeResult:
    """Solve ``T_base_camera`` (and ``T_link_marker``) from marker sightings (module docstring).

    Raises:
        CalibrationError: fewer than ``min_poses`` sightings, or fewer than ``min_poses`` left
            after outlier rejection.
    """
    spec = spec or MarkerSpec()
    if len(sightings) < min_poses:
        raise CalibrationError(f"{len(sightings)} marker sightings; hand-eye calibration needs at least {min_poses}")
    K = np.asarray(K, float)
    obj = spec.object_points()
    links = np.stack([np.asarray(s.T_base_link, float) for s in sightings])
    corners = np.stack([np.asarray(s.corners, float) for s in sightings])
    pnp = np.stack([marker_pose_pnp(c, K, spec) for c in corners])
    T_base_cam, T_link_marker, how = _initial(links, pnp)
    inl = np.ones(len(sightings), bool)
    for _ in range(3):
        T_base_cam, T_link_marker = _refine(T_base_cam, T_link_marker, links[inl], corners[inl], K, obj)
        res = _residuals((T_base_cam, T_link_marker), links, corners, K, obj)
        rms = np.sqrt((res.reshape(len(links), 4, 2) ** 2).sum(axis=2).mean(axis=1))
        keep = rms <= max(3.0 * np.median(rms[inl]), min_outlier_px)
        if np.array_equal(keep, inl):
            break
        inl = keep
        if inl.sum() < min_poses:
            raise CalibrationError(f"only {int(inl.sum())} of {len(sightings)} sightings agree (reprojection RMS "
                                   f"{np.round(rms, 2).tolist()} px); need {min_poses}")
    pred = np.linalg.inv(T_base_cam)[None] @ links @ T_link_marker[None]
    pos_mm = np.linalg.norm(pred[:, :3, 3] - pnp[:, :3, 3], axis=1) * 1e3
    rot_deg = np.array([math.degrees(np.linalg.norm(rot_log(a[:3, :3].T @ b[:3, :3]))) for a, b in zip(pred, pnp)])
    return HandEyeResult(T_base_cam, T_link_marker, inl, rms, pos_mm, rot_deg, how)


def pose_error(T_est: np.ndarray, T_true: np.ndarray) -> tuple[float, float]:
    """(position error in mm, rotation error in degrees) between two poses."""
    dp = np.linalg.norm(T_est[:3, 3] - T_true[:3, 3]) * 1e3
    dr = math.degrees(np.linalg.norm(rot_log(T_est[:3, :3].T @ T_true[:3, :3])))
    return float(dp), float(dr)
