"""``fastrnn train charlm|seq2seq``, ``fastrnn generate`` and ``fastrnn translate``.

``add_commands(subparsers)`` registers the commands on the ``fastrnn`` parser (cli.py).

Training runs until ``--steps`` optimizer steps are done or ``--time-limit`` seconds have passed
(the limit covers the whole command: training stops early enough for the final evaluation and
checkpoint to fit), or, for seq2seq, when the validation accuracy reaches
``--target-accuracy``. A checkpoint (.npz: params, optimizer state, step, RNG states, the
recurrent state carried across BPTT chunks, config) is written every ``--save-every`` steps
and at the end; ``--resume`` continues from it, bit-identically to a run that was never
interrupted when the thread count is fixed (``--threads N``; the model and data settings then
come from the checkpoint). ``--threads auto`` (the default) measures fastrnn's default thread
count against 1 thread while training and uses the faster (re-checked every minute): on a
machine busy with other jobs, multi-threaded per-step kernels can be many times slower.
The learning rate decays linearly to ``--min-lr`` x ``--lr`` over the last ``--lr-decay``
fraction of the budget (of ``--steps``, or of this run's ``--time-limit``).

The progress bar (tqdm, optional: ``pip install fastrnn[progress]``) shows the step, the
running training loss, tokens per second and the latest validation figure; without tqdm a
line is printed every 15 s. ``--quiet`` turns both off.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import signal
import sys
import threading
import time

import numpy as np

__all__ = ["add_commands"]

CHARLM_DEFAULTS = dict(embed=64, hidden=512, layers=1, cell="lstm", dropout=0.2, seq_len=128, batch=32,
                       val_fraction=0.1)
CHARLM_TRAIN_DEFAULTS = dict(lr=2e-3, clip=5.0, lr_decay=0.25, min_lr=0.1, seed=0)
SEQ2SEQ_DEFAULTS = dict(task="reverse", min_len=5, max_len=20, embed=32, hidden=128, decoder_hidden=256,
                        attention=128, cell="gru", batch=64, valid_size=1000, test_size=2000)
SEQ2SEQ_TRAIN_DEFAULTS = dict(lr=2e-3, clip=5.0, lr_decay=0.3, min_lr=0.1, seed=0)


# ============================================================================ progress
class _Progress:
    """tqdm bar over the run's budget (steps or time), or a plain line every 15 s."""

    def __init__(self, enabled: bool, steps, time_limit, first_step: int):
        self.enabled, self.steps, self.time_limit = enabled, steps, time_limit
        self.first_step, self.t0 = first_step, time.perf_counter()
        self.bar, self._last_print, self._n = None, self.t0, 0
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=1000, file=sys.stderr, mininterval=0.5, dynamic_ncols=True, leave=True,
                        bar_format="{percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}")

    def fraction(self, step: int) -> float:
        f = 0.0
        if self.steps:
            f = max(f, (step - self.first_step) / max(1, self.steps - self.first_step))
        if self.time_limit:
            f = max(f, (time.perf_counter() - self.t0) / self.time_limit)
        return min(1.0, f)

    def update(self, step: int, fields: dict) -> None:
        if not self.enabled:
            return
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if self.bar is not None:
            n = int(self.fraction(step) * 1000)
            self.bar.set_postfix_str(text, refresh=False)
            if n > self._n:
                self.bar.update(n - self._n)
                self._n = n
            else:
                self.bar.refresh()
            return
        now = time.perf_counter()
        if now - self._last_print >= 15.0:
            self._last_print = now
            print(f"[{now - self.t0:6.0f} s {100 * self.fraction(step):3.0f}%] {text}", file=sys.stderr, flush=True)

    def write(self, msg: str) -> None:
        if self.bar is not None:
            self.bar.write(msg, file=sys.stderr)
        elif self.enabled:
            print(msg, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _fmt_rate(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


# ============================================================================ threads
class _NumpyBlasOneThread:
    """Context manager: NumPy's own OpenBLAS runs single-threaded inside (best effort, Linux).

    The small NumPy matmuls of the training loop (the output layers) gain nothing from threads,
    while an idle OpenBLAS worker spins for ~0.1 s after each call, taking a core from
    fastrnn's kernels (and, on a busy machine, slowing everything several-fold). fastrnn's own
    bundled OpenBLAS is a different library and keeps fastrnn's thread count.
    """

    _SYMBOLS = (("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
                ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
                ("openblas_set_num_threads", "openblas_get_num_threads"))

    def __enter__(self):
        self._restore = None
        try:
            import ctypes

            with open("/proc/self/maps") as f:
                paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
            for path in sorted(paths):
                if not path.startswith("/") or "numpy" not in path:
                    continue
                lib = ctypes.CDLL(path)
                for set_name, get_name in self._SYMBOLS:
                    setter, getter = getattr(lib, set_name, None), getattr(lib, get_name, None)
                    if setter is not None and getter is not None:
                        before = int(getter())
                        setter(1)
                        self._restore = (setter, before)
                        return self
        except (OSError, ValueError, AttributeError):
            pass
        return self

    def __exit__(self, *exc):
        if self._restore is not None:
            setter, before = self._restore
            setter(before)
        return False


class _ThreadTuner:
    """``--threads auto``: measure the training speed with fastrnn's default thread count and with
    1 thread, use the faster, and measure again every minute (a machine shared with other jobs
    can make a multi-threaded kernel many times slower than a single thread). A fixed count is
    used as given. Results are bit-identical only for a fixed count (the thread count changes
    the order of some float sums)."""

    PROBE_SECONDS = 1.5
    REPROBE_EVERY = 60.0

    def __init__(self, spec, log):
        from . import get_num_threads, set_num_threads

        self._set, self.log = set_num_threads, log
        self.previous = get_num_threads()
        if spec == "auto":
            top = self.previous
            self.candidates = [top, 1] if top > 1 else [top]
        else:
            self.candidates = [int(spec)]
        self.auto = len(self.candidates) > 1
        self.rates = {}
        self.queue = list(self.candidates) if self.auto else []
        self.current = self.chosen = None
        self._use(self.candidates[0])
        self.warm = 0                     # the first two steps are not measured
        self.tokens = self.secs = self.steps = 0
        self.exploit_until = None

    def _use(self, n):
        if n != self.current:
            self._set(n)
            self.current = n

    def record(self, ntokens: int, secs: float) -> None:
        if not self.auto:
            return
        if self.warm < 2:             # allocations, thread pool start-up
            self.warm += 1
            return
        self.tokens += ntokens
        self.secs += secs
        self.steps += 1
        now = time.perf_counter()
        if self.queue:  # probing self.queue[0] (== self.current)
            if self.secs >= self.PROBE_SECONDS and self.steps >= 2:
                self.rates[self.queue.pop(0)] = self.tokens / self.secs
                self.tokens = self.secs = self.steps = 0
                if self.queue:
                    self._use(self.queue[0])
                else:
                    best = max(self.rates, key=self.rates.get)
                    if best != self.chosen:
                        self.log("threads: " + ", ".join(f"{n}: {_fmt_rate(r)} tokens/s" for n, r in self.rates.items())
                                 + f"; using {best}")
                    self.chosen = best
                    self._use(best)
                    self.exploit_until = now + self.REPROBE_EVERY
        elif now >= self.exploit_until and self.steps >= 2:
            self.rates = {self.current: self.tokens / self.secs}
            self.tokens = self.secs = self.steps = 0
            self.queue = [n for n in self.candidates if n != self.current]
            self._use(self.queue[0])

    def close(self):
        self._set(self.previous)


# ============================================================================ settings
def _resolve(args, names, defaults: dict, saved: dict | None, what: str) -> dict:
    """Each setting from the command line, else the checkpoint (on resume), else the default.
    On resume, a command-line value that differs from the checkpoint's is ignored (with a note)."""
    out = {}
    for name in names:
        given = getattr(args, name, None)
        if saved is not None and name in saved:
            if given is not None and given != saved[name]:
                print(f"fastrnn: --{name.replace('_', '-')} {given} ignored on --resume: the checkpoint's "
                      f"{what} uses {saved[name]!r}", file=sys.stderr)
            out[name] = saved[name]
        else:
            out[name] = defaults[name] if given is None else given
    return out


def _lr_factor(progress: float, decay: float, floor: float) -> float:
    """1 until the last `decay` fraction of the budget, then linear down to `floor`."""
    if decay <= 0 or progress <= 1.0 - decay:
        return 1.0
    return max(floor, floor + (1.0 - floor) * (1.0 - progress) / decay)


# ============================================================================ jobs
class _CharLMJob:
    kind = "charlm"
    unit = "char"

    def __init__(self, args, ckpt):
        from .models.charlm import CharLM, TextStreams, Vocab
        from .models.corpus import default_corpus
        from .optim import Adam

        saved = ckpt.config if ckpt is not None else None
        self.data = _resolve(args, list(CHARLM_DEFAULTS), CHARLM_DEFAULTS, saved and saved["data"], "data/model")
        self.train = _resolve(args, list(CHARLM_TRAIN_DEFAULTS), CHARLM_TRAIN_DEFAULTS, saved and saved["train"],
                              "training")
        # the text
        corpus = args.corpus if args.corpus is not None else (saved["corpus"]["path"] if saved else None)
        if corpus is None:
            text = default_corpus()
            self.corpus = {"path": None, "name": "the embedded default corpus"}
        else:
            try:
                with open(corpus, "rb") as f:
                    raw = f.read()
                text = raw.decode("utf-8")
            except OSError as e:
                raise SystemExit(f"fastrnn: --corpus: {e}") from None
            except UnicodeDecodeError as e:
                raise SystemExit(f"fastrnn: --corpus: {corpus} is not UTF-8 text ({e})") from None
            digest = hashlib.sha1(raw).hexdigest()
            if saved and saved["corpus"].get("sha1") not in (None, digest):
                raise SystemExit(f"fastrnn: {corpus} differs from the corpus the checkpoint was trained on")
            self.corpus = {"path": os.path.abspath(corpus), "name": corpus, "sha1": digest}
        self.vocab = Vocab(saved["vocab"]) if saved else Vocab.from_text(text)
        try:
            ids = self.vocab.encode(text)
        except ValueError as e:   # resuming on another text
            raise SystemExit(f"fastrnn: --corpus: {e}") from None
        n_val = int(round(len(ids) * self.data["val_fraction"]))
        self.train_ids, self.val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val:]
        if self.val_ids.size < 2:
            raise SystemExit("fastrnn: the validation part (--val-fraction) of the corpus is too small")
        d, t = self.data, self.train
        self.model = CharLM(self.vocab, embed_size=d["embed"], hidden_size=d["hidden"], num_layers=d["layers"],
                            cell=d["cell"], dropout=d["dropout"], seed=t["seed"])
        self.opt = Adam(self.model.params, lr=t["lr"])
        self.rng = np.random.default_rng([t["seed"], 1])
        try:
            self.streams = TextStreams(self.train_ids, d["batch"], d["seq_len"], self.rng)
        except ValueError as e:
            raise SystemExit(f"fastrnn: {e}") from None
        self.state = None
        self.val_time = None

    def describe(self) -> str:
        return (f"{self.model!r}\ncorpus: {self.corpus['name']}: {len(self.train_ids)} chars for training, "
                f"{len(self.val_ids)} for validation (the last {self.data['val_fraction']:.0%}); "
                f"batch {self.data['batch']} x {self.data['seq_len']} chars per step")

    def config(self) -> dict:
        return {"kind": self.kind, "data": self.data, "train": self.train, "corpus": self.corpus,
                "vocab": self.vocab.chars, "model": self.model.config(), "position": self.streams.position()}

    def extra(self) -> dict:
        if self.state is None:
            return {}
        if isinstance(self.state, tuple):
            return {"state_h": self.state[0], "state_c": self.state[1]}
        return {"state_h": self.state}

    def restore(self, ckpt) -> None:
        self.streams.set_position(ckpt.config["position"])
        e = ckpt.extra
        if "state_h" in e:
            h = e["state_h"].astype(self.model.dtype)
            self.state = (h, e["state_c"].astype(self.model.dtype)) if "state_c" in e else h

    def step(self):
        x, y, new_epoch = self.streams.next_batch()
        if new_epoch:
            self.state = None
        loss, self.state = self.model.forward_backward(x, y, self.state)
        return loss, x.size

    def evaluate(self) -> dict:
        t0 = time.perf_counter()
        val = self.model.evaluate(self.val_ids)
        self.val_time = time.perf_counter() - t0
        return {"val_loss": val}

    def eval_time_guess(self, tok_per_s: float) -> float:
        if self.val_time is not None:
            return self.val_time
        return self.val_ids.size / max(tok_per_s, 1.0)  # forward only, so a generous guess

    @staticmethod
    def show(metrics: dict) -> str:
        return f"{metrics['val_loss']:.3f}"

    def done(self, metrics: dict) -> bool:
        return False

    def final_report(self, metrics: dict) -> str:
        v = metrics["val_loss"]
        return (f"final validation loss: {v:.4f} nats/char ({v / math.log(2):.3f} bits/char) on the last "
                f"{len(self.val_ids)} chars")

    def sample(self) -> str:
        return self.model.generate("", 300, temperature=0.8, seed=0)


class _Seq2SeqJob:
    kind = "seq2seq"
    unit = "tok"

    def __init__(self, args, ckpt):
        from .models.seq2seq import Seq2Seq
        from .models.tasks import DigitTask
        from .optim import Adam

        saved = ckpt.config if ckpt is not None else None
        self.data = _resolve(args, list(SEQ2SEQ_DEFAULTS), SEQ2SEQ_DEFAULTS, saved and saved["data"], "task/model")
        self.train = _resolve(args, list(SEQ2SEQ_TRAIN_DEFAULTS), SEQ2SEQ_TRAIN_DEFAULTS, saved and saved["train"],
                              "training")
        d, t = self.data, self.train
        try:
            self.task = DigitTask(d["task"], d["min_len"], d["max_len"], valid_size=d["valid_size"],
                                  test_size=d["test_size"])
        except ValueError as e:
            raise SystemExit(f"fastrnn: {e}") from None
        self.model = Seq2Seq(self.task.vocab_size, embed_size=d["embed"], hidden_size=d["hidden"],
                             decoder_size=d["decoder_hidden"], attention_size=d["attention"], cell=d["cell"],
                             seed=t["seed"])
        self.opt = Adam(self.model.params, lr=t["lr"])
        self.rng = np.random.default_rng([t["seed"], 1])
        self.target_accuracy = args.target_accuracy
        self.val_time = None

    def describe(self) -> str:
        d = self.data
        return (f"{self.model!r}\ntask: {d['task']} digit strings of length {d['min_len']}-{d['max_len']}; "
                f"batch {d['batch']}; held out: {d['valid_size']} validation, {d['test_size']} test sources")

    def config(self) -> dict:
        return {"kind": self.kind, "data": self.data, "train": self.train, "model": self.model.config()}

    def extra(self) -> dict:
        return {}

    def restore(self, ckpt) -> None:
        pass

    def step(self):
        b = self.task.sample_batch(self.rng, self.data["batch"])
        loss = self.model.forward_backward(**b)
        return loss, int(b["tgt_lengths"].sum())

    def evaluate(self) -> dict:
        t0 = time.perf_counter()
        acc = self.model.accuracy(self.task, self.task.valid)
        self.val_time = time.perf_counter() - t0
        return {"val_acc": acc}

    def eval_time_guess(self, tok_per_s: float) -> float:
        if self.val_time is not None:  # the final report decodes the validation and the test sources
            return self.val_time * (1 + len(self.task.test) / max(1, len(self.task.valid)))
        n = len(self.task.valid) + len(self.task.test)
        return n * (self.data["max_len"] + 1) / max(tok_per_s, 1.0)

    @staticmethod
    def show(metrics: dict) -> str:
        return f"{100 * metrics['val_acc']:.1f}%"

    def done(self, metrics: dict) -> bool:
        return self.target_accuracy is not None and metrics["val_acc"] >= self.target_accuracy

    def final_report(self, metrics: dict) -> str:
        test = self.model.accuracy(self.task, self.task.test)
        metrics["test_acc"] = test
        return (f"held-out exact-sequence accuracy: {100 * test:.2f}% on {len(self.task.test)} test sources "
                f"({100 * metrics['val_acc']:.2f}% on {len(self.task.valid)} validation sources)")

    def sample(self) -> str:
        from .models.tasks import decode_digits

        lines = []
        for s in self.task.test[:3]:
            out = self.model.translate([s])[0]
            lines.append(f"  {decode_digits(s)} -> {decode_digits(out)}")
        return "\n".join(lines)


# ============================================================================ the loop
def _catch_sigterm():
    """Turn SIGTERM into KeyboardInterrupt while training, so `kill` still evaluates and saves.
    Returns the previous handler (None when not in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _loop(job, args, progress, tuner, time_limit, t_start, step, train_time, save):
    """The training loop. Returns (why it stopped, step, accumulated training time, tokens,
    seconds spent in training steps, the metrics of the last evaluation if done at this step)."""
    from .clip import clip_grad_norm

    tr = job.train
    base_lr = tr["lr"]
    loss_avg, tokens, step_secs = None, 0, 0.0
    metrics, metrics_step, stopped = None, -1, "steps"
    t_train0 = time.perf_counter()
    save_time = 0.2
    try:
        while args.steps is None or step < args.steps:
            now = time.perf_counter()
            tok_s = tokens / step_secs if tokens else 0.0
            reserve = 0.0
            if time_limit is not None:
                if tokens:  # time for the final evaluation and checkpoint
                    reserve = 1.3 * job.eval_time_guess(tok_s) + 1.5 * save_time + 0.5
                if now - t_start + reserve >= time_limit:
                    stopped = "time"
                    break
            if tr["lr_decay"] > 0:  # progress through the budget: steps (absolute) or this run's time
                frac = step / args.steps if args.steps else 0.0
                if time_limit is not None:
                    frac = max(frac, (now - t_start) / max(1.0, time_limit - reserve))
                job.opt.lr = base_lr * _lr_factor(min(frac, 1.0), tr["lr_decay"], tr["min_lr"])
            t_step = time.perf_counter()
            loss, ntok = job.step()
            if not math.isfinite(loss):
                progress.write(f"fastrnn: the training loss is {loss} at step {step}; stopping (try a lower --lr)")
                print(f"fastrnn: the training loss is {loss} at step {step}; stopping (try a lower --lr)",
                      file=sys.stderr)
                stopped = "nan"
                job.model.zero_grad()
                break
            clip_grad_norm(job.model.grads, tr["clip"])
            job.opt.step(job.model.grads)
            job.model.zero_grad()
            secs = time.perf_counter() - t_step
            tuner.record(ntok, secs)
            step += 1
            tokens += ntok
            step_secs += secs
            loss_avg = loss if loss_avg is None else 0.98 * loss_avg + 0.02 * loss
            fields = {"step": step, "loss": f"{loss_avg:.3f}", f"{job.unit}/s": _fmt_rate(tokens / step_secs)}
            if metrics is not None:
                fields["val"] = job.show(metrics)
            if args.eval_every and step % args.eval_every == 0:
                metrics, metrics_step = job.evaluate(), step
                fields["val"] = job.show(metrics)
                progress.write(f"step {step}: train loss {loss_avg:.4f}, validation {job.show(metrics)} "
                               f"({time.perf_counter() - t_start:.0f} s)")
                if job.done(metrics):
                    stopped = "target"
                    progress.update(step, fields)
                    break
            if args.save_every and step % args.save_every == 0:
                t0 = time.perf_counter()
                train_time += t0 - t_train0
                t_train0 = t0
                save(step, train_time)
                save_time = time.perf_counter() - t0
            progress.update(step, fields)
    except KeyboardInterrupt:
        stopped = "interrupt"
        progress.write("interrupted: evaluating and saving the checkpoint (interrupt again to abort)")
    train_time += time.perf_counter() - t_train0
    return stopped, step, train_time, tokens, step_secs, (metrics if metrics_step == step else None)


def _run_training(job_cls, args) -> int:
    from .models.checkpoint import load_checkpoint, load_params, restore_rng, save_checkpoint

    t_start = time.perf_counter()
    time_limit = args.time_limit if args.time_limit and args.time_limit > 0 else None
    if args.steps is None and time_limit is None:
        print("fastrnn: give --steps or a --time-limit", file=sys.stderr)
        return 2
    path = args.checkpoint or f"{job_cls.kind}.npz"
    ckpt = None
    if args.resume:
        try:
            ckpt = load_checkpoint(path)
        except (FileNotFoundError, ValueError) as e:
            print(f"fastrnn: --resume: {e}", file=sys.stderr)
            return 2
        if ckpt.config.get("kind") != job_cls.kind:
            print(f"fastrnn: --resume: {path} is a {ckpt.config.get('kind')} checkpoint, not {job_cls.kind}",
                  file=sys.stderr)
            return 2
    job = job_cls(args, ckpt)
    step, train_time = 0, 0.0
    if ckpt is not None:
        load_params(job.model, ckpt.params)
        job.opt.load_state_dict(ckpt.optim)
        restore_rng(job.rng, ckpt.rng)
        for name, gen in job.model.rngs().items():
            restore_rng(gen, ckpt.rngs[name])
        job.restore(ckpt)
        step = ckpt.step
        train_time = float(ckpt.config.get("train_time", 0.0))
    quiet = args.quiet

    def log(msg):
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    log(job.describe())
    log(f"{'resuming at' if ckpt else 'starting at'} step {step}; "
        f"{'steps ' + str(args.steps) if args.steps else 'no step limit'}, "
        f"{'time limit ' + str(time_limit) + ' s' if time_limit else 'no time limit'}; checkpoint {path}")
    if args.steps is not None and step >= args.steps:
        log(f"the checkpoint is already at step {step} >= --steps {args.steps}")

    def save(step, train_time):
        cfg = job.config()
        cfg["train_time"] = train_time
        save_checkpoint(path, params=job.model.params, optimizer=job.opt, step=step, rng=job.rng, config=cfg,
                        rngs=job.model.rngs(), extra=job.extra())

    progress = _Progress(not quiet, args.steps, time_limit, step)
    tuner = _ThreadTuner(args.thread_spec, progress.write if not quiet else (lambda msg: None))
    numpy_blas = _NumpyBlasOneThread().__enter__()
    old_term = _catch_sigterm()
    try:
        stopped, step, train_time, tokens, step_secs, metrics = _loop(
            job, args, progress, tuner, time_limit, t_start, step, train_time, save)
        if metrics is None:
            metrics = job.evaluate()
        report = job.final_report(metrics)
        save(step, train_time)
    finally:
        progress.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        numpy_blas.__exit__(None, None, None)
        tuner.close()
    if stopped == "nan":
        return 1
    why = {"steps": "step limit", "time": "time limit", "target": "target accuracy reached",
           "interrupt": "interrupted", "nan": "non-finite loss"}[stopped]
    print(report)
    print(f"step {step} ({why}); {_fmt_rate(tokens / max(step_secs, 1e-9))} {job.unit}/s; "
          f"wall time {time.perf_counter() - t_start:.1f} s; checkpoint {path}")
    if not quiet:
        print("sample:\n" + job.sample())
    return 0


# ============================================================================ generate / translate
def _cmd_train_charlm(args) -> int:
    return _run_training(_CharLMJob, args)


def _cmd_train_seq2seq(args) -> int:
    return _run_training(_Seq2SeqJob, args)


def _load_model(path, kind):
    from .models.checkpoint import load_checkpoint, load_params

    try:
        ckpt = load_checkpoint(path)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"fastrnn: {e}") from None
    cfg = ckpt.config
    if cfg.get("kind") != kind:
        raise SystemExit(f"fastrnn: {path} is a {cfg.get('kind')} checkpoint, not {kind}")
    if kind == "charlm":
        from .models.charlm import CharLM, Vocab

        m = cfg["model"]
        model = CharLM(Vocab(cfg["vocab"]), embed_size=m["embed_size"], hidden_size=m["hidden_size"],
                       num_layers=m["num_layers"], cell=m["cell"], dropout=m["dropout"], dtype=m["dtype"])
    else:
        from .models.seq2seq import Seq2Seq

        m = dict(cfg["model"])
        model = Seq2Seq(m.pop("vocab_size"), embed_size=m["embed_size"], hidden_size=m["hidden_size"],
                        decoder_size=m["decoder_size"], attention_size=m["attention_size"], cell=m["cell"],
                        dtype=m["dtype"])
    load_params(model, ckpt.params)
    return model, ckpt


def _cmd_generate(args) -> int:
    if args.threads is not None:
        from . import set_num_threads
        set_num_threads(args.threads)
    model, _ = _load_model(args.checkpoint, "charlm")
    try:
        text = model.generate(args.prefix, args.length, temperature=args.temperature, seed=args.seed)
    except ValueError as e:
        print(f"fastrnn: --prefix: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(args.prefix + text + ("\n" if not text.endswith("\n") else ""))
    return 0


def _cmd_translate(args) -> int:
    from .models.tasks import DigitTask, decode_digits, encode_digits

    model, ckpt = _load_model(args.checkpoint, "seq2seq")
    d = ckpt.config["data"]
    task = DigitTask(d["task"], d["min_len"], d["max_len"], valid_size=d["valid_size"], test_size=d["test_size"])
    inputs = list(args.inputs)
    if inputs == ["-"]:
        inputs = [line.strip() for line in sys.stdin if line.strip()]
    if not inputs:  # no input: show held-out examples and the test accuracy
        for s in task.test[:5]:
            out = model.translate([s])[0]
            mark = "ok" if np.array_equal(out, task.target(s)) else "WRONG"
            print(f"{decode_digits(s)} -> {decode_digits(out)}  [{mark}]")
        acc = model.accuracy(task, task.test)
        print(f"held-out exact-sequence accuracy ({d['task']}): {100 * acc:.2f}% on {len(task.test)} test sources")
        return 0
    try:
        sources = [encode_digits(s) for s in inputs]
    except ValueError as e:
        print(f"fastrnn: {e}", file=sys.stderr)
        return 2
    empty = [i for i, s in enumerate(sources) if s.size == 0]
    if empty:
        print(f"fastrnn: input {empty[0] + 1} has no digits", file=sys.stderr)
        return 2
    for text, out in zip(inputs, model.translate(sources)):
        print(f"{''.join(text.split())} -> {decode_digits(out)}")
    return 0


# ============================================================================ parser
def _positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _threads_spec(text):
    return "auto" if text == "auto" else _positive_int(text)


def _nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v >= 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return v


def _fraction(text):
    v = _nonneg_float(text)
    if v >= 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return v


def _common_train_args(p, kind, time_limit, eval_every, save_every, train_defaults):
    g = p.add_argument_group("run")
    g.add_argument("--steps", type=_positive_int, help="stop after this many optimizer steps in total "
                   "(default: run until the time limit)")
    g.add_argument("--time-limit", type=_nonneg_float, default=time_limit, metavar="SECONDS",
                   help=f"stop so that the whole command ends within this many seconds (default {time_limit:g}; 0 = none)")
    g.add_argument("--eval-every", type=int, default=eval_every, metavar="N",
                   help=f"validate every N steps (default {eval_every}; 0 = only at the end)")
    g.add_argument("--save-every", type=int, default=save_every, metavar="N",
                   help=f"write the checkpoint every N steps (default {save_every}; 0 = only at the end)")
    g.add_argument("--checkpoint", metavar="FILE.npz", help=f"checkpoint path (default {kind}.npz)")
    g.add_argument("--resume", action="store_true", help="continue from --checkpoint (model and data "
                   "settings come from it)")
    g.add_argument("--threads", type=_threads_spec, default="auto", dest="thread_spec", metavar="N|auto",
                   help="fastrnn thread count, or 'auto' (default): the faster of fastrnn's default and 1, "
                        "measured while training (a fixed count gives bit-reproducible runs)")
    g.add_argument("--quiet", action="store_true", help="no progress output")
    o = p.add_argument_group("optimization (Adam)")
    o.add_argument("--lr", type=_nonneg_float, help=f"learning rate (default {train_defaults['lr']:g})")
    o.add_argument("--clip", type=_nonneg_float, help=f"gradient norm clip (default {train_defaults['clip']:g})")
    o.add_argument("--lr-decay", type=_fraction, metavar="FRACTION",
                   help="decay the learning rate linearly over this last fraction of the budget "
                        f"(default {train_defaults['lr_decay']:g})")
    o.add_argument("--min-lr", type=_fraction, metavar="FRACTION",
                   help=f"the decayed learning rate's floor as a fraction of --lr (default {train_defaults['min_lr']:g})")
    o.add_argument("--seed", type=int, help=f"seed of the model and the data order (default {train_defaults['seed']})")


def add_commands(subparsers) -> None:
    """Register ``train`` (charlm, seq2seq), ``generate`` and ``translate``."""
    t = subparsers.add_parser("train", help="train a model: charlm (character LM) or seq2seq (attention)")
    ts = t.add_subparsers(dest="target", required=True, metavar="{charlm,seq2seq}")

    c = ts.add_parser("charlm", help="character language model (embedding -> LSTM/GRU -> linear)",
                      description="Train a character language model with truncated BPTT. Prints the final "
                                  "validation loss (nats/char on the last --val-fraction of the text).")
    d = CHARLM_DEFAULTS
    m = c.add_argument_group("data and model")
    m.add_argument("--corpus", metavar="FILE", help="UTF-8 text file (default: the embedded generated corpus)")
    m.add_argument("--val-fraction", type=_fraction, metavar="FRACTION", help=f"last fraction held out for validation (default {d['val_fraction']:g})")
    m.add_argument("--cell", choices=["lstm", "gru"], help=f"recurrent cell (default {d['cell']})")
    m.add_argument("--hidden", type=_positive_int, help=f"hidden size (default {d['hidden']})")
    m.add_argument("--layers", type=_positive_int, help=f"recurrent layers (default {d['layers']})")
    m.add_argument("--embed", type=_positive_int, help=f"embedding size (default {d['embed']})")
    m.add_argument("--dropout", type=_fraction, help=f"dropout (default {d['dropout']:g})")
    m.add_argument("--seq-len", type=_positive_int, help=f"BPTT chunk length (default {d['seq_len']})")
    m.add_argument("--batch", type=_positive_int, help=f"streams per batch (default {d['batch']})")
    _common_train_args(c, "charlm", 570.0, 500, 500, CHARLM_TRAIN_DEFAULTS)
    c.set_defaults(func=_cmd_train_charlm)

    s = ts.add_parser("seq2seq", help="attention encoder-decoder on a synthetic digit task",
                      description="Train a Seq2Seq model (bidirectional encoder, decoder cell with additive "
                                  "attention) on reversing or sorting digit strings. Prints the exact-sequence "
                                  "accuracy on held-out test sources.")
    d = SEQ2SEQ_DEFAULTS
    m = s.add_argument_group("task and model")
    m.add_argument("--task", choices=["reverse", "sort"], help=f"the task (default {d['task']})")
    m.add_argument("--min-len", type=_positive_int, help=f"shortest source (default {d['min_len']})")
    m.add_argument("--max-len", type=_positive_int, help=f"longest source (default {d['max_len']})")
    m.add_argument("--cell", choices=["gru", "lstm"], help=f"encoder and decoder cell (default {d['cell']})")
    m.add_argument("--hidden", type=_positive_int, help=f"encoder hidden size per direction (default {d['hidden']})")
    m.add_argument("--decoder-hidden", type=_positive_int, help=f"decoder hidden size (default {d['decoder_hidden']})")
    m.add_argument("--attention", type=_positive_int, help=f"attention hidden size (default {d['attention']})")
    m.add_argument("--embed", type=_positive_int, help=f"embedding size (default {d['embed']})")
    m.add_argument("--batch", type=_positive_int, help=f"batch size (default {d['batch']})")
    m.add_argument("--valid-size", type=_positive_int, help=f"validation sources (default {d['valid_size']})")
    m.add_argument("--test-size", type=_positive_int, help=f"test sources (default {d['test_size']})")
    m.add_argument("--target-accuracy", type=_nonneg_float, default=0.995, metavar="FRACTION",
                   help="stop when the validation accuracy reaches this (default 0.995)")
    _common_train_args(s, "seq2seq", 570.0, 250, 250, SEQ2SEQ_TRAIN_DEFAULTS)
    s.set_defaults(func=_cmd_train_seq2seq)

    g = subparsers.add_parser("generate", help="sample text from a charlm checkpoint")
    g.add_argument("--checkpoint", default="charlm.npz", metavar="FILE.npz", help="default charlm.npz")
    g.add_argument("--prefix", default="", help="text to start from (printed first)")
    g.add_argument("-n", "--length", type=int, default=500, help="characters to generate (default 500)")
    g.add_argument("--temperature", type=_nonneg_float, default=0.8, help="sampling temperature, 0 = greedy (default 0.8)")
    g.add_argument("--seed", type=int, default=None, help="sampling seed (default: random)")
    g.add_argument("--threads", type=_positive_int, help="thread count (default: fastrnn's)")
    g.set_defaults(func=_cmd_generate)

    r = subparsers.add_parser("translate", help="run a seq2seq checkpoint on digit strings")
    r.add_argument("inputs", nargs="*", help="digit strings; '-' reads one per line from stdin; none: show "
                   "held-out examples and the test accuracy")
    r.add_argument("--checkpoint", default="seq2seq.npz", metavar="FILE.npz", help="default seq2seq.npz")
    r.set_defaults(func=_cmd_translate)
