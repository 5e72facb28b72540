# gridminer: `make test` works on a fresh Debian clone; it installs what it needs itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
TYPINGS := build/typings
MPY_STUBS := micropython-esp32-stubs==1.29.0.post1 micropython-stdlib-stubs==1.29.0.post2
SETUP_STAMP := $(VENV)/.gridminer-setup
EXT_SOURCES := $(wildcard ext/*.pyx ext/*.c ext/*.h)
PYTEST_ARGS ?=

.PHONY: setup test bench lint

setup: $(SETUP_STAMP) $(TYPINGS)/.stamp mosquitto arm-toolchain

$(SETUP_STAMP): pyproject.toml setup.py $(EXT_SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -U pip setuptools wheel
	PYTHONWARNINGS=ignore $(PIP) install -e '.[test]'  # quiet setuptools' editable-mode notice
	touch $@

$(TYPINGS)/.stamp: | $(SETUP_STAMP)
	$(PIP) install --no-deps --target $(TYPINGS) $(MPY_STUBS)
	touch $@

# The real broker the integration tests start on loopback (Debian package `mosquitto`).
mosquitto:
	@if command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null; \
	elif command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends mosquitto >/dev/null; \
	else echo "WARNING: mosquitto is missing and cannot be installed; broker tests will fail" >&2; fi

.PHONY: mosquitto

# The ARM lane's cross compilers, clang and qemu-user (tests/arm: the C kernels under qemu-user).
ARM_PACKAGES := gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libc6-dev-arm64-cross libc6-dev-armhf-cross clang qemu-user
arm-toolchain:
	@if command -v aarch64-linux-gnu-gcc arm-linux-gnueabihf-gcc clang qemu-aarch64 qemu-arm >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(ARM_PACKAGES) >/dev/null; \
	elif command -v sudo >/dev/null; then \
		sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(ARM_PACKAGES) >/dev/null; \
	else echo "WARNING: the ARM toolchain is missing and cannot be installed; the ARM lane will skip" >&2; fi

# The whole ARM lane: every CPU model (make test runs two an architecture).
test-arm: setup
	GRIDMINER_ARM_LANE=full $(PY) -m pytest tests/arm $(PYTEST_ARGS)

.PHONY: arm-toolchain test-arm

# Every lane CI runs: unit, integration, hil (short scenarios), mpy (MicroPython), arm (reduced).
# Soaks are `slow`.
test: setup
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The soak (`slow`, not in `make test`): the agent on the emulator through broker and agent
# restarts, board trips, link loss and chain faults for SOAK_S seconds (tests/soak).
SOAK_S ?= 7200
.PHONY: soak
soak: setup
	GRIDMINER_SOAK_S=$(SOAK_S) $(PY) -m pytest -m slow tests/soak -s $(PYTEST_ARGS)

# Benchmarks print figures (they are not timed tests): the SHA-256d kernels, then every script
# in tests/bench (reply parser, emulator, governor, agent on the emulator, MQTT latency).
bench: setup
	$(PY) -m agent bench
	@for script in tests/bench/bench_*.py; do \
		echo; echo "== $$script"; $(PY) $$script || exit 1; \
	done

lint: setup
	$(VENV)/bin/ruff check agent firmware_bridge hil tests
	$(VENV)/bin/mypy

# The HIL demo: broker + emulated board + agent process + grid operator playing the default
# scenario (a compressed renewable-surplus day, ~2 minutes); writes the report to $(DEMO_OUT).
DEMO_SPEED ?= 2.5
DEMO_OUT ?= out/demo
.PHONY: demo
demo: setup
	@$(PY) -m agent hil run solar_surplus --speed $(DEMO_SPEED) --out $(DEMO_OUT)

# The site demo: 1,300 virtual devices (1.5 MW) behind `gridminer site`, side by side with an
# equal fleet under today's fleet tools, playing site_surplus's short version (10x, ~4 minutes
# plus start-up); writes the report to $(DEMO_SITE_OUT).
DEMO_SITE_OUT ?= out/demo-site
.PHONY: demo-site
demo-site: setup
	@$(PY) -m agent hil run site_surplus --short --out $(DEMO_SITE_OUT)

# Deploy the bridge firmware onto a MicroPython board with mpremote (precompiled .mpy, main.py,
# bridge.json): make flash PORT=/dev/ttyACM0 [FLASH_ARGS="--config bridge.json --family BM1366"]
.PHONY: flash
flash: setup
	@test -n "$(PORT)" || { echo "usage: make flash PORT=/dev/ttyACM0 [FLASH_ARGS=...]" >&2; exit 2; }
	$(VENV)/bin/gridminer flash --port $(PORT) $(FLASH_ARGS)

# Coverage-guided fuzzing (atheris; not part of `make test`): each harness in tests/fuzz runs for
# FUZZ_RUNS inputs, one after the other, and the target fails on the first crash (the input is
# in build/fuzz/<target>/artifacts/). FUZZ_ARGS go to libFuzzer, e.g. FUZZ_ARGS=-max_total_time=600.
# Known, unfixed bugs fail it too; FUZZ_IGNORE_KNOWN=1 goes on past them (tests/fuzz/harness.py).
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS ?= asic command config link scenario
FUZZ_ARGS ?=
.PHONY: fuzz
fuzz: setup
	@$(PY) -c "import atheris" 2>/dev/null || $(PIP) install atheris
	@for target in $(FUZZ_TARGETS); do \
		echo "== fuzz $$target ($(FUZZ_RUNS) runs)"; \
		$(PY) tests/fuzz/fuzz_$$target.py -runs=$(FUZZ_RUNS) -print_final_stats=1 $(FUZZ_ARGS) \
			|| { echo "fuzz $$target: FAILED (see build/fuzz/$$target/artifacts/)" >&2; exit 1; }; \
	done
