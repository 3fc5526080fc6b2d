"""The layers import downward only: the plain libraries of robot_runtime (data, perception,
teleop, twin, control, devices, description) never import the policy, calibration, viz or
node layers above them (the CLI and the nodes sit on top and may import anything)."""
import ast

LOWER = ("data", "perception", "teleop", "twin", "control", "devices", "description")
ABOVE = ("policies", "calibration", "robot_runtime.viz", "robot_runtime.nodes", "robot_runtime.cli")


def _imports(path):
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def test_lower_layers_import_nothing_above_them(repo):
    bad = []
    for layer in LOWER:
        for f in sorted((repo / "robot_runtime" / layer).rglob("*.py")):
            bad += [f"{f.relative_to(repo)} imports {m}" for m in _imports(f)
                    if any(m == a or m.startswith(a + ".") for a in ABOVE)]
    assert not bad, bad
