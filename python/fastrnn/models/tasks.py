"""Built-in synthetic sequence-to-sequence tasks for ``fastrnn.models.Seq2Seq``.

A task maps a source string of digits to a target string of digits:

- ``"reverse"``: "3141592" -> "2951413"
- ``"sort"``:    "3141592" -> "1123459"

Token ids (shared by source and target): 0 = <pad>, 1 = <bos>, 2 = <eos>, 3 + d = digit d.
Lengths are drawn uniformly from [min_len, max_len] (default 5-20).

Batches are padded, time-major arrays with explicit lengths::

    src (S, B) int, src_lengths (B,)             S = longest source in the batch
    tgt_in (T, B) int  = <bos> y_1 ... y_n        T = longest target + 1
    tgt_out (T, B) int = y_1 ... y_n <eos>
    tgt_lengths (B,) = n + 1

Two held-out sets of sources are drawn from their own fixed seed: ``valid`` (for early
stopping) and ``test`` (for the final report). Training sources that coincide with a held-out
source are redrawn, so held-out accuracy is measured on sources never trained on.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PAD", "BOS", "EOS", "DigitTask", "TASKS", "encode_digits", "decode_digits"]

PAD, BOS, EOS = 0, 1, 2
_OFFSET = 3
VOCAB_SIZE = _OFFSET + 10
TASKS = ("reverse", "sort")


def encode_digits(text: str) -> np.ndarray:
    """'0371' -> ids; ValueError on anything but the digits 0-9 (spaces are ignored)."""
    text = "".join(text.split())
    bad = [c for c in text if c not in "0123456789"]
    if bad:
        raise ValueError(f"input: expected only the digits 0-9, got {bad[0]!r} in {text!r}")
    return np.frombuffer(text.encode("ascii"), dtype=np.uint8).astype(np.int64) - 48 + _OFFSET


def decode_digits(ids) -> str:
    """ids -> '0371', stopping at the first <eos> and skipping <pad>/<bos>."""
    out = []
    for i in np.asarray(ids).tolist():
        if i == EOS:
            break
        if i >= _OFFSET:
            out.append(chr(48 + i - _OFFSET))
    return "".join(out)


class DigitTask:
    """``DigitTask(name="reverse", min_len=5, max_len=20, valid_size=1000, test_size=2000, heldout_seed=12345)``"""

    vocab_size = VOCAB_SIZE

    def __init__(self, name: str = "reverse", min_len: int = 5, max_len: int = 20,
                 valid_size: int = 1000, test_size: int = 2000, heldout_seed: int = 12345):
        if name not in TASKS:
            raise ValueError(f"task: expected one of {TASKS}, got {name!r}")
        if not (isinstance(min_len, int) and isinstance(max_len, int) and 1 <= min_len <= max_len):
            raise ValueError(f"min_len, max_len: expected 1 <= min_len <= max_len, got {min_len}, {max_len}")
        self.name, self.min_len, self.max_len = name, min_len, max_len
        rng = np.random.default_rng(heldout_seed)
        self.valid = [self._draw_source(rng) for _ in range(valid_size)]
        self.test = [self._draw_source(rng) for _ in range(test_size)]
        self._heldout_keys = {s.tobytes() for s in self.valid + self.test}

    def config(self) -> dict:
        return {"task": self.name, "min_len": self.min_len, "max_len": self.max_len}

    def _draw_source(self, rng) -> np.ndarray:
        n = int(rng.integers(self.min_len, self.max_len + 1))
        return rng.integers(0, 10, size=n).astype(np.int64) + _OFFSET

    def target(self, src: np.ndarray) -> np.ndarray:
        """The target ids (without <eos>) for one source."""
        return src[::-1].copy() if self.name == "reverse" else np.sort(src)

    def sample_sources(self, rng, batch: int) -> list:
        """``batch`` training sources, none of them in the held-out set."""
        out = []
        while len(out) < batch:
            s = self._draw_source(rng)
            if s.tobytes() not in self._heldout_keys:
                out.append(s)
        return out

    def make_batch(self, sources) -> dict:
        """Pad a list of source id arrays into a time-major batch (see the module docstring)."""
        targets = [self.target(s) for s in sources]
        B = len(sources)
        src_len = np.array([len(s) for s in sources], dtype=np.int64)
        tgt_len = np.array([len(t) + 1 for t in targets], dtype=np.int64)
        S, T = int(src_len.max()), int(tgt_len.max())
        src = np.full((S, B), PAD, dtype=np.int64)
        tgt_in = np.full((T, B), PAD, dtype=np.int64)
        tgt_out = np.full((T, B), PAD, dtype=np.int64)
        for b, (s, t) in enumerate(zip(sources, targets)):
            src[:len(s), b] = s
            tgt_in[0, b] = BOS
            tgt_in[1:len(t) + 1, b] = t
            tgt_out[:len(t), b] = t
            tgt_out[len(t), b] = EOS
        return {"src": src, "src_lengths": src_len, "tgt_in": tgt_in, "tgt_out": tgt_out,
                "tgt_lengths": tgt_len}

    def sample_batch(self, rng, batch: int) -> dict:
        return self.make_batch(self.sample_sources(rng, batch))
