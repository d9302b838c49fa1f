#!/usr/bin/env bash
# The commands that do all the set-up on a fresh clone (see README):
#   ./run.sh main   the main job: the figure script on offline defaults
#   ./run.sh test   the test suite
#   ./run.sh lab    JupyterLab on notebooks/, with this project's kernel, on localhost only
#   ./run.sh docs   the documentation site, offline, into docs/_build/html (open docs/_build/html/index.html)
#   ./run.sh venv   only the set-up
# Each creates .venv in the repo root from requirements.lock (pinned) when it is missing or out of date.
#   DECONVNET_DRY_RUN=1 prints the command (one argument a line) instead of setting up and running it.
set -euo pipefail
caller=$PWD  # the user's paths in extra arguments are relative to where they typed the command
cd "$(dirname "$0")"
here=$PWD

ensure_venv() {
    [ -n "${DECONVNET_DRY_RUN:-}" ] && return
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

run() {
    if [ -n "${DECONVNET_DRY_RUN:-}" ]; then
        printf '%s\n' "$@"
        exit 0
    fi
    exec "$@"
}

# given PATTERN ARGS...: whether one of ARGS sets an option matching PATTERN (--name=value or --name value)
given() {
    local pattern=$1 arg
    shift
    for arg in "$@"; do
        [[ $arg =~ ^--($pattern)(=|$) ]] && return 0
    done
    return 1
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
    lab)
        ensure_venv
        # The server runs in .venv, so its default "python3" kernel is .venv's Python (ipykernel's own spec
        # from sys.executable). It listens on 127.0.0.1 only. The token stays on (anyone else on this machine
        # could otherwise run code as you), but the browser is opened with it and the URL printed below
        # carries it, so there is no login prompt. Settings for this .venv only (its overrides.json): open
        # notebooks with their kernel without asking, and no question about news feeds on first start.
        if [ -z "${DECONVNET_DRY_RUN:-}" ]; then
            mkdir -p .venv/share/jupyter/lab/settings
            cat > .venv/share/jupyter/lab/settings/overrides.json <<'JSON'
{
  "@jupyterlab/notebook-extension:tracker": {"autoStartDefaultKernel": true},
  "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": false}
}
JSON
        fi
        # Each default only where the user sets no value of their own: traitlets refuses an option given
        # twice ("root_dir only accepts one value, got 2"). The server runs in the user's directory, so a
        # relative --ServerApp.root_dir is relative to where they typed the command.
        opts=()
        given '(ServerApp\.)?ip' "$@" || opts+=(--ServerApp.ip=127.0.0.1)
        given 'ServerApp\.root_dir|ServerApp\.notebook_dir|NotebookApp\.notebook_dir|notebook-dir' "$@" \
            || opts+=("--ServerApp.root_dir=$here/notebooks")
        given 'LabApp\.news_url' "$@" || opts+=(--LabApp.news_url=None)
        given 'LabApp\.check_for_updates_class' "$@" || opts+=(--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate)
        # containers often run as root
        [ "$(id -u)" = 0 ] && ! given '(ServerApp\.)?allow_root|allow-root' "$@" && opts+=(--ServerApp.allow_root=True)
        cd "$caller"
        run "$here/.venv/bin/python" -m jupyter lab "${opts[@]}" "$@"
        ;;
    docs)
        ensure_venv
        # Warnings are errors (-W), all of them reported (--keep-going); -q prints only those. The pages of the
        # API, the command line and the tutorials are generated from the code (docs/_ext/deconvnet_docs.py).
        export DECONVNET_OFFLINE=1 MPLBACKEND=Agg
        run .venv/bin/python -m sphinx -W --keep-going -q -b html docs docs/_build/html "$@"
        ;;
    venv)
        ensure_venv
        ;;
    *)
        echo "usage: ./run.sh main|test|lab|docs|venv [extra arguments]" >&2
        exit 2
        ;;
esac
