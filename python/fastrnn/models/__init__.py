"""fastrnn.models: small complete models trained with fastrnn's layers and optimizers.

- ``CharLM``: character language model (embedding -> LSTM/GRU -> linear), truncated BPTT,
  ``generate(prefix, n, temperature, seed)``; ``Vocab``, ``TextStreams``; ``default_corpus()``
  is the embedded, deterministically generated training text.
- ``Seq2Seq``: bidirectional GRU/LSTM encoder, decoder cell with additive attention, teacher
  forcing in training, greedy decoding; ``DigitTask`` is its built-in synthetic task.
- ``save_checkpoint`` / ``load_checkpoint``: .npz checkpoints (params, optimizer state, step,
  RNG states, config) from which training resumes bit-identically.

The command line (``fastrnn train charlm|seq2seq``, ``fastrnn generate``, ``fastrnn translate``)
is in fastrnn/train_cli.py.
"""
from .charlm import CharLM, TextStreams, Vocab
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .corpus import default_corpus
from .seq2seq import Seq2Seq
from .tasks import DigitTask

__all__ = ["CharLM", "Vocab", "TextStreams", "default_corpus", "Seq2Seq", "DigitTask",
           "save_checkpoint", "load_checkpoint", "Checkpoint"]
