"""The one preprocessing path from a depth frame to a policy's visual input.

The recorder, the trainer and the policy node all call :func:`visual_input` (through
:class:`VisualPreprocessor`), so training and deployment see the same bytes.

Two kinds of visual input:

- ``depth``: crop (fractions of the image), fill holes, clip to [near, far] m, resize
  by area averaging to the model's size, scale to [0, 1] (0 = near, 1 = far).
  Result ``[H, W]`` float32.
- ``pointcloud``: back-project with the intrinsics, move to the robot base frame with
  the camera calibration, crop to a box, drop the table plane, sample ``num_points``
  points with a generator seeded by the preprocessing seed and the frame's stamp (so
  the same frame always gives the same points). Result ``[num_points, 3]`` float32 (m).
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import numpy as np
from numba import njit

from robot_runtime.errors import RobotRuntimeError


class PreprocessError(RobotRuntimeError):
    """A frame cannot be turned into a policy input (wrong shape, no valid points, bad parameters)."""


@dataclass(frozen=True)
class DepthPreprocess:
    """Depth image input. ``crop`` = (top, bottom, left, right) as fractions of the height and
    width kept (0..1); ``near``/``far`` clip range (m); holes (NaN, inf, <= 0) become ``far``;
    output ``height`` x ``width``."""

    crop: tuple[float, float, float, float] = (0.0, 1.0, 0.0, 1.0)
    near: float = 0.2
    far: float = 1.5
    height: int = 60
    width: int = 80

    def check(self) -> None:
        t, b, left, r = self.crop
        if not (0.0 <= t < b <= 1.0 and 0.0 <= left < r <= 1.0):
            raise PreprocessError(f"depth crop {self.crop} must be 0 <= top < bottom <= 1, 0 <= left < right <= 1")
        if not 0.0 <= self.near < self.far:
            raise PreprocessError(f"depth clip range near={self.near} far={self.far} must have 0 <= near < far")
        if self.height < 4 or self.width < 4:
            raise PreprocessError(f"depth input size {self.height}x{self.width} is below 4x4")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)


@dataclass(frozen=True)
class PointCloudPreprocess:
    """Object point cloud input, in the robot base frame (m)."""

    num_points: int = 100
    box_min: tuple[float, float, float] = (0.2, -0.5, -0.05)
    box_max: tuple[float, float, float] = (0.9, 0.5, 0.5)
    table_z: float = 0.0
    table_margin: float = 0.01   # points lower than table_z + margin are the table
    stride: int = 2              # back-project every stride-th pixel in each direction
    seed: int = 0
    #: > 0: drop the points within this distance (m) of the robot posed at the frame's measured
    #: joints (:mod:`robot_runtime.perception.robot_filter`), leaving the objects; 0: keep them.
    robot_margin: float = 0.0

    def check(self) -> None:
        if self.num_points < 1:
            raise PreprocessError(f"num_points must be at least 1, got {self.num_points}")
        if any(lo >= hi for lo, hi in zip(self.box_min, self.box_max)):
            raise PreprocessError(f"point crop box min {self.box_min} is not below max {self.box_max}")
        if self.stride < 1:
            raise PreprocessError(f"stride must be at least 1, got {self.stride}")
        if not 0.0 <= self.robot_margin <= 0.1:
            raise PreprocessError(f"robot_margin must be in [0, 0.1] m, got {self.robot_margin}")

    @property
    def shape(self) -> tuple[int, int]:
        return (self.num_points, 3)


@dataclass(frozen=True)
class VisualSpec:
    """Which visual input a policy takes, with its preprocessing parameters."""

    kind: str = "depth"   # 'depth' | 'pointcloud'
    depth: DepthPreprocess = field(default_factory=DepthPreprocess)
    points: PointCloudPreprocess = field(default_factory=PointCloudPreprocess)

    def check(self) -> None:
        if self.kind not in ("depth", "pointcloud"):
            raise PreprocessError(f"visual kind must be 'depth' or 'pointcloud', not {self.kind!r}")
        self.params.check()

    @property
    def params(self):
        return self.depth if self.kind == "depth" else self.points

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of one step's visual input."""
        return self.params.shape

    def to_dict(self) -> dict:
        return {"kind": self.kind, self.kind: asdict(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> "VisualSpec":
        """Raises PreprocessError naming the key that is missing or unknown."""
        try:
            kind = d["kind"]
            if kind == "depth":
                p = d["depth"]
                spec = cls(kind, depth=DepthPreprocess(crop=tuple(p["crop"]), near=float(p["near"]),
                                                       far=float(p["far"]), height=int(p["height"]),
                                                       width=int(p["width"])))
            elif kind == "pointcloud":
                p = d["pointcloud"]
                spec = cls(kind, points=PointCloudPreprocess(
                    num_points=int(p["num_points"]), box_min=tuple(p["box_min"]), box_max=tuple(p["box_max"]),
                    table_z=float(p["table_z"]), table_margin=float(p["table_margin"]), stride=int(p["stride"]),
                    seed=int(p["seed"]), robot_margin=float(p.get("robot_margin", 0.0))))
            else:
                raise PreprocessError(f"visual kind must be 'depth' or 'pointcloud', not {kind!r}")
        except KeyError as exc:
            raise PreprocessError(f"visual spec is missing key {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise PreprocessError(f"visual spec has a bad value: {exc}") from exc
        spec.check()
        return spec


# --------------------------------------------------------------------------------------
# Depth image


@functools.lru_cache(maxsize=32)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights averaging each output cell's span of input cells (area resize)."""
    edges = np.linspace(0.0, n_in, n_out + 1)
    W = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        a, b = edges[i], edges[i + 1]
        j0, j1 = int(np.floor(a)), int(np.ceil(b))
        for j in range(j0, min(j1, n_in)):
            W[i, j] = min(b, j + 1) - max(a, j)
        W[i] /= W[i].sum()
    W.setflags(write=False)
    return W


def crop_bounds(shape: tuple[int, int], crop) -> tuple[int, int, int, int]:
    """Pixel rows/cols (top, bottom, left, right) kept by a fractional ``crop`` of an image of ``shape``."""
    h, w = shape
    t, b, left, r = crop
    top, bottom = int(round(t * h)), int(round(b * h))
    lft, rgt = int(round(left * w)), int(round(r * w))
    return top, max(bottom, top + 1), lft, max(rgt, lft + 1)


def depth_to_input(depth: np.ndarray, p: DepthPreprocess) -> np.ndarray:
    """Depth [H, W] (m, NaN = invalid) -> policy input [p.height, p.width] float32 in [0, 1].

    Raises:
        PreprocessError: ``depth`` is not a 2-D image.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or min(depth.shape) < 1:
        raise PreprocessError(f"depth frame must be a 2-D image, got shape {depth.shape}")
    top, bottom, left, right = crop_bounds(depth.shape, p.crop)
    d = depth[top:bottom, left:right].astype(np.float32)
    d = np.where(np.isfinite(d) & (d > 0.0), d, np.float32(p.far))   # holes read as 'nothing there'
    np.clip(d, p.near, p.far, out=d)
    d = _area_matrix(d.shape[0], p.height) @ d @ _area_matrix(d.shape[1], p.width).T
    return ((d - np.float32(p.near)) * np.float32(1.0 / (p.far - p.near))).astype(np.float32)


# --------------------------------------------------------------------------------------
# Point cloud


@functools.lru_cache(maxsize=8)
def _pixel_rays(shape: tuple[int, int], K_key: tuple, stride: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = shape
    fx, fy, cx, cy = K_key
    v, u = np.mgrid[0:h:stride, 0:w:stride]
    return v, (u - cx) / fx, (v - cy) / fy


def backproject(depth: np.ndarray, K: np.ndarray, stride: int = 1) -> np.ndarray:
    """Valid pixels of ``depth`` [H, W] (m along the optical axis) -> points [N, 3] in the camera's
    optical frame (x right, y down, z forward), every ``stride``-th pixel."""
    K = np.asarray(K, float)
    v, rx, ry = _pixel_rays(depth.shape, (K[0, 0], K[1, 1], K[0, 2], K[1, 2]), stride)
    z = depth[::stride, ::stride].astype(np.float64)
    ok = np.isfinite(z) & (z > 0)
    return np.column_stack([rx[ok] * z[ok], ry[ok] * z[ok], z[ok]])


@njit(cache=True, nogil=True)
def _rays_above_kernel(depth, stride, fx, fy, cx, cy, r2x, r2y, r2z, base_z, cut):  # pragma: no cover - compiled
    """The ``stride``-th pixels of ``depth`` in row-major order whose depth z is finite and positive
    and whose estimated base-frame height z (r2 . ray) + ``base_z`` exceeds ``cut`` -> their
    camera-frame points [n, 3] (rx z, ry z, z), with the ray (rx, ry, 1) = ((u - cx) / fx,
    (v - cy) / fy, 1) computed as :func:`_pixel_rays` computes it (the same float64 values)."""
    h = (depth.shape[0] + stride - 1) // stride
    w = (depth.shape[1] + stride - 1) // stride
    out = np.empty((h * w, 3))
    rxs = np.empty(w)
    for j in range(w):
        rxs[j] = (np.float64(j * stride) - cx) / fx
    n = 0
    for i in range(h):
        ry = (np.float64(i * stride) - cy) / fy
        for j in range(w):
            z = np.float64(depth[i * stride, j * stride])
            if not (np.isfinite(z) and z > 0.0):
                continue
            rx = rxs[j]
            if not z * (r2x * rx + r2y * ry + r2z) + base_z > cut:
                continue
            out[n, 0] = rx * z
            out[n, 1] = ry * z
            out[n, 2] = z
            n += 1
    return out[:n]


@njit(cache=True, nogil=True)
def _crop_kernel(pts, box_min, box_max, above):  # pragma: no cover - compiled
    """The rows of ``pts`` [N, 3] (base frame, m) inside the box [box_min, box_max] (bounds included)
    and strictly higher than ``above``, in order."""
    out = np.empty_like(pts)
    n = 0
    for k in range(pts.shape[0]):
        x, y, z = pts[k, 0], pts[k, 1], pts[k, 2]
        if (box_min[0] <= x <= box_max[0] and box_min[1] <= y <= box_max[1] and box_min[2] <= z <= box_max[2]
                and z > above):
            out[n] = pts[k]
            n += 1
    return out[:n]


def _points_above(depth: np.ndarray, K: np.ndarray, T: np.ndarray, stride: int, z_min: float) -> np.ndarray:
    """:func:`backproject`'s points (camera frame, same values, same order), leaving out those whose
    base-frame height is surely at or below ``z_min`` (m): most of a frame is table, dropped by
    the crop anyway. The height is estimated per pixel by a cheaper route than the crop's
    transform, so a margin of 1 um keeps every point the crop could keep (float64 rounding is
    ~1e-16 m here): the crop's result is unchanged. One compiled pass over the pixels, reading
    nothing but the depth."""
    return _rays_above_kernel(depth, int(stride), float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]),
                              float(T[2, 0]), float(T[2, 1]), float(T[2, 2]), float(T[2, 3]), z_min - 1e-6)


def frame_seed(seed: int, stamp: float) -> np.random.Generator:
    """The point-sampling generator for a frame: the same (seed, stamp) gives the same points."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(round(stamp * 1e6)) & 0xFFFFFFFFFFFF])


def depth_to_points(depth: np.ndarray, K: np.ndarray, T_base_camera: np.ndarray, p: PointCloudPreprocess,
                    stamp: float, q=None) -> np.ndarray:
    """Depth [H, W] (m) -> object points [p.num_points, 3] float32 in the robot base frame (m).

    With ``p.robot_margin`` the robot's own points are dropped, from the joints ``q`` [23] (rad,
    driver order) measured at the frame's time; when that leaves nothing (the objects hidden
    by the hand), the cropped cloud is kept whole rather than no input at all.

    Raises:
        PreprocessError: the frame is not an image, no point is left after cropping
            (nothing on the table inside the box), or the robot is to be filtered out and
            ``q`` is missing.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2:
        raise PreprocessError(f"depth frame must be a 2-D image, got shape {depth.shape}")
    T = np.asarray(T_base_camera, float)
    pts = _points_above(depth, np.asarray(K, float), T, p.stride, max(p.box_min[2], p.table_z + p.table_margin))
    pts = _crop_kernel(pts @ T[:3, :3].T + T[:3, 3], np.asarray(p.box_min, float), np.asarray(p.box_max, float),
                       float(p.table_z + p.table_margin))
    if len(pts) == 0:
        raise PreprocessError(f"no depth points inside the box {p.box_min}..{p.box_max} above the table "
                              f"(z > {p.table_z + p.table_margin:.3f} m)")
    if p.robot_margin > 0:
        if q is None:
            raise PreprocessError("this point-cloud input filters the robot out (robot_margin) and needs the joints")
        from robot_runtime.perception.robot_filter import default_self_filter  # noqa: PLC0415

        objects = ~default_self_filter().inside(pts, q, p.robot_margin)
        if objects.any():
            pts = pts[objects]
    rng = frame_seed(p.seed, stamp)
    idx = rng.choice(len(pts), p.num_points, replace=len(pts) < p.num_points)
    return pts[np.sort(idx)].astype(np.float32)


# --------------------------------------------------------------------------------------


def _compile_point_path(robot_filter: bool) -> None:
    """Compile (or load from numba's cache) the point path's kernels now, for both depth dtypes a
    camera gives (float32, float64), so that no frame waits for the compiler."""
    for dtype in (np.float32, np.float64):
        _rays_above_kernel(np.zeros((1, 1), dtype), 1, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0)
    _crop_kernel(np.zeros((1, 3)), np.zeros(3), np.ones(3), 0.0)
    if robot_filter:
        from robot_runtime.perception.robot_filter import default_self_filter  # noqa: PLC0415

        default_self_filter()


class VisualPreprocessor:
    """Frame -> one step's visual input for a policy with :class:`VisualSpec` ``spec``.

    Args:
        spec: the policy's visual input and preprocessing parameters (from its checkpoint).
        T_base_camera: 4x4 camera optical frame in the robot base frame; needed for point clouds.
    """

    def __init__(self, spec: VisualSpec, T_base_camera: np.ndarray | None = None):
        spec.check()
        if spec.kind == "pointcloud" and T_base_camera is None:
            raise PreprocessError("a point-cloud policy needs the camera calibration (camera pose in the base frame)")
        self.spec = spec
        self.T_base_camera = None if T_base_camera is None else np.asarray(T_base_camera, float)
        if spec.kind == "pointcloud":
            _compile_point_path(spec.points.robot_margin > 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.spec.shape

    @property
    def needs_joints(self) -> bool:
        """Whether each frame needs the joints measured at its time (the robot is filtered out)."""
        return self.spec.kind == "pointcloud" and self.spec.points.robot_margin > 0

    def __call__(self, depth: np.ndarray, K: np.ndarray, stamp: float, q=None) -> np.ndarray:
        """Depth [H, W] (m), intrinsics K [3, 3], acquisition stamp (s), and the joints at that
        time [23] (rad, driver order; used when :attr:`needs_joints`) -> visual input (float32)."""
        if self.spec.kind == "depth":
            return depth_to_input(depth, self.spec.depth)
        return depth_to_points(depth, K, self.T_base_camera, self.spec.points, stamp, q)
