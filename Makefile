# Entry points, each sets everything up first (idempotent, fast when already done):
#   make run          - the main job: run the train-to-serve flow locally (compile.py run-local)
#   make test         - lint and the whole test suite (containers on the engine found)
#   make test-docker  - Debian's docker.io set up, then the docker subset of the container tests
#   make ci           - what CI runs (.ci/run): test with podman, then test-docker
VENV ?= .venv
PY := $(VENV)/bin/python

# The container tests that cover every docker code path in components/runners and
# components/imaging, in about 3 min (the whole container group under docker: 12 to 17 min):
#   runners/           detection (a BuildKit build with a secret), published ports behind
#                      docker-proxy, --cpus/--memory, cgroup usage, an OOM kill
#   imaging/test_local, imaging/test_serving_image
#                      the serving image built with the CA secret, a failing BuildKit step
#                      named, run as Vertex does: logs, SIGTERM stop, a read-only mount
#   server/test_grpc   the gRPC port published beside the HTTP port
#   contract/test_broken_images
#                      the contract check's liveness through docker-proxy, exec (the sockets a
#                      server listens on), crashed and exited containers' state
#   stand_ins/test_endpoints
#                      deployed models: restart policy, stop for good, attach and list by label
#                      from another process
DOCKER_TESTS ?= tests/runners tests/imaging/test_local.py tests/imaging/test_serving_image.py \
	tests/server/test_grpc.py tests/contract/test_broken_images.py tests/stand_ins/test_endpoints.py

.PHONY: setup run test test-docker ci
setup:
	bash scripts/setup.sh
	bash scripts/setup-container-engine.sh

run: setup
	$(PY) compile.py run-local

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

# The docker set-up prints the engine (the docker CLI that builds, as a path) and base image
# as export lines: pytest runs under exactly those.
test-docker: setup
	exports=$$(TRAIN_TO_SERVE_ENGINE_SETUP=docker bash scripts/setup-container-engine.sh) && \
		eval "$$exports" && $(PY) -m pytest -m container $(DOCKER_TESTS)

ci:
	TRAIN_TO_SERVE_CONTAINER_ENGINE=podman $(MAKE) test
	$(MAKE) test-docker
