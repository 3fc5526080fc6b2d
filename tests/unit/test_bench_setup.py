"""The benchmarks run in the venv ``make test`` builds, or say in one line what to install."""
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_a_benchmark_missing_a_module_names_it_and_the_install_line_and_exits():
    """bench.policy's reference trunk is Hugging Face ``transformers`` (the ``bench`` extra): with
    it missing, the benchmark stops before any work with one line naming the module and the
    command that installs it."""
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import bench.policy\n"
            "bench.policy.main()\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert "bench.policy needs transformers" in last and "pip install -e '.[bench]'" in last, res.stderr[-2000:]
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("bench", ["twin", "control", "kinematics", "teleop", "faults", "xarm", "fewshot", "train"])
def test_every_other_benchmark_has_what_it_needs_in_the_test_venv(bench, monkeypatch):
    """Each benchmark's own check passes in this venv (``make test``'s), so only bench.policy's
    reference needs an extra; the check runs before the benchmark's work."""
    import importlib

    import bench.common as common
    seen = []
    monkeypatch.setattr(common, "require", lambda name, *mods: seen.append((name, mods)) or
                        (_ for _ in ()).throw(SystemExit(0)))
    mod = importlib.import_module(f"bench.{bench}")
    monkeypatch.setattr(mod, "require", common.require)
    with pytest.raises(SystemExit):
        mod.main() if bench not in ("fewshot", "train") else mod.main([])
    (name, mods), = seen
    assert name == f"bench.{bench}" and mods
    assert not [m for m in mods if importlib.util.find_spec(m) is None]


def test_the_few_shot_benchmark_runs_by_default_what_the_issues_targets_are_measured_on():
    """A plain ``python -m bench.fewshot`` runs each task on all demos from the prior, lift and drop
    on 5 from scratch and from the prior, and lift on 10 from the prior; ``all`` adds the scratch
    runs; the old ``*_with_prior`` names still pick the all-demo runs; unknown runs and
    tasks are refused by name, and the hand's view goes to pour alone unless told."""
    from bench.fewshot import DEFAULT_RUNS, hand_view_tasks, pick_runs, plan_runs

    runs = plan_runs(15, "prior")
    picked = pick_runs(runs, "")
    assert [r[0] for r in picked] == list(DEFAULT_RUNS)
    assert {r[0]: r[3] for r in picked}["grasp_pour"] == "prior"
    assert {(r[1], r[2], r[3]) for r in picked} >= {("grasp_lift", 5, None), ("grasp_lift", 5, "prior"),
                                                    ("grasp_drop", 5, None), ("grasp_drop", 5, "prior"),
                                                    ("grasp_lift", 10, "prior")}
    assert len(pick_runs(runs, "all")) == len(runs) > len(picked)
    assert [r[0] for r in pick_runs(runs, "grasp_drop_5demos, grasp_lift_with_prior")] == \
        ["grasp_lift", "grasp_drop_5demos"]
    with pytest.raises(SystemExit, match="grasp_sing"):
        pick_runs(runs, "grasp_sing")
    assert hand_view_tasks("grasp_pour") == ("grasp_pour",) and hand_view_tasks("none") == ()
    with pytest.raises(SystemExit, match="grasp_sing"):
        hand_view_tasks("grasp_pour,grasp_sing")


def test_the_few_shot_benchmark_links_every_demo_of_a_subset_even_when_two_workers_named_files_alike(tmp_path):
    """The recording workers write into their own folders, and their first files can carry the same
    name (time and index): a subset of 5 demos is 5 links, not 3."""
    from bench.fewshot import link_demos

    files = []
    for worker, count in (("seeds_0", 3), ("seeds_3", 2)):
        (tmp_path / worker).mkdir()
        for i in range(count):
            f = tmp_path / worker / f"20261207-152123_grasp_lift_{i:04d}.episode.npz"
            f.write_bytes(worker.encode() + bytes([i]))
            files.append(f)
    links = link_demos(files, tmp_path / "grasp_lift_5")
    assert len(links) == len(set(links)) == 5
    assert sorted(p.resolve() for p in (tmp_path / "grasp_lift_5").iterdir()) == sorted(files)
    (tmp_path / "grasp_lift_5" / "stray.npz").write_bytes(b"x")
    with pytest.raises(RuntimeError, match="holds 6 demos, expected the 5"):
        link_demos(files, tmp_path / "grasp_lift_5")
