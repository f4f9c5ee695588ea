"""The character-model trainer (fastlstm.charlm: run loop, Trainer, checkpoints, model) on small
generated text: the loss falls; checkpoints round-trip exactly; an interrupted-then-resumed run matches an
uninterrupted one step for step; seeded generation is reproducible; generating with
``LSTM.step`` equals re-running forward on the whole prefix. Tiny models keep it fast.
"""

import hashlib
import io
import json
import os
import signal

import numpy as np
import pytest

from fastlstm.charlm import checkpoints
from fastlstm.charlm.checkpoints import CheckpointError, find_checkpoint, load_checkpoint, model_from_checkpoint
from fastlstm.charlm.data import DataError
from fastlstm.charlm.model import INPUT_MODES, CharModel
from fastlstm.charlm.options import LOSS_TARGETS, resolve_options
from fastlstm.charlm.run import prepare_run, run_training
from fastlstm.charlm.threads import compute_threads
from lstm_testing import assert_close

WORDS = ("the king is dead and the queen is in the castle . a witch sees the heath and "
         "the thane of cawdor sleeps no more . ").split()


def make_text(n_chars=6000, seed=0):
    """Seeded pseudo-English: words drawn from a small list, with line breaks."""
    rng = np.random.default_rng(seed)
    out, size = [], 0
    while size < n_chars:
        w = WORDS[rng.integers(len(WORDS))]
        out.append(w + ("\n" if rng.random() < 0.1 else " "))
        size += len(out[-1])
    return "".join(out)[:n_chars]


TINY = dict(hidden_size=16, num_layers=2, embed_dim=8, seq_len=16, batch_size=8, lr=1e-2,
            eval_every=5, sample_length=20, dropout=0.1)


@pytest.fixture
def text_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(make_text(), encoding="utf-8")
    return p


def start(text_file, out, resume=False, overwrite=False, **kw):
    given = dict(TINY, text=str(text_file))
    given.update(kw)
    return prepare_run(given, out, resume=resume, overwrite=overwrite)


def run(trainer, **kw):
    return run_training(trainer, progress="none", write_plot=False, **kw)


def test_loss_falls_within_a_few_dozen_steps(text_file, tmp_path):
    tr = start(text_file, tmp_path / "run", max_steps=40, eval_every=40, lr=3e-2, batch_size=16)
    first_val = tr.evaluate()
    res = run(tr)
    losses = res["losses"]
    assert len(losses) == 40 and res["status"] == "done"
    assert np.mean(losses[-5:]) < losses[0] - 0.8, losses
    assert res["val_loss"] < first_val - 0.8
    assert abs(losses[0] - np.log(len(tr.vocab))) < 0.3  # starts near uniform


def test_tutorial_preset_loss_falls(text_file, tmp_path):
    tr = start(text_file, tmp_path / "run", preset="tutorial", seq_len=20, batch_size=16, lr=1e-2,
               max_steps=40, eval_every=40)
    o = tr.opts
    assert (o["lowercase"], o["target"], o["input_mode"], o["greedy"]) == (True, "last", "scaled", True)
    assert tr.model.embedding is None and tr.model.lstm.input_size == 1
    first_val = tr.evaluate()
    res = run(tr)
    assert res["val_loss"] < first_val - 0.3  # the tutorial's scaled input learns slowly


def test_checkpoint_round_trip_is_exact(text_file, tmp_path):
    out = tmp_path / "run"
    tr = start(text_file, out, max_steps=7)
    run(tr)
    meta, arrays = load_checkpoint(out)
    assert meta["step"] == 7 and meta["vocab"] == tr.vocab.chars
    for k, p in tr.model.params.items():
        assert arrays["model." + k].dtype == p.dtype
        assert np.array_equal(arrays["model." + k], p), k
    for k, a in tr.adam.state_arrays().items():
        assert np.array_equal(arrays[k], a), k
    # the json is plain JSON and the npz has no pickles
    json.loads((out / "checkpoint.json").read_text())
    np.load(out / "checkpoint.npz", allow_pickle=False).close()
    back = start(text_file, out, resume=True)
    assert back.steps_done == 7 and back.chars_seen == tr.chars_seen
    for k, p in tr.model.params.items():
        assert np.array_equal(back.model.params[k], p), k
    for k, a in tr.adam.state_arrays().items():
        assert np.array_equal(back.adam.state_arrays()[k], a), k
    assert back.adam.t == tr.adam.t
    assert back.data_rng.bit_generator.state == tr.data_rng.bit_generator.state
    assert back.model.rng_states() == tr.model.rng_states()
    # generate accepts the folder, the json and the npz
    for path in (out, out / "checkpoint.json", out / "checkpoint.npz"):
        m = model_from_checkpoint(*load_checkpoint(path))
        for k, p in tr.model.params.items():
            assert np.array_equal(m.params[k], p)


