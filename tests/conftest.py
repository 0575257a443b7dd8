import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/helpers.py

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def torch():
    """PyTorch (CPU, float64 autograd) for parity tests.

    Locally a missing torch skips these tests; under CI=true it is an error, because CI
    installs the `test` extra and the parity tests must run there.
    """
    try:
        import torch as _torch
    except ImportError:
        if IN_CI:
            pytest.fail("torch is not installed but CI=true: parity tests must run in CI")
        pytest.skip("torch not installed (pip install '.[test]')")
    _torch.set_num_threads(1)
    return _torch
