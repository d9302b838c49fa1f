"""The shared checks: one positive-integer check (its one message), one fingerprint."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from deconvnet.checks import digest_bytes, fingerprint, positive_int


@pytest.mark.parametrize("value", [1, 7, np.int64(3), torch.tensor(4)])
def test_positive_ints_pass_as_ints(value):
    out = positive_int("k", value)
    assert out == int(value) and type(out) is int


@pytest.mark.parametrize("value", [0, -2, 1.5, 2.0, "3", True, None, [1]])
def test_others_are_refused_naming_the_value_and_the_fix(value):
    with pytest.raises(ValueError) as err:
        positive_int("--features", value, hint="e.g. --features 8")
    assert str(err.value) == f"--features must be a positive integer, got {value!r}. Hint: e.g. --features 8"


def test_minimum_and_none():
    assert positive_int("padding", 0, minimum=0) == 0
    assert positive_int("per_group", None, allow_none=True) is None
    with pytest.raises(ValueError, match="non-negative integer, got -1"):
        positive_int("padding", -1, minimum=0)
    with pytest.raises(ValueError, match="integer of at least 2 or None, got 1"):
        positive_int("n", 1, minimum=2, allow_none=True)


def test_fingerprint_is_sha256_of_canonical_json():
    obj = {"b": [1, 2], "a": {"z": 1.5, "y": None}}
    full = hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()
    assert fingerprint(obj, 64) == full and fingerprint(obj) == full[:16] and fingerprint(obj, 12) == full[:12]
    assert fingerprint({"a": {"y": None, "z": 1.5}, "b": [1, 2]}) == fingerprint(obj)  # key order does not matter
    assert fingerprint({"p": object.__name__}) != fingerprint({"p": "other"})
    assert digest_bytes(b"abc") == hashlib.sha256(b"abc").hexdigest()