@pytest.mark.parametrize("preset", ["default", "tutorial"])
def test_interrupted_then_resumed_matches_uninterrupted(text_file, tmp_path, preset):
    kw = dict(preset=preset, max_steps=14)
    if preset == "tutorial":
        kw.update(seq_len=16, batch_size=512)  # ~10 steps per epoch: the resume crosses an epoch
    whole = start(text_file, tmp_path / "a", **kw)
    ref = run(whole)["losses"]
    assert len(ref) == 14
    if preset == "tutorial":
        assert whole.steps_per_epoch < 14
    first = start(text_file, tmp_path / "b", **dict(kw, max_steps=6))
    part1 = run(first)["losses"]
    second = start(text_file, tmp_path / "b", resume=True, **kw)
    part2 = run(second)["losses"]
    assert part1 + part2 == ref  # bit for bit, step for step
    for k, p in whole.model.params.items():
        assert np.array_equal(second.model.params[k], p), k
    # the metrics log holds each step exactly once
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == list(range(1, 15))


def test_keyboard_interrupt_saves_and_resume_matches(text_file, tmp_path):
    whole = start(text_file, tmp_path / "a", max_steps=10)
    ref = run(whole)["losses"]

    def stop_at_4(trainer, loss):
        if trainer.steps_done == 4:
            raise KeyboardInterrupt

    tr = start(text_file, tmp_path / "b", max_steps=10)
    res = run(tr, step_callback=stop_at_4)
    assert res["status"] == "interrupted" and res["step"] == 4
    assert load_checkpoint(tmp_path / "b")[0]["step"] == 4
    rest = run(start(text_file, tmp_path / "b", resume=True, max_steps=10))["losses"]
    assert res["losses"] + rest == ref


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name == "nt", reason="POSIX signals")
def test_ctrl_c_finishes_the_step_saves_and_stops(text_file, tmp_path):
    def ctrl_c_at_3(trainer, loss):
        if trainer.steps_done == 3:
            os.kill(os.getpid(), signal.SIGINT)

    tr = start(text_file, tmp_path / "b", max_steps=10)
    res = run(tr, step_callback=ctrl_c_at_3)
    assert res["status"] == "interrupted" and res["step"] == 3
    assert load_checkpoint(tmp_path / "b")[0]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_run_folder_contents(text_file, tmp_path):
    out = tmp_path / "run"
    tr = start(text_file, out, max_steps=10)
    run_training(tr, progress="none", write_plot=True)
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in vals] == [5, 10]
    assert all(set(r["sample"]) <= set(tr.vocab.chars) and len(r["sample"]) == 20 for r in vals)
    try:
        import matplotlib  # noqa: F401
        assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    except ImportError:
        assert not (out / "loss.png").exists()
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]
    # best.json: the state of the lowest validation loss; generate prefers it in a folder
    best = min(vals, key=lambda r: r["val_loss"])
    meta, _ = load_checkpoint(out, prefer_best=True)
    assert meta["step"] == best["step"]
    assert find_checkpoint(out, prefer_best=True).name == "best.json"
    assert find_checkpoint(out).name == "checkpoint.json"
    with pytest.raises(CheckpointError, match="--resume"):
        start(text_file, out)  # a new run does not overwrite an existing checkpoint
    again = start(text_file, out, overwrite=True, max_steps=3)
    assert (out / "best.json").exists()  # nothing removed before the run starts
    run(again)
    assert load_checkpoint(out, prefer_best=True)[0]["step"] == 3  # the old run's best is gone


