#!/usr/bin/env bash
# A newcomer's first run, checked: `pip install` the checkout into a fresh venv on the oldest
# and the newest supported Python, then, from a folder of their own outside the repo that
# holds a tiny app and its rr.ini, run `minirr --help` and serve the app with `minirr serve`
# and with `python -m minirr serve`.
#
# Owns: venvs and the app folder under $TOOLS (made fresh, removed at exit), and the
#       servers it starts (stopped by pid; a leftover worker fails the check).
# Never: installs into the repo's Pythons or relies on the repo being on sys.path.
#
# Exits non-zero, naming the step, when any step fails.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
TOOLS="${MINIRR_TOOLS:-/tmp/minirr-tools}"
READY_TIMEOUT_S=30          # the ready line: interpreter start, bind, fork, the app's bootstrap
EXIT_TIMEOUT_S=30           # a graceful stop with no request in flight
mkdir -p "$TOOLS"

APP_DIR=""
SERVER_PID=""
WORKER_PIDS=""
VENVS=()

fail() {
    echo "install-check: FAILED: $*" >&2
    exit 1
}

children_of() {
    # Direct children of pid $1, read from /proc/PID/stat ("pid (comm) state ppid ...").
    local parent="$1" stat rest
    for stat in /proc/[0-9]*/stat; do
        { read -r rest <"$stat"; } 2>/dev/null || continue
        rest="${rest##*) }"                 # "state ppid ..." (comm may hold spaces)
        set -- $rest
        if [ "${2:-}" = "$parent" ] && [ "$1" != "Z" ]; then
            stat="${stat#/proc/}"
            echo "${stat%/stat}"
        fi
    done
}

alive() {
    # A pid that exists and is not a zombie.
    local rest
    { read -r rest <"/proc/$1/stat"; } 2>/dev/null || return 1
    rest="${rest##*) }"
    [ "${rest%% *}" != "Z" ]
}

cleanup() {
    local pid
    for pid in $SERVER_PID $WORKER_PIDS; do
        if alive "$pid"; then
            echo "install-check: killing leftover process $pid" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [ -n "$APP_DIR" ]; then rm -rf "$APP_DIR"; fi
    for venv in "${VENVS[@]+"${VENVS[@]}"}"; do rm -rf "$venv"; done
}
trap cleanup EXIT

make_app() {
    APP_DIR="$(mktemp -d "$TOOLS/first-app.XXXXXX")"
    cat >"$APP_DIR/myapp.py" <<'PY'
from minirr import Request, Response


def create_app():
    greeting = b"Hello from myapp"

    def handle(request: Request) -> Response:
        return Response(200, {"Content-Type": "text/plain"}, greeting)
    return handle
PY
    cat >"$APP_DIR/rr.ini" <<'INI'
[server]
app = myapp:create_app
factory = true

[http]
address = 127.0.0.1:0

[pool]
num_workers = 1

[rpc]
listen = unix:minirr.sock
INI
}

# serve_once LABEL PYTHON COMMAND...: start COMMAND in $APP_DIR, wait for its ready line,
# fetch / and check the body, SIGTERM it, check exit status 0 and that no worker outlives it.
serve_once() {
    local label="$1" python="$2"
    shift 2
    local out="$APP_DIR/$label.out" err="$APP_DIR/$label.err" url="" status=0 deadline body pid
    rm -f "$APP_DIR/minirr.sock"
    (cd "$APP_DIR" && exec env -u PYTHONPATH -u VAULT_HOST "$@" >"$out" 2>"$err") &
    SERVER_PID=$!
    deadline=$((SECONDS + READY_TIMEOUT_S))
    while [ -z "$url" ]; do
        url="$(sed -n 's|^minirr listening on \(http://[0-9.]*:[0-9]*\)$|\1|p' "$out" | head -n 1)"
        [ -n "$url" ] && break
        alive "$SERVER_PID" || fail "$label: exited before its ready line:"$'\n'"$(tail -n 20 "$err")"
        [ "$SECONDS" -lt "$deadline" ] || fail "$label: no 'minirr listening on' line within ${READY_TIMEOUT_S}s:"$'\n'"$(tail -n 20 "$err")"
        sleep 0.1   # a poll interval, not a wait for time to pass
    done
    WORKER_PIDS="$(children_of "$SERVER_PID")"
    [ -n "$WORKER_PIDS" ] || fail "$label: ready at $url but no worker process is running"
    [ -S "$APP_DIR/minirr.sock" ] || fail "$label: no control socket at $APP_DIR/minirr.sock ([rpc] listen)"
    body="$("$python" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$url/")" \
        || fail "$label: GET $url/ failed"
    [ "$body" = "Hello from myapp" ] || fail "$label: GET $url/ answered '$body', expected 'Hello from myapp'"

    kill -TERM "$SERVER_PID"
    deadline=$((SECONDS + EXIT_TIMEOUT_S))
    while alive "$SERVER_PID"; do
        [ "$SECONDS" -lt "$deadline" ] || fail "$label: still running ${EXIT_TIMEOUT_S}s after SIGTERM"
        sleep 0.1   # a poll interval
    done
    wait "$SERVER_PID" || status=$?
    [ "$status" -eq 0 ] || fail "$label: exit status $status after SIGTERM, expected 0:"$'\n'"$(tail -n 20 "$err")"
    for pid in $WORKER_PIDS; do
        if alive "$pid"; then fail "$label: worker $pid outlived the master"; fi
    done
    SERVER_PID=""
    WORKER_PIDS=""
    echo "install-check: $label: ready at $url, GET / ok, SIGTERM -> exit 0"
}

check_python() {
    local python="$1" venv version where
    version="$("$python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    venv="$TOOLS/install-check-py$version"
    rm -rf "$venv"
    VENVS+=("$venv")
    "$python" -m venv "$venv" || fail "python $version: could not create the venv $venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check "$REPO" \
        || fail "python $version: \`pip install\` of $REPO failed"
    where="$(cd "$APP_DIR" && env -u PYTHONPATH "$venv/bin/python" -c 'import minirr; print(minirr.__file__)')"
    case "$where" in
        "$venv"/*) ;;
        *) fail "python $version: the venv imports minirr from $where, not from its own site-packages" ;;
    esac
    (cd "$APP_DIR" && env -u PYTHONPATH "$venv/bin/minirr" --help | grep -q serve) \
        || fail "python $version: \`minirr --help\` failed or does not mention serve"
    echo "install-check: python $version ($("$venv/bin/pip" --version | cut -d' ' -f1-2)): installed, minirr --help ok"
    serve_once "py$version-minirr-serve" "$venv/bin/python" "$venv/bin/minirr" serve
    serve_once "py$version-python-m-minirr-serve" "$venv/bin/python" "$venv/bin/python" -m minirr serve
}

pyenv_python() {
    # The newest pyenv Python $1.x (e.g. 3.9 -> .../versions/3.9.18/bin/python3), or nothing.
    local root
    root="$(pyenv root 2>/dev/null)" || return 0
    ls -d "$root"/versions/"$1".*/bin/python3 2>/dev/null | sort -V | tail -n 1
}

make_app
checked=0
for version in 3.9 3.13; do
    python="$(pyenv_python "$version")"
    if [ -z "$python" ]; then
        echo "install-check: no Python $version from pyenv here; skipped it"
        continue
    fi
    check_python "$python"
    checked=$((checked + 1))
done
if [ "$checked" -eq 0 ]; then
    check_python "$(command -v python3)"
fi
echo "install-check: passed"
