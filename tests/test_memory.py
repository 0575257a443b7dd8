"""Memory contracts, measured as peak resident memory in a fresh subprocess (bench/memory.py).

- Inference (`layer(x)`) keeps no per-step activations of the whole sequence beyond y: its
  input projection runs in chunks of at most ~8 MiB, so the peak above the resident size
  just before the call stays within |y| + 24 MiB even when the gates of the whole sequence
  would be four times |y| (LSTM).
- Training (forward + backward) of LSTM T=100 B=64 I=H=512 peaks no higher than PyTorch's.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
from memory import measure  # noqa: E402


def _can_reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


needs_proc = pytest.mark.skipif(not sys.platform.startswith("linux") or not _can_reset_peak(),
                                reason="needs Linux /proc/self/clear_refs to reset the peak RSS")


@needs_proc
def test_inference_keeps_no_whole_sequence_activations():
    T, B, I, H = 2000, 16, 256, 256
    y_mib = T * B * H * 4 / 2**20            # 31.2 MiB
    peak = measure("fastrnn", "lstm", "inference", (T, B, I, H), 2)["first"]
    bound = y_mib + 24  # the ~8 MiB projection chunk plus allocator slack
    print(f"inference peak above base {peak:.1f} MiB; y {y_mib:.1f} MiB, bound {bound:.1f} MiB, "
          f"whole-sequence gates would be {4 * y_mib:.1f} MiB")
    assert peak <= bound


@needs_proc
def test_training_peak_memory_not_above_pytorch(torch):
    shape = (100, 64, 512, 512)
    ours = measure("fastrnn", "lstm", "training", shape, 2)["first"]
    theirs = measure("torch", "lstm", "training", shape, 2)["first"]
    print(f"LSTM {shape} forward+backward peak above base: fastrnn {ours:.1f} MiB, PyTorch {theirs:.1f} MiB")
    assert ours <= theirs


# ----------------------------------------------------------------------- large-buffer cache
# Kernel buffers of 64 KiB and more are kept for reuse after a call (cpp/src/buffer.cpp). Each
# check runs in a fresh interpreter: the cache is process-wide, and buffers held by other
# tests would change its counts.

_CACHE_SCRIPT = r"""
import json, sys
import numpy as np
import fastrnn as fr

def train_step(T, B, I, H, seed):
    rng = np.random.default_rng(seed)
    layer = fr.LSTM(I, H, dtype="float64", seed=seed)
    ref = fr.reference.LSTM(I, H, dtype="float64", seed=seed)
    ref.load_state_dict(layer.state_dict())
    x = rng.standard_normal((T, B, I))
    dy = rng.standard_normal((T, B, H))
    y, _, cache = layer.forward(x)
    dx, _ = layer.backward(cache, dy)
    del cache
    yr, _, cr = ref.forward(x)
    dxr, _ = ref.backward(cr, dy)
    worst = max(float(np.max(np.abs(y - yr))), float(np.max(np.abs(dx - dxr))),
                max(float(np.max(np.abs(layer.grads[k] - ref.grads[k]))) for k in layer.grads))
    return worst, fr.memory_stats()

out = {"steps": []}
for shape, seed in json.loads(sys.argv[1]):
    worst, st = train_step(*shape, seed)
    out["steps"].append({"shape": shape, "worst": worst, "stats": st})
out["released"] = fr.empty_cache()
out["after_release"] = fr.memory_stats()
print(json.dumps(out))
"""


def _run_cache_script(steps, env_extra=None):
    import json
    import subprocess

    env = dict(os.environ)
    env.pop("FASTRNN_BUFFER_CACHE", None)
    env.update(env_extra or {})
    res = subprocess.run([sys.executable, "-c", _CACHE_SCRIPT, json.dumps(steps)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


# float64 LSTM, T*B = 1024 rows: the gates cache and dG are (T*B, 4H) = 8 MiB at H=256 and
# 12 MiB at H=384, so every step below goes through the cache.
_SMALL, _BIG = [32, 32, 64, 256], [32, 32, 64, 384]


def test_buffer_cache_reuses_blocks_without_stale_data_and_stays_within_peak():
    # the same shape twice with different data (the second runs on the first's blocks), then
    # a larger shape (no cached block fits: blocks are evicted so the cache stays within the
    # peak), then the smaller one (it reuses cached blocks up to twice its size) and the
    # larger one again
    steps = [[_SMALL, 1], [_SMALL, 2], [_BIG, 3], [_SMALL, 4], [_BIG, 5]]
    out = _run_cache_script(steps)
    for s in out["steps"]:
        st = s["stats"]
        print(f"shape {s['shape']}: worst difference to the reference {s['worst']:.2e}; "
              f"cached {st['cached_bytes'] / 2**20:.0f} MiB, in use {st['in_use_bytes'] / 2**20:.0f} MiB, "
              f"peak {st['peak_bytes'] / 2**20:.0f} MiB")
        assert s["worst"] < 1e-9, f"shape {s['shape']}: results differ from the reference by {s['worst']:.3e}"
        assert st["enabled"]
        assert st["in_use_bytes"] == 0, "no kernel buffer may outlive the call that used it"
        assert st["cached_bytes"] > 0
        assert st["cached_bytes"] + st["in_use_bytes"] <= st["peak_bytes"]
    first, second = out["steps"][0]["stats"], out["steps"][1]["stats"]
    # a repeated shape reuses what it released: no fresh memory, the peak stays put (within
    # the first call, the backward may already reuse a block its forward released)
    assert first["allocated"] >= 2
    assert second["allocated"] == first["allocated"], "the repeated shape allocated fresh memory"
    assert second["reused"] - first["reused"] >= first["allocated"]
    assert second["cached_bytes"] == first["cached_bytes"] and second["peak_bytes"] == first["peak_bytes"]
    big, small_again, big_again = (s["stats"] for s in out["steps"][2:])
    # switching shapes reuses what fits and never raises the footprint past the peak
    assert small_again["reused"] > big["reused"] and big_again["reused"] > small_again["reused"]
    assert small_again["peak_bytes"] == big["peak_bytes"] == big_again["peak_bytes"]
    assert out["released"] == out["steps"][-1]["stats"]["cached_bytes"]
    assert out["after_release"]["cached_bytes"] == 0


def test_buffer_cache_can_be_turned_off():
    out = _run_cache_script([[_SMALL, 1], [_SMALL, 2]], {"FASTRNN_BUFFER_CACHE": "0"})
    for s in out["steps"]:
        assert s["worst"] < 1e-9
        assert not s["stats"]["enabled"]
        assert s["stats"]["cached_bytes"] == 0 and s["stats"]["in_use_bytes"] == 0
    assert out["released"] == 0


def test_buffer_cache_api_checks_its_argument():
    import fastrnn as fr

    with pytest.raises(TypeError, match="enabled"):
        fr.set_buffer_cache(1)
    st = fr.memory_stats()
    assert set(st) == {"cached_bytes", "in_use_bytes", "peak_bytes", "reused", "allocated", "enabled"}
    assert isinstance(fr.empty_cache(), int)
    assert fr.memory_stats()["cached_bytes"] == 0
    was = st["enabled"]
    try:
        fr.set_buffer_cache(False)
        assert fr.memory_stats()["enabled"] is False
        fr.set_buffer_cache(True)
        assert fr.memory_stats()["enabled"] is True
    finally:
        fr.set_buffer_cache(was)
