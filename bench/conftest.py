"""pytest-benchmark suites (not part of the default test run: pyproject's testpaths is tests/).

Run:  python -m pytest bench/ --benchmark-min-rounds=3
      python -m pytest bench/test_bench_recurrent.py -k "T100-B1-I128-H128 or T50-B32-I256-H256 or cell_step" \
          --benchmark-min-rounds=3          # the two smallest recurrent shapes and the cell steps
Each benchmark sets benchmark.group to one (op, mode, shape), so the backends (fastrnn,
reference, torch) are listed side by side; save runs with --benchmark-autosave or
--benchmark-json and compare with --benchmark-compare. Shapes: bench/bench_grid.json, a copy
of /work/shared/bench_grid.json (keep them identical). The `torch` fixture below is shared by
every suite here.
"""
import pytest


@pytest.fixture(scope="session")
def torch():
    """PyTorch CPU when installed (else the torch benchmarks are skipped), using fastrnn's
    thread count so both libraries get the same cores."""
    try:
        import torch as _torch
    except ImportError:
        pytest.skip("torch not installed")
    import fastrnn as fr

    _torch.set_num_threads(fr.get_num_threads())
    return _torch
