"""The policy grid locked to camera frames (pure: a simulated clock, camera and transport)."""
import numpy as np
import pytest

from robot_runtime.control.loop import FrameLockedGrid, FrameLockedLoop


class SimCamera:
    """Frames stamped every ``period`` (s) from ``t0`` on the camera's clock, arriving ``delay`` s
    later (plus jitter); ``lost`` frame indices never arrive. Drives a simulated clock."""

    def __init__(self, period, t0=100.0137, delay=0.003, jitter=0.0005, lost=(), seed=0):
        rng = np.random.default_rng(seed)
        self.stamps = t0 + period * np.arange(4000)
        self.arrive = self.stamps + delay + rng.uniform(0, jitter, len(self.stamps))
        self.arrive[list(lost)] = np.inf
        self.now = t0

    def clock(self):
        return self.now

    def sleep(self, dt):
        self.now += dt

    def newest(self):
        got = np.flatnonzero(self.arrive <= self.now)
        return float(self.stamps[got[-1]]) if got.size else None


def run_loop(cam, ticks, period=0.05):
    grid = FrameLockedGrid(period)
    log = []

    def tick(grid_t):
        log.append((cam.now, grid_t, cam.newest()))
        cam.now += 0.002      # the tick's own work

    FrameLockedLoop(grid, cam.newest, tick, clock=cam.clock, sleep=cam.sleep).run(max_ticks=ticks)
    return grid, np.array(log, dtype=float)


def test_a_60_hz_camera_locks_the_20_hz_grid_and_each_tick_uses_a_frame_just_acquired():
    cam = SimCamera(1 / 60)
    grid, log = run_loop(cam, 200)
    assert grid.locked and grid.ticks_on_frame >= 195
    t, _, used = log[20:].T
    age = t - used
    assert age.max() < 0.0045, age.max()                  # arrival delay + jitter + one poll, no waiting for a tick
    assert np.allclose(np.diff(used), 0.05, atol=1e-9)     # every third frame: the grid stays 20 Hz on the stamps


def test_a_camera_clock_running_fast_is_followed_not_drifted_from():
    cam = SimCamera(1 / 60 * 0.995)   # 0.5 % fast: a free grid would slide 0.25 ms per tick
    grid, log = run_loop(cam, 400)
    t, _, used = log[20:].T
    assert grid.locked and (t - used).max() < 0.0045
    assert np.allclose(np.diff(used), 3 / 60 * 0.995, atol=1e-9)


def test_a_lost_frame_falls_back_to_the_free_grid_for_one_tick_then_relocks():
    cam = SimCamera(1 / 60, lost=[29, 30, 31, 32])   # the 10th grid frame (30) and its neighbours never come
    grid, log = run_loop(cam, 40)
    t, grid_t, used = log.T
    free = np.flatnonzero(t - grid_t > 0.01)          # ticks that waited out max_wait_s
    # one free tick for the lost frame, and one at the start, before four frames gave the camera's period
    assert len(free) == 1 and grid.ticks_free == 2, (free, grid.ticks_free)
    k = free[0]
    assert t[k] - grid_t[k] == pytest.approx(grid.max_wait_s, abs=1e-3)
    assert (t[k + 2:] - used[k + 2:]).max() < 0.0045   # locked again after it


def test_a_camera_rate_that_does_not_divide_the_grid_keeps_the_free_20_hz_grid():
    cam = SimCamera(1 / 30)            # 1.5 frames per tick
    grid, log = run_loop(cam, 100)
    t, grid_t, _ = log.T
    assert not grid.locked and grid.ticks_on_frame == 0
    assert np.allclose(np.diff(grid_t[5:]), 0.05, atol=1e-9) and (t - grid_t).max() < 1e-3


def _record(cam, seconds, period=0.05, batch=0.05):
    """Feed FrameLockedInstants the frames that arrived in each ``batch`` s, as the recorder's loop does."""
    from robot_runtime.control.loop import FrameLockedInstants

    inst, out, seen = FrameLockedInstants(period), [], 0
    end = cam.now + seconds
    while cam.now < end:
        cam.now += batch
        arrived = np.flatnonzero(cam.arrive <= cam.now)
        new = [float(cam.stamps[i]) for i in arrived if i >= seen]
        seen = arrived[-1] + 1 if arrived.size else seen
        out += inst.instants(new, cam.now)
    return inst, np.array(out)


def test_the_recorders_instants_are_the_frames_a_locked_policy_uses():
    cam = SimCamera(1 / 60, lost=[60, 61, 62])
    inst, t = _record(cam, 10.0)
    on_frames = np.isin(t, cam.stamps[np.isfinite(cam.arrive)])
    assert inst.grid.locked and on_frames[5:].mean() > 0.98       # an instant is a frame's own stamp
    assert np.allclose(np.diff(t[5:]), 0.05, atol=1e-6)              # on the 20 Hz grid, one lost frame included
    assert (~on_frames[5:]).sum() == 1                               # the lost one: a free instant in its place


def test_the_recorders_instants_keep_the_free_grid_when_the_rates_do_not_divide():
    cam = SimCamera(1 / 30)
    inst, t = _record(cam, 5.0)
    assert not inst.grid.locked and np.allclose(np.diff(t), 0.05, atol=1e-9) and len(t) >= 95
