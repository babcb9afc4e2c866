# The two commands of the README: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat setup.py | md5sum | cut -c1-8)
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8

.PHONY: test test-slow demo demo-quick install clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Two pytest-xdist workers, each taking whole test files (a module's fixtures run once), each
# with its 8 simulated devices. Compiling, most of the suite's time, uses one core: on 2 cores
# the suite took 865 s this way, 1214 s in one process (2026-12-07, a cold compilation cache).
# `make test TEST_WORKERS=auto` on a larger host.
TEST_WORKERS ?= 2

test: $(STAMP)
	@start=$$(date +%s); \
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20 tests; status=$$?; \
	echo "test suite time: $$(( $$(date +%s) - start )) s"; exit $$status

# The marked-slow check (`rlr fetch` first: the SmolLM2 parity), with XLA:CPU's exact
# float32 dot (see tests/test_gguf.py EXACT_DOT_FLAG).
test-slow: $(STAMP)
	XLA_FLAGS="$(XLA_FLAGS) --xla_cpu_experimental_ynn_fusion_type=" $(PY) -m pytest -q -s -m slow tests

demo: $(STAMP)
	$(PY) -m rlr.demo --workdir runs/demo

demo-quick: $(STAMP)
	$(PY) -m rlr.demo --workdir runs/demo-quick --quick

clean:
	rm -rf $(VENV) runs .pytest_cache
