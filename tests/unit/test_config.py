import pytest
import yaml

from robot_runtime.config import config_from_dict, config_to_dict, load_config
from robot_runtime.errors import ConfigError


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_packaged_configs_load(repo):
    sim = load_config(repo / "config" / "sim.yaml")
    assert sim.arm.type == "twin" and sim.camera.type == "twin" and sim.uses_twin
    assert sim.twin.physics_hz >= 500
    robot = load_config(repo / "config" / "robot.yaml")
    assert (robot.arm.type, robot.hand.type, robot.camera.type) == ("xarm", "allegro_ros", "zed")
    assert not robot.uses_twin and not robot.demo.enabled


def test_round_trip_through_dict(repo):
    cfg = load_config(repo / "config" / "sim.yaml")
    again = config_from_dict(config_to_dict(cfg))
    assert config_to_dict(again) == config_to_dict(cfg)


@pytest.mark.parametrize("text, key, words", [
    ("twin:\n  camera:\n    fsp: 30\n", "twin.camera.fsp", "unknown key"),
    ("rates:\n  arm_hz: fast\n", "rates.arm_hz", "expected a number"),
    ("twin:\n  camera:\n    fps: 500\n", "twin.camera.fps", "above the maximum 120"),
    ("twin:\n  physics_hz: 100\n", "twin.physics_hz", "below the minimum 500"),
    ("twin:\n  task: juggle\n", "twin.task", "not one of"),
    ("demo:\n  enabled: yes please\n", "demo.enabled", "true or false"),
    ("robot:\n  arm_home: [0, 0, 0]\n", "robot.arm_home", "expected 7 values"),
    ("robot:\n  arm_home: [0, 3.0, 0, 0, 0, 0, 0]\n", "robot.arm_home[1]", "outside joint joint2"),
    ("arm:\n  type: kuka\n", "arm.type", "unknown arm backend 'kuka'"),
    ("arm:\n  ip: 1.2.3.4\n", "arm.type", "missing 'type'"),
    ("camera:\n  type: replay\n", "camera.path", "required file path"),
    ("camera:\n  type: replay\n  path: nowhere.npz\n", "camera.path", "file not found"),
    ("twin:\n  camera:\n    min_depth: 2.0\n    max_depth: 1.0\n", "twin.camera.max_depth", "must exceed"),
    ("arm:\n  type: xarm\n", "demo.enabled", "twin only"),
    ("rates: 20\n", "rates", "expected a mapping"),
])
def test_bad_values_name_file_and_key(tmp_path, text, key, words):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and f"key '{key}'" in msg and words in msg, msg
    assert err.value.key == key


def test_bad_yaml_names_line(tmp_path):
    p = write(tmp_path, "twin:\n  camera: [1, 2\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(p)


def test_a_key_given_twice_is_an_error_naming_it_and_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a config must not."""
    p = write(tmp_path, "control:\n  latch_after_s: 0.25\n  blend_s: 0.5\n  latch_after_s: 4.0\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and "duplicate key 'latch_after_s'" in msg and "line 4" in msg and "first at line 2" in msg
    # a file that extends another is checked too, and a YAML merge key may still be overridden
    base = write(tmp_path, "twin:\n  seed: 1\n  seed: 2\n", "base.yaml")
    with pytest.raises(ConfigError, match="base.yaml.*duplicate key 'seed'"):
        load_config(write(tmp_path, f"extends: {base.name}\n", "top.yaml"))
    ok = write(tmp_path, "x-arm: &arm {blend_s: 0.5}\ncontrol:\n  <<: *arm\n  blend_s: 0.4\n", "merge.yaml")
    assert yaml.safe_load(ok.read_text())["control"]["blend_s"] == 0.4
    from robot_runtime.config import parse_yaml
    assert parse_yaml(ok.read_text(), ok)["control"] == {"blend_s": 0.4}


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml")


def test_relative_file_paths_resolve_next_to_config(tmp_path):
    (tmp_path / "rec.npz").write_bytes(b"x")
    cfg = load_config(write(tmp_path, "camera:\n  type: replay\n  path: rec.npz\ndemo:\n  enabled: false\n"))
    assert cfg.camera.path == str(tmp_path / "rec.npz")


def test_empty_file_gives_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""))
    assert cfg.twin.camera.width == 320 and cfg.rates.hand_hz == 300.0
    assert yaml.safe_load(yaml.safe_dump(config_to_dict(cfg)))["twin"]["task"] == "grasp_lift"


def test_extends_merges_and_keeps_each_files_relative_paths_its_own(repo, tmp_path):
    lab = tmp_path / "lab"
    lab.mkdir()
    child = write(lab, f"extends: {repo / 'config' / 'sim_teleop.yaml'}\n"
                       "teleop:\n  rate_hz: 25\npolicy:\n  runner: torch\n")
    cfg = load_config(child)
    base = load_config(repo / "config" / "sim_teleop.yaml")
    assert cfg.teleop.rate_hz == 25 and cfg.policy.runner == "torch"          # the child's keys win
    assert cfg.teleop.input.type == base.teleop.input.type == "scripted"      # the rest is the base's
    # paths the base file wrote stay relative to the base file, not to the child
    assert cfg.policy.checkpoint == base.policy.checkpoint
    assert cfg.recorder.out_dir == str((repo / "episodes").resolve())
    # a path the child writes is relative to the child
    again = load_config(write(lab, f"extends: {child.name}\nrecorder:\n  out_dir: mine\n", "again.yaml"))
    assert again.recorder.out_dir == str(lab / "mine") and again.teleop.rate_hz == 25


def test_extends_errors_name_the_file_and_key(tmp_path):
    a = write(tmp_path, "extends: b.yaml\n", "a.yaml")
    write(tmp_path, "extends: a.yaml\n", "b.yaml")
    with pytest.raises(ConfigError, match="loops back") as e:
        load_config(a)
    assert "extends" in str(e.value)
    with pytest.raises(ConfigError, match="file not found.*nowhere.yaml"):
        load_config(write(tmp_path, "extends: nowhere.yaml\n", "c.yaml"))


def test_a_path_a_peer_asks_for_must_lie_inside_the_configured_folders(tmp_path):
    from robot_runtime.config import path_inside

    ok = tmp_path / "checkpoints"
    assert path_inside("run1", [ok], "checkpoint") == (ok / "run1").resolve()
    assert path_inside(str(tmp_path / "shipped" / "x"), [ok, tmp_path / "shipped"], "checkpoint").name == "x"
    for value, match in (("../elsewhere", "outside"), ("/etc/passwd", "outside"), ("--resume=/x", "not a path"),
                         ("", "not a path"), (f"{ok}/../../x", "outside")):
        with pytest.raises(ValueError, match=match):
            path_inside(value, [ok], "checkpoint")
