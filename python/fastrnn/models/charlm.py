"""Character-level language model: embedding -> multi-layer LSTM/GRU -> linear.

    vocab = Vocab.from_text(text)
    model = CharLM(vocab, embed_size=64, hidden_size=512, num_layers=1, cell="lstm")
    streams = TextStreams(vocab.encode(train_text), batch_size=64, seq_len=128, rng=rng)
    opt = fastrnn.optim.Adam(model.params, lr=2e-3)
    state = None
    for step in range(n):
        x, y, new_epoch = streams.next_batch()           # (T, B) ints, y = x shifted by one
        if new_epoch:
            state = None
        loss, state = model.forward_backward(x, y, state)  # truncated BPTT: state carried over
        clip_grad_norm(model.grads, 5.0); opt.step(model.grads); model.zero_grad()
    val = model.evaluate(vocab.encode(val_text))          # mean nats/char
    text = model.generate("ROMEO:", 200, temperature=0.8, seed=0)

Truncated BPTT: each chunk of T characters goes through the recurrent layer in ONE
``forward``/``backward`` call (the C++ kernel runs the time loop); the final state of a chunk is
the initial state of the next chunk of the same stream (its value only: no gradient flows
across the chunk boundary). The output Linear runs once over all T*B positions.

``model.params`` / ``model.grads`` are flat dicts ("embed.weight", "rnn.weight_ih_l0", ...,
"head.weight", "head.bias") whose arrays ARE the layers' arrays, so an optimizer built on
``model.params`` updates the layers in place.
"""
from __future__ import annotations

import json

import numpy as np

from ..layers.basic import Dropout, Embedding, Linear
from ..losses import cross_entropy
from ._backend import child_seeds, layer_classes

__all__ = ["Vocab", "CharLM", "TextStreams"]


class Vocab:
    """The characters (Unicode code points) of a text, sorted, each with an id."""

    def __init__(self, chars):
        chars = "".join(chars)
        if len(set(chars)) != len(chars) or not chars:
            raise ValueError("chars: expected a non-empty string of distinct characters")
        self.chars = "".join(sorted(chars))
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        codes = np.unique(_codepoints(text))
        if codes.size == 0:
            raise ValueError("text: expected a non-empty text")
        return cls("".join(map(chr, codes.tolist())))

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} chars)"

    def encode(self, text: str) -> np.ndarray:
        """text -> int32 ids (ValueError naming the first character not in the vocabulary)."""
        codes = _codepoints(text)
        idx = np.searchsorted(self._codes, codes)
        idx_c = np.minimum(idx, len(self._codes) - 1)
        bad = self._codes[idx_c] != codes
        if bad.any():
            c = chr(int(codes[np.flatnonzero(bad)[0]]))
            raise ValueError(f"text: character {c!r} is not in the model's vocabulary")
        return idx_c.astype(np.int32)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in np.asarray(ids).reshape(-1).tolist())

    def to_json(self) -> str:
        return json.dumps(self.chars)

    @classmethod
    def from_json(cls, text: str) -> "Vocab":
        return cls(json.loads(text))


def _codepoints(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)


