#!/usr/bin/env bash
# Install everything, then run every check and every test (unit, contract,
# component and system tests through real libvirtd and QEMU guests).
# Extra arguments go to pytest, e.g. tools/test.sh -m "not system".
set -euo pipefail
cd "$(dirname "$0")/.."

image=$(bash tools/install.sh | tail -n 1)
export MINICLOUD_TEST_IMAGE="$image"
echo "guest image: $image"

echo "== generated protobuf modules are current"
.venv/bin/python tools/gen_protos.py --check
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy common controlplane nodeagent guestagent client gateway tests tools
echo "== import contracts"
.venv/bin/lint-imports
echo "== pytest"
.venv/bin/pytest -ra "$@"
