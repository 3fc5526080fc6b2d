"""Training under torchrun (2 CPU processes, gloo): the same weights as one process for the same
global batch and seed, rank 0 alone writes, a killed rank fails the job clearly and the job
resumes from its train state."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from policies.checkpoint import META_FILE, load_checkpoint
from policies.finetune import STATE_FILE
from tests.unit.test_finetune_eval import write_episodes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("interactions")
    write_episodes(folder, n=6, steps=40)
    return folder


def _pretrain(episodes, out, nproc: int, steps: int, extra=(), port=None, wait=True):
    """``robot-runtime pretrain`` as a lab runs it: under torchrun for several processes."""
    args = [str(episodes), "--out", str(out), "--steps", str(steps), "--batch", "16", "--lr", "1e-3",
            "--save-every", "5", "--eval-every", "0", "--threads", "1", "--nice", "0", "--progress-json",
            "--seed", "3", "--precision", "fp32", *extra]   # fp32: the same arithmetic, batch split or not
    cli = [sys.executable, "-m", "robot_runtime.cli", "pretrain", *args]
    if nproc > 1:
        cli = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "--max-restarts=0", "-m", "robot_runtime.cli", "pretrain", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cli, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if not wait:
        return proc
    out_text, err_text = proc.communicate(timeout=300)
    return proc.returncode, out_text, err_text


def test_two_processes_train_the_weights_one_process_trains_and_rank_0_alone_writes(episodes, tmp_path):
    rc1, out1, err1 = _pretrain(episodes, tmp_path / "one", 1, 10)
    assert rc1 == 0, err1[-3000:]
    # the two processes read the policy inputs through a small cache (an episode set larger than memory)
    rc2, out2, err2 = _pretrain(episodes, tmp_path / "two", 2, 10, extra=("--cache-mb", "0.2"))
    assert rc2 == 0, err2[-3000:]
    a, b = load_checkpoint(tmp_path / "one").state, load_checkpoint(tmp_path / "two").state
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    moved = max(float((a[k] - load_checkpoint(tmp_path / "one" / "step_000005").state[k]).abs().max()) for k in a)
    assert worst < 1e-4 < moved, (worst, moved)   # the same run up to float rounding, and it did train
    sa = torch.load(tmp_path / "one" / STATE_FILE, weights_only=True)
    sb = torch.load(tmp_path / "two" / STATE_FILE, weights_only=True)
    assert np.allclose(sa["losses"], sb["losses"], rtol=1e-4, atol=1e-6)   # the whole batch's loss on both
    meta = json.loads((tmp_path / "two" / META_FILE).read_text())
    assert meta["provenance"]["world"]["world_size"] == 2 and meta["provenance"]["world"]["backend"] == "gloo"
    assert meta["provenance"]["visual_cache"]["loads"] >= 1
    # rank 0 alone reports and writes: each progress line once, one summary, the same files as one process
    progress = [json.loads(line[len("PROGRESS "):]) for line in out2.splitlines() if line.startswith("PROGRESS ")]
    assert [p["step"] for p in progress] == [5, 10] and out2.count("wrote ") == 1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def _rank_pid(root: int, rank: int) -> int | None:
    """The pid of the torchrun worker with this ``RANK`` among ``root``'s descendants (from /proc)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    family, grew = {root}, True
    while grew:
        kids = {p for p, pp in parent.items() if pp in family} - family
        family |= kids
        grew = bool(kids)
    for pid in family - {root}:
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env:
            return pid
    return None


def test_a_killed_rank_fails_the_job_clearly_and_the_job_resumes(episodes, tmp_path):
    out = tmp_path / "job"
    proc = _pretrain(episodes, out, 2, 4000, wait=False)
    deadline = time.monotonic() + 120
    while not (out / STATE_FILE).exists():   # the first interval's train state is on disk
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    pid = _rank_pid(proc.pid, 1)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "Signal 9" in err or "SIGKILL" in err or "rank 0 of 2: training stopped" in err, err[-3000:]
    saved = torch.load(out / STATE_FILE, weights_only=True)["step"]
    assert 5 <= saved < 4000
    rc, text, err = _pretrain(episodes, out, 2, saved + 10, extra=("--resume",))
    assert rc == 0, err[-3000:]
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == saved + 10
    assert json.loads((out / META_FILE).read_text())["provenance"]["step"] == saved + 10


def test_interaction_shards_record_disjoint_seeds_into_their_own_folders_and_merge(tmp_path):
    """Two machines' shards (here one after the other): each its own folder, the seeds disjoint
    and together those one machine records; the parent folder trains as one set."""
    from policies.make_twin_checkpoint import (PRIOR_SEED0, load_twin_config, record_interaction_shard,
                                               shard_seeds, twin_visual)
    from robot_runtime.data.dataset import load_for_training
    from robot_runtime.data.episode_file import read_meta

    assert shard_seeds(5, 0, 2) == [PRIOR_SEED0, PRIOR_SEED0 + 2, PRIOR_SEED0 + 4]
    assert sorted(shard_seeds(7, 0, 3) + shard_seeds(7, 1, 3) + shard_seeds(7, 2, 3)) == \
        list(range(PRIOR_SEED0, PRIOR_SEED0 + 7))
    with pytest.raises(ValueError, match="shard 2/2"):
        shard_seeds(5, 2, 2)
    cfg = load_twin_config(REPO / "config" / "sim.yaml")
    folders = [record_interaction_shard(cfg, tmp_path, 2, i, 2, workers=1) for i in range(2)]
    assert [f.name for f in folders] == ["shard-0-of-2", "shard-1-of-2"]
    seeds = [[read_meta(f)["seed"] for f in sorted(folder.rglob("*.episode.npz"))] for folder in folders]
    assert seeds == [[PRIOR_SEED0], [PRIOR_SEED0 + 1]]
    merged = load_for_training(tmp_path / "interactions", visual_spec=twin_visual(cfg).to_dict(),
                               successful_only=False)
    assert len(merged) == 2