class CharLM:
    """``CharLM(vocab, embed_size=64, hidden_size=512, num_layers=1, cell="lstm", dropout=0.0,
    dtype="float32", seed=0, backend="fastrnn")``

    vocab: a Vocab (or a string of its characters). cell: "lstm" or "gru". dropout: applied
    between recurrent layers and to the recurrent output before the linear head (training
    only). backend: "fastrnn" (C++ kernels) or "reference" (NumPy, e.g. float64 gradchecks).
    """

    def __init__(self, vocab, embed_size=64, hidden_size=512, num_layers=1, cell="lstm", dropout=0.0,
                 dtype="float32", seed=0, backend="fastrnn"):
        self.vocab = vocab if isinstance(vocab, Vocab) else Vocab(vocab)
        if cell not in ("lstm", "gru"):
            raise ValueError(f"cell: expected 'lstm' or 'gru', got {cell!r}")
        self.cell = cell
        self.embed_size, self.hidden_size, self.num_layers = int(embed_size), int(hidden_size), int(num_layers)
        self.dropout, self.seed, self.backend = float(dropout), seed, backend
        V = len(self.vocab)
        L = layer_classes(backend)
        s = child_seeds(seed, 4)
        self.embed = Embedding(V, self.embed_size, dtype=dtype, seed=s[0])
        rnn_cls = L.LSTM if cell == "lstm" else L.GRU
        self.rnn = rnn_cls(self.embed_size, self.hidden_size, num_layers=self.num_layers, dropout=self.dropout,
                           dtype=dtype, seed=s[1])
        self.head = Linear(self.hidden_size, V, dtype=dtype, seed=s[2])
        self.drop = Dropout(self.dropout, seed=s[3]) if self.dropout > 0 else None
        self.dtype = self.head.dtype
        self.params, self.grads = {}, {}
        for prefix, layer in (("embed", self.embed), ("rnn", self.rnn), ("head", self.head)):
            for k in layer.params:
                self.params[f"{prefix}.{k}"] = layer.params[k]
                self.grads[f"{prefix}.{k}"] = layer.grads[k]

    def config(self) -> dict:
        """The constructor arguments (except vocab): ``CharLM(vocab, **model.config())``."""
        return {"embed_size": self.embed_size, "hidden_size": self.hidden_size, "num_layers": self.num_layers,
                "cell": self.cell, "dropout": self.dropout, "dtype": self.dtype.name}

    def __repr__(self) -> str:
        n = sum(p.size for p in self.params.values())
        return (f"CharLM(vocab={len(self.vocab)}, embed={self.embed_size}, {self.cell} {self.num_layers}x"
                f"{self.hidden_size}, dropout={self.dropout}, {n} params)")

    def rngs(self) -> dict:
        """The random generators training draws from (dropout masks), for checkpoints."""
        out = {"rnn": self.rnn._rng}
        if self.drop is not None:
            out["drop"] = self.drop._rng
        return out

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g[...] = 0

    # ------------------------------------------------------------------ forward / backward
    def forward(self, idx, state=None):
        """Training forward. idx (T, B) ints -> (logits (T, B, V), state_n, cache)."""
        emb, ec = self.embed.forward(idx)
        h, state_n, rc = self.rnn.forward(emb, state)
        dc = None
        if self.drop is not None:
            h, dc = self.drop.forward(h)
        logits, hc = self.head.forward(h)
        return logits, state_n, (ec, rc, dc, hc)

    def backward(self, cache, dlogits, dstate=None):
        """Adds into self.grads; returns the gradient of the initial state."""
        ec, rc, dc, hc = cache
        dh = self.head.backward(hc, dlogits)
        if dc is not None:
            dh = self.drop.backward(dc, dh)
        demb, dstate0 = self.rnn.backward(rc, dh, dstate)
        self.embed.backward(ec, demb)
        return dstate0

    def __call__(self, idx, state=None):
        """Inference: idx (T, B) ints -> (logits (T, B, V), state_n)."""
        h, state_n = self.rnn(self.embed(idx), state)
        return self.head(h), state_n

    def forward_backward(self, x, y, state=None):
        """One truncated-BPTT chunk: mean cross-entropy of predicting y from x (both (T, B)),
        gradients ADDED into self.grads. Returns (loss in nats/char, final state)."""
        logits, state_n, cache = self.forward(x, state)
        loss, dlogits = cross_entropy(logits, y)
        self.backward(cache, dlogits)
        return loss, state_n

    # ------------------------------------------------------------------ evaluation / sampling
    def evaluate(self, ids, batch_size=32, seq_len=256) -> float:
        """Mean nats/char of predicting ids[1:] from ids[:-1], the text split into batch_size
        contiguous streams read chunk by chunk with the state carried (the tail that does not
        fill a stream is dropped). Inference only (no dropout)."""
        ids = np.asarray(ids)
        n = (ids.size - 1) // batch_size
        if n < 1:
            batch_size, n = 1, ids.size - 1
        if n < 1:
            raise ValueError(f"ids: expected at least 2 characters, got {ids.size}")
        x_all = ids[: batch_size * n].reshape(batch_size, n).T
        y_all = ids[1: batch_size * n + 1].reshape(batch_size, n).T
        total, count, state = 0.0, 0, None
        for t0 in range(0, n, seq_len):
            logits, state = self(x_all[t0:t0 + seq_len], state)
            loss, _ = cross_entropy(logits, y_all[t0:t0 + seq_len], reduction="sum")
            total += loss
            count += logits.shape[0] * logits.shape[1]
        return total / count

    def generate(self, prefix: str = "", n: int = 200, temperature: float = 1.0, seed=None) -> str:
        """Sample n characters following ``prefix`` (returned without the prefix).

        The prefix is read in one call; an empty prefix starts from "\\n" (or the first
        character of the vocabulary). temperature 0 means greedy (argmax); seed makes the
        sample reproducible.
        """
        if n < 0:
            raise ValueError(f"n: expected a non-negative integer, got {n}")
        if temperature < 0:
            raise ValueError(f"temperature: expected >= 0, got {temperature}")
        rng = np.random.default_rng(seed)
        if prefix:
            ids = self.vocab.encode(prefix)
        else:
            ids = np.array([self.vocab.chars.find("\n") if "\n" in self.vocab.chars else 0], dtype=np.int32)
        logits, state = self(ids[:, None])
        last = logits[-1, 0].astype(np.float64)
        out = np.empty(n, dtype=np.int32)
        step_in = np.empty((1, 1), dtype=np.int32)
        for i in range(n):
            if temperature == 0:
                nxt = int(np.argmax(last))
            else:
                z = last / temperature
                p = np.exp(z - z.max())
                c = np.cumsum(p)
                nxt = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
                nxt = min(nxt, len(c) - 1)
            out[i] = nxt
            if i + 1 < n:
                step_in[0, 0] = nxt
                logits, state = self(step_in, state)
                last = logits[0, 0].astype(np.float64)
        return self.vocab.decode(out)


