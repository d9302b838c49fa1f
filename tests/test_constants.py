"""The named defaults: one value, read by the models and the command line alike."""

from __future__ import annotations

import subprocess
import sys

from deconvnet.constants import DEFAULT_SIZE


def test_the_models_and_the_command_line_share_the_default_size():
    from deconvnet.cli import build_parser
    from deconvnet.models.net import DEFAULT_SIZE as models_size

    assert DEFAULT_SIZE == models_size == 224
    parser = build_parser()
    assert parser.parse_args(["project", "chelsea", "--out", "x.png"]).size == DEFAULT_SIZE
    assert parser.parse_args(["layers"]).size == DEFAULT_SIZE
    for command in ("figures", "atlas"):
        assert parser.parse_args([command]).crop == DEFAULT_SIZE


def test_the_constants_import_nothing_heavy():
    """The command line reads them for ``--help``, before torch."""
    r = subprocess.run([sys.executable, "-c", "import sys, deconvnet.constants; print([m for m in ('torch', 'numpy') "
                        "if m in sys.modules])"], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "[]", r.stderr[-300:]