def test_resume_with_other_sizes_or_text_is_refused(text_file, tmp_path):
    out = tmp_path / "run"
    run(start(text_file, out, max_steps=2))
    with pytest.raises(CheckpointError, match="--hidden-size"):
        start(text_file, out, resume=True, hidden_size=32)
    other = tmp_path / "other.txt"
    other.write_text("XYZ" * 400)
    with pytest.raises(CheckpointError, match="vocabulary"):
        start(other, out, resume=True)


def test_text_shorter_than_one_window(tmp_path):
    p = tmp_path / "short.txt"
    p.write_text("abcdefghij" * 2)
    with pytest.raises(DataError, match="too short.*--seq-len"):
        prepare_run(dict(TINY, text=str(p), seq_len=50), tmp_path / "run")


@pytest.mark.parametrize("name,value,flag", [
    ("dropout", 1.5, "--dropout"),
    ("input_mode", "onehot", "--input"),
    ("target", "first", "--target"),
    ("dtype", "float16", "--dtype"),
    ("dtype", "no-such-type", "--dtype"),
    ("seq_len", 0, "--seq-len"),
])
def test_bad_options_are_value_errors_naming_the_flag(name, value, flag):
    with pytest.raises(ValueError, match=f"^{flag} must be"):
        resolve_options({name: value})


def test_command_line_choices_come_from_the_rules():
    from fastlstm import _config
    from fastlstm.charlm import cli

    actions = {}
    for sub in cli.build_parser()._subparsers._group_actions[0].choices.values():
        for action in sub._actions:
            actions.setdefault(action.dest, []).append(action.choices)
    assert actions["input_mode"] == [tuple(INPUT_MODES)]
    assert actions["target"] == [LOSS_TARGETS]
    assert actions["dtype"] == [("float32", "float64")]
    assert actions["backend"] == [("auto", *_config.BACKENDS)] * 2
    assert resolve_options({"dtype": "f8"})["dtype"] == "float64"  # stored by name in checkpoints


# ----------------------------------------------------------------------------- generation
def trained_model(dtype=np.float32):
    model = CharModel(12, hidden_size=16, num_layers=2, dropout=0.0, embed_dim=8, seed=3, dtype=dtype)
    rng = np.random.default_rng(0)
    for p in model.params.values():  # larger weights than the init: peaky, seed-sensitive output
        p += (0.5 * rng.standard_normal(p.shape)).astype(dtype)
    return model


def test_seeded_generation_is_reproducible():
    model = trained_model()
    a = model.generate([1, 2, 3], 200, temperature=1.0, seed=5)
    b = model.generate([1, 2, 3], 200, temperature=1.0, seed=5)
    c = model.generate([1, 2, 3], 200, temperature=1.0, seed=6)
    assert a == b and a != c
    assert len(a) == 200 and all(0 <= i < 12 for i in a)
    g1 = model.generate([1], 50, greedy=True, seed=1)
    assert g1 == model.generate([1], 50, greedy=True, seed=2) == model.generate([1], 50, temperature=0)
    k1 = model.generate([1, 2], 300, temperature=2.0, top_k=2, seed=1)
    streamed = []
    assert model.generate([1, 2], 300, temperature=2.0, top_k=2, seed=1, callback=streamed.append) == k1
    assert streamed == k1


