#!/usr/bin/env bash
# Installs what the integration tests in tests/ need on a fresh Debian machine, idempotently:
#   - Postfix's smtp-sink and smtp-source (package postfix), without its daemon running;
#   - swaks;
#   - a Python venv with aiosmtpd at $XSHADOW_PEERS_VENV (default: target/peers-venv).
# Safe to run again: it installs only what is missing and leaves nothing running.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${XSHADOW_PEERS_VENV:-$PWD/target/peers-venv}"

have_debs() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || return 1
  done
}

if ! have_debs postfix swaks || [ ! -x /usr/sbin/smtp-sink ] || [ ! -x /usr/sbin/smtp-source ]; then
  echo "test-deps: installing postfix (tools only) and swaks"
  export DEBIAN_FRONTEND=noninteractive
  # No configuration: the package installs, its daemon is neither configured nor started.
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  echo "postfix postfix/mailname string localhost" | debconf-set-selections
  # Keep maintainer scripts from starting services (policy-rc.d, see invoke-rc.d(8)).
  policy=/usr/sbin/policy-rc.d
  made_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    made_policy=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends postfix swaks >/dev/null
  if [ "$made_policy" = 1 ]; then rm -f "$policy"; fi
fi

# No Postfix daemon may be left running (it would hold port 25 and is not ours to run).
if pgrep -f '/usr/lib/postfix/sbin/master' >/dev/null 2>&1; then
  echo "test-deps: stopping the postfix daemon the package started"
  postfix stop >/dev/null 2>&1 || true
  sleep 1
  for pid in $(pgrep -f '/usr/lib/postfix/sbin/master' || true); do kill "$pid" 2>/dev/null || true; done
fi
if pgrep -f '/usr/lib/postfix/sbin/master' >/dev/null 2>&1; then
  echo "test-deps: a postfix master is still running" >&2
  exit 1
fi

test -x /usr/sbin/smtp-sink && test -x /usr/sbin/smtp-source && command -v swaks >/dev/null

# aiosmtpd in its own venv (no system pip changes).
if ! "$VENV/bin/python" -c 'import aiosmtpd' >/dev/null 2>&1; then
  echo "test-deps: creating $VENV with aiosmtpd"
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    # Debian's python3 needs python3-venv for ensurepip; the rustup image's pyenv python has it.
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
    rm -rf "$VENV"
    python3 -m venv "$VENV"
  fi
  "$VENV/bin/pip" install -q --disable-pip-version-check 'aiosmtpd>=1.4,<2'
fi
"$VENV/bin/python" -c 'import aiosmtpd; print("test-deps: aiosmtpd", aiosmtpd.__version__)'
echo "test-deps: smtp-sink, smtp-source, swaks $(swaks --version 2>/dev/null | head -1 | awk '{print $NF}'), venv $VENV ready"
