# compattr: `make study` runs the default study (`make study CONFIG=config/x.yaml` another one, its
# file checked first), `make test` the test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
CONFIG ?=

.PHONY: study test test-fast lint bench config-docs clean-results unified

$(BIN)/snakemake: envs/requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r envs/requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

study: $(BIN)/snakemake
ifdef CONFIG
	$(BIN)/python -m compattr.configcheck $(CONFIG)
	$(BIN)/snakemake --cores $(CORES) --configfile $(CONFIG)
else
	$(BIN)/snakemake --cores $(CORES)
endif

# The three kinds of unit (components, features, data), each study with its own config, then one figure.
unified: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)
	$(BIN)/snakemake --cores $(CORES) --configfile config/digits_features.yaml
	$(BIN)/snakemake --cores $(CORES) --configfile config/digits_data.yaml
	$(BIN)/snakemake --cores $(CORES) unified

test: $(BIN)/snakemake
	$(BIN)/pytest -q

# The unit tests alone (about 1.5 minutes on 2 cores): everything but the Snakemake runs.
test-fast: $(BIN)/snakemake
	$(BIN)/pytest -q -m "not workflow"

lint: $(BIN)/snakemake
	$(BIN)/ruff check .
	$(BIN)/snakemake --lint

config-docs: $(BIN)/snakemake
	$(BIN)/python -m compattr.configdoc workflow/schemas/config.schema.yaml > config/README.md

clean-results:
	rm -rf results logs
