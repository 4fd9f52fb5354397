# batchrun: every target makes its own virtualenv (.venv) first; nothing else to set up.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
OUT := out
CODE := batchrun tests $(wildcard benchmarks/*.py)

.PHONY: install lint fmt test unit e2e demo crash-test bench bench-quick bench-deps clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	@rm -f $(VENV)/.installed-*
	@touch $(STAMP)

install: $(STAMP)

fmt: install
	$(BIN)/ruff format $(CODE)
	$(BIN)/ruff check --fix $(CODE)

lint: install
	$(BIN)/ruff format --check $(CODE)
	$(BIN)/ruff check $(CODE)
	$(BIN)/mypy

# The README's test command: lint, then every test (units, end-to-end, short crash test).
test: lint
	$(BIN)/pytest -q

unit: install
	$(BIN)/pytest -q -m "not slow"

# A real job against the built-in local endpoint: no key, no network.
demo: install
	@mkdir -p $(OUT) && rm -f $(OUT)/demo.url
	@$(BIN)/batchrun mock-server --port 0 --ready-file $(OUT)/demo.url \
	    --latency 0.3 --latency-jitter 0.7 --p202 0.25 --p500 0.05 --p-drop 0.02 --seed 7 \
	    2>$(OUT)/demo-server.log & pid=$$!; \
	trap "kill $$pid 2>/dev/null" EXIT; \
	for i in $$(seq 100); do test -s $(OUT)/demo.url && break; sleep 0.1; done; \
	test -s $(OUT)/demo.url || { echo "mock server did not start"; cat $(OUT)/demo-server.log; exit 1; }; \
	$(BIN)/batchrun run samples/prompts.jsonl -c configs/local.toml \
	    --base-url "$$(cat $(OUT)/demo.url)" -o $(OUT)/demo.parquet --fresh && \
	$(BIN)/batchrun status $(OUT)/demo.parquet && \
	$(BIN)/python -c "import pandas as pd; df = pd.read_parquet('$(OUT)/demo.parquet'); \
	    df['content'] = df['content'].str.replace(chr(10), ' ').str.slice(0, 48); \
	    print(df[['id', 'status', 'content', 'total_tokens', 'attempts']].head(8).to_string())"

# 100 SIGKILL/resume cycles with faults on; prints lost/duplicated/resubmitted counts.
crash-test: install
	$(BIN)/python -m tests.crash_harness --cycles 100 --workdir $(OUT)/crash-test

# Benchmarks (benchmarks/): the openai SDK from the `bench` extra, nginx from Debian's packages
# when it can be installed (else a Python fallback endpoint, flagged in the results).
BENCH_STAMP := $(VENV)/.bench-installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
NGINX_PKG := DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,ray,bench]'
	@rm -f $(VENV)/.bench-installed-*
	@touch $(BENCH_STAMP)

bench-deps: $(BENCH_STAMP)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
	    ($(NGINX_PKG) || (apt-get update -q && $(NGINX_PKG))) >/dev/null 2>&1 || \
	    echo "bench: nginx could not be installed; the Python fallback endpoint will be used"

# Full sizes, over an hour (the remote-input memory runs add four 1M-row jobs, the endpoint pool ~13 min); writes benchmarks/RESULTS.md (the only place speed claims live).
bench: bench-deps
	BENCH_INVOKED="make bench" $(BIN)/python -m benchmarks.bench

# Small sizes, a couple of minutes: checks the suite itself; writes out/bench/RESULTS-quick.md.
bench-quick: bench-deps
	BENCH_INVOKED="make bench-quick" $(BIN)/python -m benchmarks.bench --quick

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache *.egg-info
