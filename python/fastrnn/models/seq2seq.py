"""Sequence-to-sequence model with additive (Bahdanau) attention.

    model = Seq2Seq(vocab_size=13, embed_size=32, hidden_size=128, decoder_size=256,
                    attention_size=128, cell="gru")
    batch = task.sample_batch(rng, 64)                    # see fastrnn.models.tasks
    loss = model.forward_backward(batch["src"], batch["src_lengths"], batch["tgt_in"],
                                  batch["tgt_out"], batch["tgt_lengths"])   # adds into model.grads
    tokens = model.greedy_decode(batch["src"], batch["src_lengths"], max_len=25)   # (T, B)

Architecture (shapes: S source steps, T target steps, B batch, E embed, H encoder hidden per
direction, Hd decoder hidden, A attention hidden):

- encoder: src (S, B) -> Embedding (B, S, E) -> bidirectional GRU/LSTM (batch_first, with
  ``lengths``) -> keys (B, S, 2H); padded steps are outside the attention ``mask``.
- bridge: s_0 = tanh(W [h_fwd; h_bwd] + b) from the encoder's final states (LSTM decoder: c_0 = 0).
- decoder, one GRUCell/LSTMCell step per output position t:
      context_t, _ = attention(query=h_{t-1}, keys, mask)         # AdditiveAttention(Hd, 2H, A)
      h_t = cell([embed(y_{t-1}); context_t], h_{t-1})
      logits_t = W_o [h_t; context_t] + b_o                       # one Linear over all T*B at the end
  with teacher forcing in training (y_{t-1} is the reference token, <bos> first) and greedy
  decoding in inference (y_{t-1} is the previous argmax).
- loss: cross-entropy over the valid target positions (``tgt_lengths``), mean per token.

The attention keys' projection W_k keys is computed once per batch (``precompute``) and
passed to every step; backward through each step returns its share of the keys' gradient
(including the W_k path), summed over steps and sent through the encoder's backward.
"""
from __future__ import annotations

import numpy as np

from ..layers.basic import Embedding, Linear
from ..losses import cross_entropy
from ._backend import child_seeds, layer_classes
from .tasks import BOS, EOS, PAD

__all__ = ["Seq2Seq"]