class TextStreams:
    """Batches for truncated BPTT: the ids split into ``batch_size`` contiguous streams, read
    ``seq_len`` characters at a time, so chunk k+1 of stream b continues chunk k.

    Each epoch starts at a random offset in [0, seq_len) (drawn from ``rng``) so chunk
    boundaries move between epochs; ``next_batch()`` returns (x, y, new_epoch) with x, y
    (seq_len, batch_size) and new_epoch True for the first chunk of an epoch (reset the state
    then). ``position()``/``set_position()`` save and restore where it is (checkpoints).
    """

    def __init__(self, ids, batch_size: int, seq_len: int, rng):
        self.ids = np.asarray(ids)
        self.batch_size, self.seq_len, self.rng = int(batch_size), int(seq_len), rng
        if (self.ids.size - self.seq_len) // self.batch_size < 2 * self.seq_len:
            raise ValueError(f"text: {self.ids.size} characters are too few for batch_size {self.batch_size} "
                             f"x seq_len {self.seq_len} (need at least {self.batch_size * 2 * self.seq_len + self.seq_len})")
        self.epoch, self.chunk, self.offset = 0, 0, 0
        self._layout()

    def _layout(self):
        usable = self.ids.size - 1 - self.offset
        self.stream_len = usable // self.batch_size
        self.chunks_per_epoch = self.stream_len // self.seq_len
        n = self.stream_len * self.batch_size
        self._x = self.ids[self.offset: self.offset + n].reshape(self.batch_size, self.stream_len)
        self._y = self.ids[self.offset + 1: self.offset + n + 1].reshape(self.batch_size, self.stream_len)

    def next_batch(self):
        if self.chunk >= self.chunks_per_epoch:
            self.epoch += 1
            self.chunk = 0
        new_epoch = self.chunk == 0
        if new_epoch:
            self.offset = int(self.rng.integers(0, self.seq_len)) if self.epoch > 0 else 0
            self._layout()
        t0 = self.chunk * self.seq_len
        x = np.ascontiguousarray(self._x[:, t0:t0 + self.seq_len].T)
        y = np.ascontiguousarray(self._y[:, t0:t0 + self.seq_len].T)
        self.chunk += 1
        return x, y, new_epoch

    def position(self) -> dict:
        return {"epoch": self.epoch, "chunk": self.chunk, "offset": self.offset}

    def set_position(self, pos: dict) -> None:
        self.epoch, self.chunk, self.offset = int(pos["epoch"]), int(pos["chunk"]), int(pos["offset"])
        self._layout()
