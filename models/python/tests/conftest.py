"""Fixtures shared by the moshid_mimi tests: the committed Mimi references.

The references (models/tests/fixtures/mimi, made by gen_mimi.py from PyPI `moshi` 0.2.13) are
read with a small safetensors reader so the tests need only numpy and pytest.
"""
import json
import pathlib
import struct

import numpy as np
import pytest

FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "mimi"
WEIGHTS = FIXTURES / "mimi_small.safetensors"
CONFIG = FIXTURES / "mimi_config.json"

_DTYPES = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U32": np.uint32}


def read_safetensors(path):
    """name -> numpy array for a safetensors file (little-endian dtypes only)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        data = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=_DTYPES[t["dtype"]])
        out[name] = data.reshape(t["shape"])
    return out


@pytest.fixture(scope="session")
def reference():
    """pcm [N], codes [T, 32], gap [T, 32], decoded32 / decoded8 [N]."""
    return read_safetensors(FIXTURES / "reference.safetensors")


@pytest.fixture(scope="session")
def tokenizer_factory():
    import moshid_mimi

    def make(num_codebooks=8, cls=moshid_mimi.Tokenizer, **kw):
        return cls(str(WEIGHTS), num_codebooks=num_codebooks, config=str(CONFIG), **kw)

    return make