class Seq2Seq:
    """``Seq2Seq(vocab_size, embed_size=32, hidden_size=128, decoder_size=256, attention_size=128,
    cell="gru", dtype="float32", seed=0, backend="fastrnn")``

    One vocabulary for source and target (ids from fastrnn.models.tasks: 0 pad, 1 bos, 2 eos).
    cell: "gru" or "lstm" (encoder and decoder). backend: "fastrnn" (C++ kernels) or "reference".
    """

    def __init__(self, vocab_size, embed_size=32, hidden_size=128, decoder_size=256, attention_size=128,
                 cell="gru", dtype="float32", seed=0, backend="fastrnn"):
        if cell not in ("gru", "lstm"):
            raise ValueError(f"cell: expected 'gru' or 'lstm', got {cell!r}")
        self.vocab_size, self.embed_size = int(vocab_size), int(embed_size)
        self.hidden_size, self.decoder_size, self.attention_size = int(hidden_size), int(decoder_size), int(attention_size)
        self.cell_kind, self.backend = cell, backend
        self.lstm = cell == "lstm"
        V, E, H, Hd, A = self.vocab_size, self.embed_size, self.hidden_size, self.decoder_size, self.attention_size
        L = layer_classes(backend)
        s = child_seeds(seed, 7)
        self.src_embed = Embedding(V, E, padding_idx=PAD, dtype=dtype, seed=s[0])
        self.encoder = (L.LSTM if self.lstm else L.GRU)(E, H, bidirectional=True, batch_first=True,
                                                         dtype=dtype, seed=s[1])
        self.bridge = Linear(2 * H, Hd, dtype=dtype, seed=s[2])
        self.tgt_embed = Embedding(V, E, padding_idx=PAD, dtype=dtype, seed=s[3])
        self.attention = L.AdditiveAttention(Hd, 2 * H, A, dtype=dtype, seed=s[4])
        self.cell = (L.LSTMCell if self.lstm else L.GRUCell)(E + 2 * H, Hd, dtype=dtype, seed=s[5])
        self.head = Linear(Hd + 2 * H, V, dtype=dtype, seed=s[6])
        self.dtype = self.head.dtype
        self.params, self.grads = {}, {}
        for prefix, layer in self._layers():
            for k in layer.params:
                self.params[f"{prefix}.{k}"] = layer.params[k]
                self.grads[f"{prefix}.{k}"] = layer.grads[k]

    def _layers(self):
        return (("src_embed", self.src_embed), ("encoder", self.encoder), ("bridge", self.bridge),
                ("tgt_embed", self.tgt_embed), ("attention", self.attention), ("cell", self.cell),
                ("head", self.head))

    def config(self) -> dict:
        return {"vocab_size": self.vocab_size, "embed_size": self.embed_size, "hidden_size": self.hidden_size,
                "decoder_size": self.decoder_size, "attention_size": self.attention_size,
                "cell": self.cell_kind, "dtype": self.dtype.name}

    def __repr__(self) -> str:
        n = sum(p.size for p in self.params.values())
        return (f"Seq2Seq(vocab={self.vocab_size}, embed={self.embed_size}, encoder bi-{self.cell_kind} "
                f"{self.hidden_size}, decoder {self.cell_kind} {self.decoder_size}, attention "
                f"{self.attention_size}, {n} params)")

    def rngs(self) -> dict:
        return {}  # no dropout: training draws nothing from the layers' generators

    def zero_grad(self) -> None:
        for g in self.grads.values():
            g[...] = 0

    # ------------------------------------------------------------------ encoder
    def _encode(self, src, src_lengths, train):
        """-> keys (B, S, 2H), mask (B, S), s_0 decoder state, caches."""
        src = np.asarray(src)
        lengths = np.asarray(src_lengths)
        S = src.shape[0]
        mask = np.arange(S)[None, :] < lengths[:, None]                       # (B, S)
        if train:
            emb, ec = self.src_embed.forward(src.T)                           # (B, S, E)
            keys, state_n, rc = self.encoder.forward(emb, lengths=lengths)    # (B, S, 2H)
        else:
            emb, ec = self.src_embed(src.T), None
            keys, state_n = self.encoder(emb, lengths=lengths)
            rc = None
        h_n = state_n[0] if self.lstm else state_n                            # (2, B, H)
        hcat = np.concatenate([h_n[0], h_n[1]], axis=1)                       # (B, 2H)
        if train:
            pre, bc = self.bridge.forward(hcat)
        else:
            pre, bc = self.bridge(hcat), None
        s0 = np.tanh(pre)
        state = (s0, np.zeros_like(s0)) if self.lstm else s0
        return keys, mask, state, (ec, rc, bc, s0)

    # ------------------------------------------------------------------ training
    def forward(self, src, src_lengths, tgt_in):
        """Teacher-forced forward: -> (logits (T, B, V), cache)."""
        keys, mask, state, enc_cache = self._encode(src, src_lengths, train=True)
        keys_proj = self.attention.precompute(keys)
        emb_t, tc = self.tgt_embed.forward(np.asarray(tgt_in))               # (T, B, E)
        T, B, E = emb_t.shape
        Hd, K = self.decoder_size, keys.shape[2]
        outs = np.empty((T, B, Hd + K), dtype=self.dtype)                    # [h_t; context_t]
        xs = np.empty((T, B, E + K), dtype=self.dtype)   # one slice per step: caches may keep x_t
        xs[:, :, :E] = emb_t
        att_f, cell_f = self.attention.forward, self.cell.forward
        steps = []
        h = state[0] if self.lstm else state
        for t in range(T):
            ctx, _, ac = att_f(h, keys, mask, keys_proj)
            xs[t, :, E:] = ctx
            state, cc = cell_f(xs[t], state)
            h = state[0] if self.lstm else state
            outs[t, :, :Hd] = h
            outs[t, :, Hd:] = ctx
            steps.append((ac, cc))
        logits, hc = self.head.forward(outs)
        return logits, (enc_cache, tc, steps, hc, keys.shape, E)

    def backward(self, cache, dlogits):
        """Adds every parameter gradient into self.grads."""
        (ec, rc, bc, s0), tc, steps, hc, keys_shape, E = cache
        Hd = self.decoder_size
        douts = self.head.backward(hc, dlogits)                              # (T, B, Hd + K)
        T = douts.shape[0]
        dkeys = np.zeros(keys_shape, dtype=self.dtype)
        demb_t = np.empty((T,) + (keys_shape[0], E), dtype=self.dtype)
        dh = np.zeros((keys_shape[0], Hd), dtype=self.dtype)
        dc = np.zeros_like(dh) if self.lstm else None
        att_b, cell_b = self.attention.backward, self.cell.backward
        for t in range(T - 1, -1, -1):
            ac, cc = steps[t]
            # forward: outs[t] = [h_t; ctx_t]; h_t = cell(x_t, state_{t-1})
            dh = dh + douts[t, :, :Hd]
            dx, dstate = cell_b(cc, (dh, dc) if self.lstm else dh)
            if self.lstm:
                dh, dc = dstate
            else:
                dh = dstate
            # forward: x_t = [emb_t; ctx_t]; ctx_t = attention(h_{t-1}, keys)
            demb_t[t] = dx[:, :E]
            dq, dk = att_b(ac, douts[t, :, Hd:] + dx[:, E:])
            dkeys += dk
            dh = dh + dq
        self.tgt_embed.backward(tc, demb_t)
        # forward: s0 = tanh(bridge(hcat)); dc of c_0 = 0 goes nowhere
        dhcat = self.bridge.backward(bc, dh * (1.0 - s0 * s0))
        H = self.hidden_size
        dh_n = np.stack([dhcat[:, :H], dhcat[:, H:]])                        # (2, B, H)
        dstate_n = (dh_n, np.zeros_like(dh_n)) if self.lstm else dh_n
        demb, _ = self.encoder.backward(rc, dkeys, dstate_n)
        self.src_embed.backward(ec, demb)

    def forward_backward(self, src, src_lengths, tgt_in, tgt_out, tgt_lengths) -> float:
        """Mean cross-entropy per valid target token; gradients ADDED into self.grads."""
        logits, cache = self.forward(src, src_lengths, tgt_in)
        loss, dlogits = cross_entropy(logits, np.asarray(tgt_out), lengths=np.asarray(tgt_lengths))
        self.backward(cache, dlogits)
        return loss

    # ------------------------------------------------------------------ inference
    def greedy_decode(self, src, src_lengths, max_len=None) -> np.ndarray:
        """Greedy decoding -> (T, B) token ids, T <= max_len (default S + 5); a sequence ends
        at its first <eos> (positions after it are <pad>)."""
        keys, mask, state, _ = self._encode(src, src_lengths, train=False)
        S, B = np.asarray(src).shape
        max_len = S + 5 if max_len is None else int(max_len)
        keys_proj = self.attention.precompute(keys)
        E, Hd, K = self.embed_size, self.decoder_size, keys.shape[2]
        W_emb = self.tgt_embed.params["weight"]
        x_t = np.empty((B, E + K), dtype=self.dtype)
        o_t = np.empty((B, Hd + K), dtype=self.dtype)
        y_prev = np.full(B, BOS, dtype=np.int64)
        out = np.full((max_len, B), PAD, dtype=np.int64)
        done = np.zeros(B, dtype=bool)
        h = state[0] if self.lstm else state
        for t in range(max_len):
            ctx, _ = self.attention(h, keys, mask, keys_proj)
            x_t[:, :E] = W_emb[y_prev]
            x_t[:, E:] = ctx
            state = self.cell(x_t, state)
            h = state[0] if self.lstm else state
            o_t[:, :Hd] = h
            o_t[:, Hd:] = ctx
            y = np.argmax(self.head(o_t), axis=1)
            out[t] = np.where(done, PAD, y)
            done |= y == EOS
            y_prev = y
            if done.all():
                return out[: t + 1]
        return out

    def translate(self, sources, batch_size=500, max_len=None) -> list:
        """Greedy outputs for a list of source id arrays -> list of id arrays (without <eos>;
        a sequence that never emitted <eos> is returned whole)."""
        out = []
        for i in range(0, len(sources), batch_size):
            chunk = sources[i:i + batch_size]
            lengths = np.array([len(s) for s in chunk], dtype=np.int64)
            src = np.full((int(lengths.max()), len(chunk)), PAD, dtype=np.int64)
            for b, s in enumerate(chunk):
                src[:len(s), b] = s
            ys = self.greedy_decode(src, lengths, max_len=max_len)
            for b in range(len(chunk)):
                col = ys[:, b]
                end = np.flatnonzero(col == EOS)
                out.append(col[: end[0]].copy() if end.size else col[col != PAD].copy())
        return out

    def accuracy(self, task, sources, batch_size=500) -> float:
        """Exact-sequence accuracy of greedy decoding on ``sources`` for ``task`` (a DigitTask):
        the fraction whose output equals the target exactly (and ends with <eos>)."""
        preds = self.translate(sources, batch_size)
        hits = 0
        for s, p in zip(sources, preds):
            t = task.target(s)
            hits += int(p.shape == t.shape and np.array_equal(p, t))
        return hits / max(1, len(sources))
