# PneumoLens: `make demo` sets up and runs the main job; `make test` sets up and runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?=
DEMO_OUT ?= runs/demo
# pytest-xdist workers for the tests that do not depend on timing (auto: one per core; 0: all in one process).
TEST_WORKERS ?= auto
# Bytecode caching on for the tests, whatever PYTHONDONTWRITEBYTECODE says: without it every worker and
# every command-line subprocess compiles the package again and pytest rewrites every test module again.
PYTEST := PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

.PHONY: setup demo test test-fast browser bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Torch first, from the pinned CPU build, so no other package can pull a different one.
$(VENV)/.installed: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c requirements.lock -e ".[fast,dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/pneumolens demo --out $(DEMO_OUT) $(if $(DATA),--data $(DATA),)

# Headless Chromium + ChromeDriver for the service's browser test (Debian packages; needs root).
# Without them the browser test is skipped with its reason, everything else still runs.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ; } || \
	  echo "note: chromium/chromedriver not installed; the browser test will be skipped"

# The whole suite in two runs: first the test-fast set spread over TEST_WORKERS processes, then the tests
# marked slow or browser in one process, so that no timing-dependent test shares the cores with a worker.
# The second run happens even when the first fails; the target fails when either does.
test: setup browser
	status=0; \
	$(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not browser" || status=1; \
	$(PYTEST) -q -m "slow or browser" || status=1; \
	exit $$status

# Target: under a minute on 2 idle cores. Leaves out tests marked slow (seconds long or timing-dependent) and the browser.
test-fast: setup
	$(PYTEST) -q -n $(TEST_WORKERS) --dist worksteal -m "not slow and not browser" --durations=10

bench: setup
	$(BIN)/python bench/bench_core.py
	$(BIN)/python bench/bench_accel.py --out bench/results/accel-ab.md --json bench/results/accel-ab.json
	$(BIN)/python bench/bench_explain.py --checkpoint pneumolens/weights/model.pt --json bench/results/explain.json
	$(BIN)/python bench/bench_service.py --checkpoint pneumolens/weights/model.pt --out bench/results/service.json

clean:
	rm -rf $(VENV) runs .pytest_cache
