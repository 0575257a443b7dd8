"""fastrnn.models: the default corpus, CharLM, Seq2Seq, their tasks and checkpoints.

Gradients of the whole models are checked by float64 central differences on the NumPy
reference backend (this checks the wiring: embedding, carried state, bridge, attention steps,
heads); the kernel-backed models are checked against the reference ones and trained briefly.
"""
import numpy as np
import pytest

from fastrnn.losses import cross_entropy
from fastrnn.models import CharLM, DigitTask, Seq2Seq, TextStreams, Vocab, default_corpus
from fastrnn.models.checkpoint import load_checkpoint, load_params, restore_rng, save_checkpoint
from fastrnn.models.tasks import BOS, EOS, PAD, decode_digits, encode_digits
from fastrnn.optim import Adam
from fastrnn.clip import clip_grad_norm

from helpers import assert_close


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tests check numerics and learning, not speed: run the small kernels on one thread
    (and NumPy's BLAS too), which is fastest for their sizes and immune to a busy machine."""
    import fastrnn
    from fastrnn.train_cli import _NumpyBlasOneThread

    before = fastrnn.get_num_threads()
    fastrnn.set_num_threads(1)
    with _NumpyBlasOneThread():
        yield
    fastrnn.set_num_threads(before)


def _gradcheck(model, loss_fn, backward_fn, per_param=3, eps=1e-6, seed=0):
    """Central differences on a few random entries of every parameter (float64)."""
    model.zero_grad()
    backward_fn()
    rng = np.random.default_rng(seed)
    for name, p in model.params.items():
        g = model.grads[name].copy()
        for _ in range(per_param):
            i = tuple(int(rng.integers(0, s)) for s in p.shape)
            old = p[i]
            p[i] = old + eps
            lp = loss_fn()
            p[i] = old - eps
            lm = loss_fn()
            p[i] = old
            num = (lp - lm) / (2 * eps)
            assert abs(num - g[i]) <= 1e-7 + 1e-5 * abs(num), f"{name}{i}: numeric {num}, analytic {g[i]}"


# ------------------------------------------------------------------------------ corpus
def test_default_corpus_is_deterministic_and_well_formed():
    a = default_corpus(30_000)
    assert a == default_corpus(30_000) and len(a) == 30_000
    assert a != default_corpus(30_000, seed=1)
    assert default_corpus(1000) == a[:1000]
    full = default_corpus(200_000)
    # every complete paragraph has matched brackets (in order) and an even number of quotes
    paragraphs = [p for p in full.split("\n\n")[:-1] if p and p[0].isdigit()]
    assert len(paragraphs) > 100
    pairs = {")": "(", "]": "[", "}": "{"}
    for p in paragraphs:
        stack = []
        for ch in p:
            if ch in "([{":
                stack.append(ch)
            elif ch in pairs:
                assert stack and stack.pop() == pairs[ch], p
        assert not stack, p
        assert p.count('"') % 2 == 0, p
    assert {"(", "[", "{", '"'} <= set(full)


def test_vocab_utf8_roundtrip_and_unknown_characters():
    text = "naïve café — ünïcödé 🙂\nline two\n"
    v = Vocab.from_text(text)
    ids = v.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert v.decode(ids) == text
    assert Vocab.from_json(v.to_json()) == v
    with pytest.raises(ValueError, match="'z'"):
        v.encode("lazy")


# ------------------------------------------------------------------------------ CharLM
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_charlm_gradients_match_finite_differences(cell):
    text = default_corpus(3000)
    vocab = Vocab.from_text(text)
    model = CharLM(vocab, embed_size=5, hidden_size=6, num_layers=2, cell=cell, dtype="float64",
                   backend="reference", seed=3)
    ids = vocab.encode(text[:41])
    x = ids[:40].reshape(4, 10).T.copy()
    y = ids[1:41].reshape(4, 10).T.copy()
    rng = np.random.default_rng(1)
    h0 = rng.standard_normal((2, 4, 6)) * 0.5
    state = (h0, rng.standard_normal((2, 4, 6)) * 0.5) if cell == "lstm" else h0   # a carried state

    def loss():
        logits, _, _ = model.forward(x, state)
        return cross_entropy(logits, y)[0]

    _gradcheck(model, loss, lambda: model.forward_backward(x, y, state))


def test_charlm_kernels_match_reference():
    vocab = Vocab.from_text(default_corpus(2000))
    fast = CharLM(vocab, embed_size=8, hidden_size=16, num_layers=2, seed=5)
    ref = CharLM(vocab, embed_size=8, hidden_size=16, num_layers=2, seed=5, backend="reference")
    for k in fast.params:
        assert np.array_equal(fast.params[k], ref.params[k]), k
    x = np.random.default_rng(0).integers(0, len(vocab), size=(12, 3))
    y = np.roll(x, -1, axis=0)
    lf, sf = fast.forward_backward(x, y)
    lr, sr = ref.forward_backward(x, y)
    assert abs(lf - lr) < 1e-5
    assert_close(sf[0], sr[0], rtol=1e-4, atol=1e-5)
    for k in fast.grads:
        assert_close(fast.grads[k], ref.grads[k], rtol=1e-3, atol=1e-5)


def test_text_streams_carry_over_and_restore():
    ids = np.arange(1000)
    s = TextStreams(ids, batch_size=4, seq_len=10, rng=np.random.default_rng(0))
    x1, y1, new1 = s.next_batch()
    x2, y2, new2 = s.next_batch()
    assert new1 and not new2 and x1.shape == (10, 4)
    assert np.array_equal(y1, x1 + 1)                    # targets: the next character
    assert np.array_equal(x2[0], x1[-1] + 1)             # chunk 2 continues chunk 1, stream by stream
    pos = s.position()
    rng_state = s.rng.bit_generator.state
    ahead = [s.next_batch() for _ in range(40)]          # crosses an epoch boundary
    assert any(b[2] for b in ahead)
    s.set_position(pos)
    s.rng.bit_generator.state = rng_state
    again = [s.next_batch() for _ in range(40)]
    for a, b in zip(ahead, again):
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_charlm_training_decreases_loss():
    text = default_corpus(60_000)
    vocab = Vocab.from_text(text)
    model = CharLM(vocab, embed_size=16, hidden_size=64, seed=0)
    opt = Adam(model.params, lr=1e-2)
    streams = TextStreams(vocab.encode(text), 16, 32, np.random.default_rng(0))
    val = vocab.encode(default_corpus(8000, seed=7))
    before = model.evaluate(val)
    state, losses = None, []
    for _ in range(80):
        x, y, new = streams.next_batch()
        loss, state = model.forward_backward(x, y, None if new else state)
        clip_grad_norm(model.grads, 5.0)
        opt.step(model.grads)
        model.zero_grad()
        losses.append(loss)
    after = model.evaluate(val)
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0
    assert after < before - 1.0 and after < 2.8, (before, after)


def test_charlm_generate():
    vocab = Vocab.from_text(default_corpus(2000))
    model = CharLM(vocab, embed_size=8, hidden_size=16, seed=1)
    a = model.generate("The ", 50, temperature=1.0, seed=3)
    assert len(a) == 50 and set(a) <= set(vocab.chars)
    assert a == model.generate("The ", 50, temperature=1.0, seed=3)
    assert model.generate("The ", 50, temperature=0, seed=1) == model.generate("The ", 50, temperature=0, seed=2)
    assert len(model.generate("", 7, seed=0)) == 7
    assert model.generate("x", 0) == ""
    with pytest.raises(ValueError, match="vocabulary"):
        model.generate("\u00e9", 5)


# ------------------------------------------------------------------------------ Seq2Seq
def test_digit_task_batches():
    task = DigitTask("reverse", 3, 7, valid_size=20, test_size=30)
    assert len(task.valid) == 20 and len(task.test) == 30
    rng = np.random.default_rng(0)
    held = {s.tobytes() for s in task.valid + task.test}
    sources = task.sample_sources(rng, 200)
    assert not any(s.tobytes() in held for s in sources)
    b = task.make_batch(sources[:5])
    S, B = b["src"].shape
    assert B == 5 and S == b["src_lengths"].max()
    for j, s in enumerate(sources[:5]):
        n = len(s)
        assert np.array_equal(b["src"][:n, j], s) and np.all(b["src"][n:, j] == PAD)
        assert b["tgt_in"][0, j] == BOS and np.array_equal(b["tgt_in"][1:n + 1, j], s[::-1])
        assert np.array_equal(b["tgt_out"][:n, j], s[::-1]) and b["tgt_out"][n, j] == EOS
        assert b["tgt_lengths"][j] == n + 1
    assert decode_digits(encode_digits("0123 45")) == "012345"
    sort = DigitTask("sort", 3, 7, valid_size=1, test_size=1)
    assert decode_digits(sort.target(encode_digits("3141592"))) == "1123459"
    with pytest.raises(ValueError):
        encode_digits("12a")


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_seq2seq_gradients_match_finite_differences(cell):
    task = DigitTask("reverse", 2, 5, valid_size=1, test_size=1)
    batch = task.sample_batch(np.random.default_rng(0), 3)
    model = Seq2Seq(task.vocab_size, embed_size=4, hidden_size=5, decoder_size=6, attention_size=3, cell=cell,
                    dtype="float64", backend="reference", seed=2)

    def loss():
        logits, _ = model.forward(batch["src"], batch["src_lengths"], batch["tgt_in"])
        return cross_entropy(logits, batch["tgt_out"], lengths=batch["tgt_lengths"])[0]

    _gradcheck(model, loss, lambda: model.forward_backward(**batch))


def test_seq2seq_padding_does_not_change_an_example():
    """An example's logits and gradients are the same alone and in a padded batch."""
    task = DigitTask("reverse", 3, 9, valid_size=1, test_size=1)
    sources = [encode_digits("1234"), encode_digits("987654321"), encode_digits("55512")]
    model = Seq2Seq(task.vocab_size, embed_size=6, hidden_size=8, decoder_size=10, attention_size=7,
                    dtype="float64", backend="reference", seed=0)
    full = task.make_batch(sources)
    alone = task.make_batch(sources[:1])
    lf, _ = model.forward(full["src"], full["src_lengths"], full["tgt_in"])
    la, _ = model.forward(alone["src"], alone["src_lengths"], alone["tgt_in"])
    n = alone["tgt_lengths"][0]
    assert_close(lf[:n, 0], la[:n, 0], rtol=1e-10, atol=1e-12)


def test_seq2seq_kernels_match_reference():
    task = DigitTask("reverse", 3, 8, valid_size=1, test_size=1)
    batch = task.sample_batch(np.random.default_rng(1), 5)
    fast = Seq2Seq(task.vocab_size, embed_size=8, hidden_size=12, decoder_size=16, attention_size=10, seed=4)
    ref = Seq2Seq(task.vocab_size, embed_size=8, hidden_size=12, decoder_size=16, attention_size=10, seed=4,
                  backend="reference")
    lf, lr = fast.forward_backward(**batch), ref.forward_backward(**batch)
    assert abs(lf - lr) < 1e-5
    for k in fast.grads:
        assert_close(fast.grads[k], ref.grads[k], rtol=2e-3, atol=2e-5)
    out_f = fast.greedy_decode(batch["src"], batch["src_lengths"])
    out_r = ref.greedy_decode(batch["src"], batch["src_lengths"])
    assert np.array_equal(out_f, out_r)


def test_seq2seq_training_decreases_loss_and_decodes():
    task = DigitTask("reverse", 3, 6, valid_size=100, test_size=1)
    model = Seq2Seq(task.vocab_size, embed_size=16, hidden_size=32, decoder_size=48, attention_size=32, seed=0)
    opt = Adam(model.params, lr=1e-2)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(120):
        loss = model.forward_backward(**task.sample_batch(rng, 32))
        clip_grad_norm(model.grads, 5.0)
        opt.step(model.grads)
        model.zero_grad()
        losses.append(loss)
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10]), (losses[:10], losses[-10:])
    out = model.greedy_decode(np.array([[3, 4], [5, 6], [7, PAD]]), np.array([3, 2]), max_len=6)
    assert out.shape[1] == 2 and out.shape[0] <= 6
    for j in range(2):  # nothing but <pad> after the first <eos>
        col = out[:, j]
        end = np.flatnonzero(col == EOS)
        if end.size:
            assert np.all(col[end[0] + 1:] == PAD)
    preds = model.translate(task.valid[:10])
    assert len(preds) == 10
    assert 0.0 <= model.accuracy(task, task.valid) <= 1.0


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_roundtrip(tmp_path):
    vocab = Vocab.from_text(default_corpus(2000))
    model = CharLM(vocab, embed_size=8, hidden_size=16, num_layers=2, dropout=0.2, seed=1)
    opt = Adam(model.params, lr=3e-3)
    x = np.random.default_rng(0).integers(0, len(vocab), size=(6, 2))
    model.forward_backward(x, x)
    opt.step(model.grads)
    rng = np.random.default_rng(9)
    rng.random(3)
    path = tmp_path / "sub" / "ck.npz"
    save_checkpoint(path, params=model.params, optimizer=opt, step=7, rng=rng, config={"kind": "test", "a": [1, 2]},
                    rngs=model.rngs(), extra={"state_h": np.ones((2, 2, 16), np.float32)})
    ck = load_checkpoint(path)
    assert ck.step == 7 and ck.config == {"kind": "test", "a": [1, 2]}
    assert np.array_equal(ck.extra["state_h"], np.ones((2, 2, 16)))
    other = CharLM(vocab, embed_size=8, hidden_size=16, num_layers=2, dropout=0.2, seed=2)
    load_params(other, ck.params)
    for k in model.params:
        assert np.array_equal(other.params[k], model.params[k])
    opt2 = Adam(other.params, lr=1.0)
    opt2.load_state_dict(ck.optim)
    assert opt2.lr == 3e-3
    for k, v in opt.state_dict().items():
        w = opt2.state_dict()[k]
        assert np.array_equal(np.asarray(v), np.asarray(w)), k
    g = np.random.default_rng(0)
    restore_rng(g, ck.rng)
    assert g.random() == rng.random()
    for name, gen in other.rngs().items():
        restore_rng(gen, ck.rngs[name])
        assert gen.random() == model.rngs()[name].random()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.npz")
    np.savez(tmp_path / "plain.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="not a fastrnn training checkpoint"):
        load_checkpoint(tmp_path / "plain.npz")


# ------------------------------------------------------------------------------ the example
def test_long_term_dependency_example_runs(monkeypatch, capsys):
    import os
    import runpy

    path = os.path.join(os.path.dirname(__file__), "..", "examples", "long_term_dependency.py")
    monkeypatch.setattr("sys.argv", [path, "--T", "20", "--steps", "4", "--eval-every", "2", "--hidden", "8"])
    runpy.run_path(path, run_name="__main__")
    out = capsys.readouterr().out
    for cell in ("rnn", "lstm", "gru"):
        assert f"{cell:>5} |" in out
