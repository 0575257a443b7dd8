"""`fastrnn train charlm|seq2seq`, `fastrnn generate`, `fastrnn translate` (short runs).

The key property: train N steps == train N/2, save, resume, train N/2 more, bit for bit
(parameters, optimizer state, RNG states and the recurrent state carried across chunks).
"""
import sys

import numpy as np
import pytest

from fastrnn.cli import main
from fastrnn.models import default_corpus

CHARLM_SMALL = ["--hidden", "24", "--embed", "8", "--seq-len", "16", "--batch", "4", "--layers", "2",
                "--dropout", "0.1", "--time-limit", "0", "--eval-every", "0", "--save-every", "0", "--quiet",
                "--threads", "2"]
SEQ2SEQ_SMALL = ["--hidden", "12", "--decoder-hidden", "16", "--attention", "8", "--embed", "8", "--batch", "8",
                 "--min-len", "3", "--max-len", "6", "--valid-size", "40", "--test-size", "40",
                 "--time-limit", "0", "--eval-every", "0", "--save-every", "0", "--quiet", "--threads", "1"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    text = default_corpus(20_000) + "\nUnicode: naïve café — 🙂\n"
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def _arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _assert_same_checkpoint(a, b, ignore=("config",)):
    za, zb = _arrays(a), _arrays(b)
    assert sorted(za) == sorted(zb)
    for k in za:
        if k in ignore:
            continue
        assert za[k].dtype == zb[k].dtype and np.array_equal(za[k], zb[k]), f"{k} differs"


def test_charlm_resume_is_bit_identical(tmp_path, corpus, capsys):
    full, half = str(tmp_path / "full.npz"), str(tmp_path / "half.npz")
    assert main(["train", "charlm", "--corpus", corpus, "--steps", "8", "--checkpoint", full] + CHARLM_SMALL) == 0
    assert main(["train", "charlm", "--corpus", corpus, "--steps", "4", "--checkpoint", half] + CHARLM_SMALL) == 0
    # a resumed run takes the model settings from the checkpoint
    assert main(["train", "charlm", "--steps", "8", "--checkpoint", half, "--resume", "--time-limit", "0",
                 "--eval-every", "0", "--save-every", "0", "--quiet", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "final validation loss" in out and "step 8" in out
    _assert_same_checkpoint(full, half)
    assert any(k.startswith("extra/state_") for k in _arrays(full))   # the carried BPTT state is saved


def test_seq2seq_resume_is_bit_identical(tmp_path, capsys):
    full, half = str(tmp_path / "full.npz"), str(tmp_path / "half.npz")
    assert main(["train", "seq2seq", "--steps", "6", "--checkpoint", full] + SEQ2SEQ_SMALL) == 0
    assert main(["train", "seq2seq", "--steps", "3", "--checkpoint", half] + SEQ2SEQ_SMALL) == 0
    assert main(["train", "seq2seq", "--steps", "6", "--checkpoint", half, "--resume"] + SEQ2SEQ_SMALL) == 0
    assert "held-out exact-sequence accuracy" in capsys.readouterr().out
    _assert_same_checkpoint(full, half)


def test_charlm_train_generate_and_default_corpus(tmp_path, capsys):
    ck = str(tmp_path / "lm.npz")
    args = ["train", "charlm", "--steps", "30", "--checkpoint", ck, "--hidden", "48", "--embed", "16",
            "--seq-len", "32", "--batch", "8", "--lr", "0.01", "--eval-every", "15", "--time-limit", "0", "--quiet"]
    assert main(args) == 0            # no --corpus: the embedded default corpus
    out = capsys.readouterr().out
    losses = [float(line.split()[3]) for line in out.splitlines() if line.startswith("final validation loss")]
    assert len(losses) == 1 and losses[0] < np.log(60)   # better than uniform over the vocabulary
    assert main(["generate", "--checkpoint", ck, "--prefix", "The ", "-n", "40", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("The ") and len(text.rstrip("\n")) >= 4 + 30
    assert main(["generate", "--checkpoint", ck, "--prefix", "The ", "-n", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().out == text
    assert main(["generate", "--checkpoint", ck, "--prefix", "\u00e9", "-n", "5"]) == 2


def test_seq2seq_train_and_translate(tmp_path, capsys):
    ck = str(tmp_path / "s2s.npz")
    assert main(["train", "seq2seq", "--steps", "5", "--checkpoint", ck] + SEQ2SEQ_SMALL) == 0
    capsys.readouterr()
    assert main(["translate", "--checkpoint", ck, "1234", "98 765"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("1234 -> ") and lines[1].startswith("98765 -> ")
    assert main(["translate", "--checkpoint", ck]) == 0
    assert "held-out exact-sequence accuracy" in capsys.readouterr().out
    assert main(["translate", "--checkpoint", ck, "12x"]) == 2
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", ck])     # a seq2seq checkpoint is not a charlm one


def test_progress_output_and_fallback_without_tqdm(tmp_path, capsys, monkeypatch):
    ck = str(tmp_path / "s2s.npz")
    args = ["train", "seq2seq", "--steps", "3", "--checkpoint", ck, "--eval-every", "2", "--hidden", "8",
            "--decoder-hidden", "8", "--attention", "8", "--embed", "4", "--batch", "4", "--max-len", "6",
            "--valid-size", "10", "--test-size", "10", "--time-limit", "0"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "step 2:" in err and "Seq2Seq(" in err
    monkeypatch.setitem(sys.modules, "tqdm", None)     # `import tqdm` now fails
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "step 2:" in captured.err and "held-out" in captured.out


def test_time_limit_stops_training(tmp_path, capsys):
    ck = str(tmp_path / "s2s.npz")
    args = ["train", "seq2seq", "--time-limit", "2.5", "--checkpoint", ck, "--hidden", "8", "--decoder-hidden", "8",
            "--attention", "8", "--embed", "4", "--batch", "4", "--max-len", "6", "--valid-size", "10",
            "--test-size", "10", "--eval-every", "0", "--quiet", "--threads", "1"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(time limit)" in out
    wall = float(out.split("wall time ")[1].split()[0])
    assert wall < 2.5 + 1.0, out     # the final evaluation is budgeted inside the limit


def test_bad_invocations(tmp_path, capsys):
    assert main(["train", "charlm", "--resume", "--checkpoint", str(tmp_path / "none.npz"), "--quiet"]) == 2
    assert main(["train", "charlm", "--time-limit", "0", "--quiet"]) == 2          # neither steps nor time
    with pytest.raises(SystemExit):
        main(["train"])
    with pytest.raises(SystemExit):
        main(["train", "charlm", "--hidden", "0"])
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(tmp_path / "none.npz")])
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 1000)
    with pytest.raises(SystemExit, match="not UTF-8"):
        main(["train", "charlm", "--corpus", str(bad), "--steps", "1", "--quiet"])
    with pytest.raises(SystemExit, match="too few"):
        main(["train", "charlm", "--corpus", __file__, "--steps", "1", "--quiet"])
