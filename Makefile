# flowmap: `make run` (install + serve the shipped mnist and digits models), `make test` (install + lint + tests).
# Everything installs into .venv; the pinned CPU torch build goes in first so no CUDA build is pulled.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1

.PHONY: install sysdeps run sample models test lint format clean deploy-check

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[serve,export,dev]"
	touch $@

install: $(STAMP)

sysdeps:   # Debian tools the tests drive: wrk, prometheus, chromium, chromium-driver
	bash scripts/install_sysdeps.sh

run: $(STAMP)
	$(BIN)/flowmap serve

sample: $(STAMP)
	$(BIN)/flowmap sample --model mnist --steps 1 --n 100 --seed 0 --out samples/mnist.png

models: $(STAMP)   # re-make the shipped models (docs: README "Shipped models"); about 4 hours on one core
	bash scripts/ship_models.sh

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports   # the import contracts in pyproject.toml: layers, no cycles, the server's process split
	$(BIN)/shellcheck $$(git ls-files '*.sh' .ci/run)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

deploy-check: $(STAMP) sysdeps   # render + validate the k8s overlays into build/deploy/, promtool, hadolint, tests/deploy
	VENV=$(VENV) bash deploy/check.sh

test: $(STAMP) sysdeps lint
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
