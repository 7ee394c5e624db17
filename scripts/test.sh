#!/usr/bin/env bash
# The test command of the README: installs the real SMTP peers the integration tests talk to
# (Postfix's smtp-sink/smtp-source, swaks, aiosmtpd in a venv), then runs every test of the
# workspace with every runtime binding compiled in.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test-deps.sh
cargo test --workspace --all-features "$@"
