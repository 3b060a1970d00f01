# Fenlo developer commands. `make run` and `make test` are all a newcomer needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PROTOS := $(wildcard protos/fenlo/v1/*.proto)
GEN_DIR := clients/python/fenlo/v1
GEN_STAMP := $(GEN_DIR)/.generated-from
CONTRACT_IMAGE := protos/released/fenlo-v1.binpb
TS_DIR := clients/typescript
TS_DEPS := $(TS_DIR)/node_modules/.package-lock.json

.PHONY: run test lint bench docs kb-eval generate check-generated buf-lint buf-breaking contract-image reliability clean ts-test

# Create the virtual environment and install Fenlo with its development tools.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# The TypeScript SDK's pinned npm packages (package-lock.json), for its generator.
$(TS_DEPS): $(TS_DIR)/package.json $(TS_DIR)/package-lock.json
	cd $(TS_DIR) && npm ci --no-audit --no-fund
	@touch $(TS_DEPS)

# Start the server on 127.0.0.1:50051 with the embedded defaults (SQLite in
# ./.fenlo, in-process limits, offline LLM) and a demo workspace.
run: $(STAMP)
	@$(MAKE) --no-print-directory generate-if-stale
	$(BIN)/fenlo serve --demo

# The fast test suite: unit and integration tests against a real in-process
# gRPC server. PostgreSQL and Redis tests run when FENLO_TEST_DATABASE_URL and
# FENLO_TEST_REDIS_URL are set.
test: $(STAMP)
	@$(MAKE) --no-print-directory generate-if-stale
	$(BIN)/pytest

# The long fault and load suite (tests/reliability, marked `reliability`); prints a
# summary ending with `lost:`, `duplicated:` and `leaks:` and writes it to
# tests/reliability/results/latest.txt. The replica scenarios need nginx
# (scripts/ensure-nginx installs Debian's nginx-light when it is missing).
reliability: $(STAMP)
	scripts/ensure-nginx
	$(BIN)/pytest -m reliability tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/buf lint

# Regenerate the Python and TypeScript code from protos/ (committed; never edit it by hand).
generate: $(STAMP) $(TS_DEPS)
	$(PY) scripts/generate.py
	cd $(TS_DIR) && npm run --silent generate

generate-if-stale: $(STAMP)
	@$(PY) scripts/generate.py --if-stale

# Fail when the committed generated code does not match protos/.
check-generated: $(STAMP) $(TS_DEPS)
	$(PY) scripts/generate.py --check
	cd $(TS_DIR) && npm run --silent check-generated

# The TypeScript SDK's tests: they start `fenlo serve` from .venv themselves.
ts-test: $(STAMP) $(TS_DEPS)
	cd $(TS_DIR) && npm test

# The benchmark: Fenlo against a bare grpc.aio baseline in the same run (a few
# minutes); prints the table and updates bench/results/latest.json and latest.png.
bench: $(STAMP)
	@$(MAKE) --no-print-directory generate-if-stale
	$(BIN)/fenlo bench --quick --json --write bench/results

# Measure retrieval on the evaluation set and update docs/knowledge-eval.md.
kb-eval: $(STAMP)
	$(PY) bench/kb_eval/run.py --write

# Regenerate the reference tables in docs/ from the code.
docs: $(STAMP)
	$(PY) scripts/docs.py

buf-lint: $(STAMP)
	$(BIN)/buf lint

# Compare the contract against the committed image of the released contract.
buf-breaking: $(STAMP)
	$(BIN)/buf breaking --against $(CONTRACT_IMAGE) --exclude-path third_party

# Refresh the released-contract image. Do this only on purpose, in a commit
# that says why.
contract-image: $(STAMP)
	$(BIN)/buf build -o $(CONTRACT_IMAGE)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
