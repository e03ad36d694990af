# Two commands for a new machine (see README.md):
#   make demo   render the template with its defaults and run the generated repo end to end on its demo data
#   make test   the template's tests: render every option that matters, lint, run each render's own tests
# Each creates .venv and installs what it needs on first use.

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR := build/demo
DEMO_SLUG := digit-recognizer
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision first, with pip: the pinned CPU/CUDA wheels are served locally.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q .
	touch $@

demo: $(STAMP)
	rm -rf $(DEMO_DIR)
	$(VENV)/bin/cookiecutter --no-input -o $(DEMO_DIR) .
	$(PY) -m pip install -q --no-deps -e $(DEMO_DIR)/$(DEMO_SLUG)
	$(MAKE) -C $(DEMO_DIR)/$(DEMO_SLUG) demo PY=$(abspath $(PY))

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/run.py

clean:
	rm -rf build .pytest_cache
