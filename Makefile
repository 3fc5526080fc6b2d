# Two commands do all the set-up on a fresh machine:
#   make sim    run the graph on the MuJoCo twin of the lab cell
#   make test   run the test suite
# Both create or reuse .venv. torch is installed first and pinned (the CPU build);
# the ROS 2 Jazzy rclpy wheels come from PyPI only when `import rclpy` fails,
# so a lab PC's sourced system ROS 2 always wins.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_PIN := torch==2.13.0
ROS_WHEELS := ros-jazzy-rclpy[fastrtps]==7.1.6 ros-sensor-msgs==5.3.6 ros-std-msgs==5.3.6 \
	ros-std-srvs==5.3.6 ros-geometry-msgs==5.3.6 ros-trajectory-msgs==5.3.6 ros-diagnostic-msgs==5.3.6
EXTRAS ?= twin,xarm,policy,teleop,viz,dev
MEDIAPIPE := mediapipe==0.10.21
DURATION ?= 0
VIZ ?=
PYTEST_ARGS ?=
TEST_WORKERS ?= 2
SERIAL_UNIT := tests/unit/test_xarm_box.py tests/unit/test_teleop_recording.py

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: sim test bench venv clean

venv: $(VENV)/.ready

$(VENV)/.ready: setup.py setup.cfg package.xml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_PIN)"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	$(PIP) install -q --no-deps "$(MEDIAPIPE)"
	@if $(PY) -c "import rclpy, sensor_msgs.msg, std_srvs.srv, diagnostic_msgs.msg, geometry_msgs.msg, trajectory_msgs.msg" 2>/dev/null; then \
		echo "rclpy found (system ROS 2 or earlier install): not installing the PyPI wheels"; \
	else \
		echo "installing ROS 2 Jazzy rclpy wheels from PyPI"; \
		$(PIP) install -q $(ROS_WHEELS); \
	fi
	@touch $@

sim: venv
	$(VENV)/bin/robot-runtime sim --config config/sim.yaml --duration $(DURATION) $(if $(VIZ),--viz $(VIZ))

# With no PYTEST_ARGS: tests/unit in TEST_WORKERS processes (pytest-xdist), then tests/node,
# tests/integration and SERIAL_UNIT in one (their graphs of nodes, and the emulated xArm box's
# servo timing, run in real time and need the cores; MediaPipe, see the README); both always run,
# and the target fails if either failed.
test: venv
ifeq ($(strip $(PYTEST_ARGS)),)
	@rc=0; \
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests/unit $(addprefix --ignore=,$(SERIAL_UNIT)) || rc=$$?; \
	$(PY) -m pytest -q $(SERIAL_UNIT) tests/node tests/integration || rc=$$?; \
	exit $$rc
else
	$(PY) -m pytest -q $(PYTEST_ARGS)
endif

bench: venv
	$(PIP) install -q -e ".[bench]"
	$(PY) -m bench.twin
	$(PY) -m bench.control
	$(PY) -m bench.kinematics
	$(PY) -m bench.policy
	$(PY) -m bench.teleop
	$(PY) -m bench.faults
	$(PY) -m bench.xarm
	$(PY) -m bench.train

clean:
	rm -rf $(VENV) build *.egg-info bench/results
