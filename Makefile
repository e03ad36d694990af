# Two commands for a new machine (see README.md):
#   make demo   render the template with its defaults and run the generated repo end to end on its demo data
#   make test   the template's tests: render every option that matters, lint, run each render's own tests
# Each creates .venv and installs what it needs on first use (so do the others). `make help` lists every target.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The exact versions the generated project is tested with (a pip constraints file, shipped in every render): this
# repository's tools install with it too, so `make test` runs each render's suite at those versions.
LOCK := {{cookiecutter.project_slug}}/requirements.lock
DEMO_DIR := build/demo
DEMO_SLUG := digit-recognizer
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: help demo test test-fast lint bench lock clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision first, with pip: the pinned CPU/CUDA wheels are served locally.
	$(PY) -m pip install -q -c "$(LOCK)" torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -c "$(LOCK)" .
	touch $@

demo: $(STAMP)  ## render the template with its defaults, run the generated repo end to end on its demo data
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/cookiecutter --no-input -o $(DEMO_DIR) .
	$(PY) -m pip install -q --no-deps -e $(DEMO_DIR)/$(DEMO_SLUG)
	$(MAKE) -C $(DEMO_DIR)/$(DEMO_SLUG) demo PY=$(abspath $(PY))

test: $(STAMP)  ## the template's tests: every render that matters, lint, each render's own test suite
	# Two workers, one per core (each render's suite runs one torch thread in a copy of its own); the longest tests
	# are handed out first (tests/conftest.py), an idle worker takes queued ones from the busy one.
	$(PY) -m pytest -n 2 --dist worksteal

test-fast: $(STAMP)  ## the template's tests without the e2e runs (the generated suites inside renders)
	$(PY) -m pytest -m "not e2e"

lint: $(STAMP)  ## ruff check + format check of hooks/, tests/, benchmarks/ (the template folder is linted per render)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

bench: $(STAMP)  ## benchmarks/run.py (timings of the generated pipeline, as ratios) + serve_load.py (serve under load)
	$(PY) benchmarks/run.py
	$(PY) benchmarks/serve_load.py

lock: $(STAMP)  ## rewrite the generated project's requirements.lock: this .venv's versions, the tested ones
	$(PY) tests/lockfile.py

clean:  ## remove build/ (the demo render) and the pytest cache
	rm -rf build .pytest_cache