def test_top_k_restricts_to_the_likeliest():
    model = trained_model(np.float64)
    prime = [4, 5]
    out = model.generate(prime, 1, temperature=1.0, top_k=1, seed=0)
    logits, _ = model.forward(np.array(prime)[:, None])
    assert out[0] == int(np.argmax(logits[-1, 0]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_generation_by_step_equals_forward_on_the_prefix(dtype):
    model = trained_model(dtype)
    prime = [3, 1, 4, 1, 5]
    gen = model.generate(prime, 30, temperature=1.0, seed=9)
    seq = prime + gen
    logits, _ = model.forward(np.array(seq)[:, None])  # the whole prefix at once
    state = None
    for t, i in enumerate(seq[:-1]):
        step_logits, state = model.step_logits(i, state)
        assert_close(step_logits, logits[t, 0], dtype, f"logits after {t + 1} characters")
    greedy = model.generate(prime, 20, greedy=True)
    full = prime + greedy
    logits, _ = model.forward(np.array(full)[:, None])
    assert greedy == [int(np.argmax(logits[t, 0])) for t in range(len(prime) - 1, len(full) - 1)]


def test_scaled_input_model_generates_by_step_like_forward():
    model = CharModel(9, hidden_size=8, num_layers=1, dropout=0.0, input_mode="scaled", seed=2,
                      dtype=np.float64)
    seq = [0, 8, 3, 3, 7]
    logits, _ = model.forward(np.array(seq)[:, None])
    state = None
    for t, i in enumerate(seq):
        lt, state = model.step_logits(i, state)
        assert_close(lt, logits[t, 0], np.float64, f"step {t}")


def test_sampling_follows_softmax_with_temperature():
    # dense weights zeroed: the logits are the bias whatever the state, so the draws are i.i.d.
    model = CharModel(5, hidden_size=4, num_layers=1, dropout=0.0, embed_dim=2, seed=0, dtype=np.float64)
    model.dense.params["weight"][...] = 0
    model.dense.params["bias"][...] = [0.0, 1.0, 2.0, -1.0, 0.5]
    n = 20000
    for temperature in (1.0, 0.5):
        draws = model.generate([0], n, temperature=temperature, seed=4)
        freq = np.bincount(draws, minlength=5) / n
        p = np.exp(model.dense.params["bias"] / temperature)
        p /= p.sum()
        assert np.all(np.abs(freq - p) < 4 * np.sqrt(p * (1 - p) / n) + 1e-3), (temperature, freq, p)
    top2 = model.generate([0], 2000, temperature=1.0, top_k=2, seed=1)
    assert set(top2) == {1, 2}


def test_resume_takes_its_duration_from_the_command_line(text_file, tmp_path):
    out = tmp_path / "run"
    run(start(text_file, out, max_steps=3))
    tr = prepare_run(dict(text=str(text_file), max_time=0.5), out, resume=True)
    assert tr.opts["max_steps"] is None and tr.opts["max_time"] == 0.5
    assert tr.opts["hidden_size"] == TINY["hidden_size"]  # the sizes come from the checkpoint
    res = run(tr)
    assert res["step"] > 3


@pytest.mark.parametrize("mode", ["numpy1", "all1", "none"])
def test_compute_threads_modes_restore_the_thread_counts(mode):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [(d["filepath"], d["num_threads"]) for d in threadpoolctl.threadpool_info()]
    with compute_threads(mode):
        pass
    assert [(d["filepath"], d["num_threads"]) for d in threadpoolctl.threadpool_info()] == before
    with pytest.raises(ValueError, match="FASTLSTM_TRAIN_BLAS"):
        with compute_threads("bogus"):
            pass


def test_train_blas_variable_is_read_through_config(monkeypatch):
    from fastlstm import _config

    monkeypatch.setenv(_config.TRAIN_BLAS_ENV, "bogus")
    with pytest.raises(_config.ConfigError, match="FASTLSTM_TRAIN_BLAS='bogus'"):
        with compute_threads():
            pass


def test_best_checkpoint_without_hard_links(text_file, tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(1, "Operation not permitted")
    monkeypatch.setattr(checkpoints.os, "link", no_link)
    out = tmp_path / "run"
    run(start(text_file, out, max_steps=5))
    meta, arrays = load_checkpoint(out, prefer_best=True)  # checksum verified
    assert meta["npz"] == "best.npz" and meta["step"] == 5
    assert os.stat(out / "best.npz").st_nlink == 1
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- file compatibility
def write_format_1_checkpoint(folder, text_file, steps_done=3):
    """A checkpoint laid out as format 1 is, written here without the package's writer: the
    reader, generation and --resume must keep accepting what earlier versions wrote."""
    chars = sorted(set(text_file.read_text(encoding="utf-8")))
    V, H, E, G = len(chars), TINY["hidden_size"], TINY["embed_dim"], 4 * TINY["hidden_size"]
    shapes = {"embedding.weight": (V, E), "dense.weight": (V, H), "dense.bias": (V,)}
    for k, inputs in ((0, E), (1, H)):
        shapes.update({f"lstm.weight_ih_l{k}": (G, inputs), f"lstm.weight_hh_l{k}": (G, H),
                       f"lstm.bias_ih_l{k}": (G,), f"lstm.bias_hh_l{k}": (G,)})
    rng = np.random.default_rng(0)
    arrays = {}
    for name, shape in shapes.items():
        arrays["model." + name] = (0.3 * rng.standard_normal(shape)).astype(np.float32)
        arrays["adam.m." + name] = np.zeros(shape, np.float32)
        arrays["adam.v." + name] = np.full(shape, 1e-4, np.float32)
    folder.mkdir()
    np.savez(folder / "checkpoint.npz", **arrays)
    options = dict(text=str(text_file), corpus="macbeth", encoding="utf-8", lowercase=False, preset="default",
                   hidden_size=H, num_layers=2, dropout=0.1, embed_dim=E, input_mode="embedding", seq_len=16,
                   target="all", batch_size=8, lr=1e-2, clip=5.0, epochs=None, max_time=None, max_steps=3,
                   eval_every=5, sample_length=20, temperature=0.8, greedy=False, seed=0, val_fraction=0.1,
                   dtype="float32", backend="auto")

    def pcg(seed):
        return np.random.default_rng(seed).bit_generator.state

    meta = {"format": "fastlstm-charmodel", "format_version": 1, "fastlstm_version": "0.1.0",
            "options": options, "vocab": chars, "source": str(text_file),
            "model": dict(vocab_size=V, hidden_size=H, num_layers=2, dropout=0.1, embed_dim=E,
                          input_mode="embedding"),
            "step": steps_done, "epoch": 0.1, "steps_per_epoch": 38, "elapsed": 1.5, "chars_seen": 384,
            "optimizer": {"t": steps_done, "lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.0},
            "rng": {"data": pcg(1), "dropout": pcg(2), "lstm_dropout": pcg(3)},
            "val_history": [{"step": steps_done, "time": 1.5, "val_loss": 3.0}],
            "saved_at": "2025-01-01T00:00:00", "npz": "checkpoint.npz",
            "npz_sha256": hashlib.sha256((folder / "checkpoint.npz").read_bytes()).hexdigest()}
    (folder / "checkpoint.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
    return arrays


def test_format_1_checkpoint_loads_generates_and_resumes(text_file, tmp_path, capsys):
    from fastlstm.charlm import cli

    out = tmp_path / "old"
    arrays = write_format_1_checkpoint(out, text_file)
    meta, loaded = load_checkpoint(out)
    model = model_from_checkpoint(meta, loaded)
    for k, p in model.params.items():
        assert np.array_equal(p, arrays["model." + k]), k
    assert len(model.generate([0], 15, seed=1)) == 15
    capsys.readouterr()
    assert cli.main(["generate", "--checkpoint", str(out), "--length", "12", "--seed", "1"]) == 0
    assert len(capsys.readouterr().out) == 12 + 1
    tr = prepare_run(dict(max_steps=6), out, resume=True)
    assert tr.steps_done == 3 and tr.adam.t == 3 and tr.chars_seen == 384
    res = run(tr)
    assert res["step"] == 6 and len(res["losses"]) == 3
    saved = json.loads((out / "checkpoint.json").read_text())
    assert saved["step"] == 6 and "steps_done" not in saved  # the file keeps its key


def _scripted_losses(monkeypatch, losses):
    """Validation losses from a list (by validation count) instead of the model."""
    from fastlstm.charlm.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda self: losses[len(self.scheduled_validations())])


def test_plateau_halves_the_rate_after_lr_patience_validations(text_file, tmp_path, monkeypatch):
    _scripted_losses(monkeypatch, [3.0, 2.0, 2.5, 2.4, 2.6, 1.0, 1.5, 1.6, 1.7, 1.8])
    tr = start(text_file, tmp_path / "p", max_steps=50, lr_patience=2, sample_length=0, restore_best=False)
    rates = []
    run(tr, step_callback=lambda t, loss: rates.append(t.adam.lr) if t.steps_done % 5 == 0 else None)
    lr = TINY["lr"]
    # the rate before each validation: 1-2 improve; 3, 4 do not (halved after the 4th); 5
    # does not; 6 is a best; 7, 8 do not (halved after the 8th); 9, 10 not (after the 10th)
    assert rates == [lr, lr, lr, lr, lr / 2, lr / 2, lr / 2, lr / 2, lr / 4, lr / 4]
    assert tr.lr_scale == 1 / 8
    meta = json.loads((tmp_path / "p" / "checkpoint.json").read_text())
    assert meta["schedule"] == {"lr_scale": 0.125, "plateau_bad": 0}


def test_constant_schedule_keeps_the_rate(text_file, tmp_path, monkeypatch):
    _scripted_losses(monkeypatch, [3.0, 3.1, 3.2, 3.3])
    tr = start(text_file, tmp_path / "c", max_steps=20, lr_schedule="constant", sample_length=0)
    run(tr)
    assert tr.adam.lr == TINY["lr"] and tr.lr_scale == 1.0


def test_patience_stops_early_and_a_resume_honours_it(text_file, tmp_path, monkeypatch):
    _scripted_losses(monkeypatch, [3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    tr = start(text_file, tmp_path / "e", max_steps=100, patience=3, sample_length=0, restore_best=False)
    result = run(tr)
    assert result["status"] == "stopped" and tr.steps_done == 25  # the 5th validation is the 3rd without a best
    again = start(text_file, tmp_path / "e", resume=True, max_steps=100, patience=3, sample_length=0)
    assert run(again)["status"] == "stopped" and again.steps_done == 25


def test_a_run_ends_in_its_best_state(text_file, tmp_path, monkeypatch):
    _scripted_losses(monkeypatch, [3.0, 2.0, 2.1, 2.2, 2.3, 2.4, 2.5])
    out = tmp_path / "r"
    tr = start(text_file, out, max_steps=100, patience=3, sample_length=0)
    said = io.StringIO()
    result = run_training(tr, progress="lines", write_plot=False, stream=said)
    assert result["status"] == "stopped" and result["restored_step"] == 10 and result["final_val_loss"] == 2.0
    assert result["val_loss"] == 2.3  # the last validation's, at step 25
    assert tr.steps_done == 10 and [r["step"] for r in tr.val_history] == [5, 10]
    best = np.load(out / "best.npz")
    final = np.load(out / "checkpoint.npz")
    assert sorted(best.files) == sorted(final.files)
    for k in best.files:
        assert np.array_equal(best[k], final[k]), k
    for k, p in tr.model.params.items():
        assert np.array_equal(p, best["model." + k]), k
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 10
    assert "restored the best state, step 10 (validation loss 2.0000)" in said.getvalue()
    # A run whose last validation is its best keeps its last state.
    _scripted_losses(monkeypatch, [3.0, 2.0, 1.0])
    tr = start(text_file, tmp_path / "k", max_steps=15, sample_length=0)
    assert run(tr)["restored_step"] is None and tr.steps_done == 15


def test_schedule_survives_resume_step_for_step(text_file, tmp_path, monkeypatch):
    losses = [3.0, 2.9, 3.1, 3.2, 3.3, 2.0, 2.5, 2.6, 2.7]
    _scripted_losses(monkeypatch, losses)
    kw = dict(max_steps=40, lr_patience=2, restore_best=False)
    whole = start(text_file, tmp_path / "a", **kw)
    ref = run(whole)["losses"]
    first = start(text_file, tmp_path / "b", **dict(kw, max_steps=17))  # between decays
    part1 = run(first)["losses"]
    second = start(text_file, tmp_path / "b", resume=True, **kw)
    assert (second.lr_scale, second.plateau_bad) == (first.lr_scale, first.plateau_bad)
    part2 = run(second)["losses"]
    assert part1 + part2 == ref
    assert second.adam.lr == whole.adam.lr and second.lr_scale == whole.lr_scale < 1
    for k, p in whole.model.params.items():
        assert np.array_equal(second.model.params[k], p), k


def test_schedule_options_are_checked(text_file, tmp_path):
    for kw, fragment in ((dict(lr_schedule="cosine!"), "--lr-schedule"), (dict(lr_patience=0), "--lr-patience"),
                         (dict(patience=-1), "--patience")):
        with pytest.raises(ValueError, match=fragment):
            start(text_file, tmp_path / "x", **kw)
