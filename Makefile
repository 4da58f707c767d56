# The two commands of the README, and their parts.
#   make run   fetch the default models, build, serve them on 127.0.0.1:8000
#   make test  fetch the models, build, run every test (Rust and Python)

PYTHON ?= python3
VENV   ?= .venv
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: run test models models-extra deps build test-rust test-python lint miri check-cuda gpu-bundle

models:
	scripts/fetch-models.sh

# The real models beyond the defaults that tests use, into models-extra/:
# Qwen2.5-Coder-0.5B-Instruct (GGUF Q4_K_M, 470 MB) for the tool-calling tests,
# gemma-3-270m (GGUF Q4_K_M, 242 MB), all-mpnet-base-v2 (safetensors, 419 MB) and
# nomic-embed-text-v1.5 (GGUF F16, 262 MB) for the Gemma 3, MPNet and nomic-bert
# fidelity tests.
models-extra:
	scripts/fetch-models.sh --extra models-extra qwen gemma mpnet nomic

# Services and tools the tests run for real (Prometheus, Redis, PostgreSQL,
# HAProxy, Chromium, kubectl), from Debian's packages.
deps:
	scripts/install-deps.sh prometheus redis-server postgres haproxy chromium kubectl

build:
	cargo build --release -p hfms

run: models build
	./target/release/hfms serve --host $(HOST) --port $(PORT) --preload smollm2,all-minilm

# Tests build once, with the optimised-but-incremental `fast` profile
# (model maths in a debug build is tens of times slower).
test-rust: models models-extra deps
	cargo test --profile fast --workspace
	@# Which kernel sets the tests above checked on this CPU, and which not.
	@target/fast/hfms hardware | tail -n 1

$(VENV)/.installed: tests/python/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt
	touch $@

# `--no-run` builds the binary with the same features `cargo test` uses, so
# after test-rust nothing is rebuilt.
test-python: models models-extra deps $(VENV)/.installed
	cargo test --profile fast -p hfms --no-run
	HFMS_BIN=target/fast/hfms $(VENV)/bin/python -m pytest -q tests/python

test: test-rust test-python

# The CUDA build, on a machine with no GPU and no system CUDA toolkit (CI runs
# it after the tests, from .ci/run): NVIDIA's CUDA 13.0 wheels into
# target/cuda-toolkit, the release binary with `--features cuda` into
# target/cuda (compute capability $(CUDA_COMPUTE_CAP): H100/H200), its bundle
# for a GPU machine, and scripts/gpu-check.sh up to where a GPU is needed.
CUDA_COMPUTE_CAP ?= 90
check-cuda: models
	CUDA_COMPUTE_CAP=$(CUDA_COMPUTE_CAP) scripts/check-cuda.sh

# The bundle scripts/gpu-check.sh runs on a GPU machine (after check-cuda).
gpu-bundle:
	scripts/gpu-bundle.sh

lint:
	cargo fmt --check
	cargo clippy --profile fast --all-targets -- -D warnings

# Undefined-behaviour check: the engine's unit tests under Miri (a nightly
# toolchain with the miri component; not part of `make test`). The CPU
# dispatch picks the portable kernels under Miri; the thread pool runs.
# Skipped: tests that map files (Miri has no file-backed mmap), and the
# grammar tests (their subject is llguidance's code). Tests that
# write temporary files run (isolation off). See docs/design.md, "Soundness".
MIRI_SKIP = --skip discover:: --skip formats:: \
	--skip tokenizer::gguf::tests::special_ids_outside_the_vocabulary_are_ignored \
	--skip generate::grammar::
miri:
	MIRIFLAGS="$${MIRIFLAGS:--Zmiri-disable-isolation}" \
		cargo +nightly miri test -p hfms-engine --lib -- $(MIRI_SKIP)
