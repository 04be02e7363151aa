# The two commands of the README. Each creates .venv and installs what it needs.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev,peers]'
	touch $(STAMP)

.PHONY: install test demo
install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# The whole loop on a compressed clock: Prefect, MLflow, the flows, serving and a simulated world sending HTTP
# traffic for 30 world hours (about 14 minutes). Each run starts from a fresh data directory under out/demo.
demo: $(STAMP)
	rm -rf out/demo
	$(VENV)/bin/drn demo --out out/demo
