#!/usr/bin/env bash
# The two commands that do all the set-up on a fresh clone (see README):
#   ./run.sh main   the main job: the figure script on offline defaults
#   ./run.sh test   the test suite
# Both create .venv in the repo root from requirements.lock (pinned) when it is missing or out of date.
set -euo pipefail
cd "$(dirname "$0")"

ensure_venv() {
    local want
    want=$(cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)
    if [ -x .venv/bin/python ] && [ "$(cat .venv/.deconvnet-installed 2>/dev/null)" = "$want" ]; then
        return
    fi
    local py
    py=$(command -v python3.11 || command -v python3)
    echo "run.sh: setting up .venv with $($py --version) and the pinned versions of requirements.lock ..." >&2
    [ -x .venv/bin/python ] || "$py" -m venv .venv
    .venv/bin/python -m pip install --quiet --no-deps -r requirements.lock
    .venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e .
    echo "$want" > .venv/.deconvnet-installed
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    main)
        ensure_venv
        exec .venv/bin/python -m deconvnet figures --weights auto --out figures "$@"
        ;;
    test)
        ensure_venv
        exec .venv/bin/python -m pytest "$@"
        ;;
    venv)
        ensure_venv
        ;;
    *)
        echo "usage: ./run.sh main|test|venv [extra arguments]" >&2
        exit 2
        ;;
esac
