"""`imgen generate` and `imgen edit` end to end on a tiny converted model, and their one-line errors.

The model: a transformers MusicGen with random weights (Hugging Face layout, tiny sentencepiece
tokenizer), plus random Instruct adapters written as an official PyTorch adapter file, all
converted with `imgen convert SRC --adapters FILE`. Outputs are checked for shape, sample rate and
finiteness; the numerics of each stage are covered by the parity tests of the other files.
"""

import os

import numpy as np
import pytest
import soundfile as sf

from imgen_jax.cli import main as imgen
from imgen_jax.instruct.edit import Editor, normalise_instruction
from imgen_jax.errors import ImgenError


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dirs):
    return tiny_model_dirs


def _mix(path, seconds=0.5, sr=44100, channels=2):
    t = np.arange(int(seconds * sr)) / sr
    wav = np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in (220, 330)[:channels]], axis=1)
    sf.write(path, wav.astype(np.float32), sr)
    return str(path)


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    for n in needles:
        assert n in err[-1], err[-1]


def test_generate_writes_wav_and_spectrogram(model_dirs, tmp_path):
    root, model = model_dirs
    out, png = tmp_path / "gen.wav", tmp_path / "gen.png"
    assert imgen(["generate", "--model", str(root / "plain"), "--prompt", "lofi beat", "--seconds", "0.1",
                  "--out", str(out), "--spectrogram", str(png), "--seed", "3"]) == 0
    wav, sr = sf.read(out)
    sr_model = model.config.audio_encoder.sampling_rate
    assert sr == sr_model
    frames = int(0.1 * 200)  # tiny EnCodec: 200 frames/s, hop 4
    assert wav.shape == (frames * 4,) and np.isfinite(wav).all()
    assert png.stat().st_size > 1000


def test_generate_errors(model_dirs, tmp_path, capsys):
    root, _ = model_dirs
    base = ["generate", "--model", str(root / "plain"), "--prompt", "x", "--out", str(tmp_path / "o.wav")]
    assert imgen(base + ["--seconds", "0"]) == 2
    _one_line_error(capsys, "--seconds")
    assert imgen(base + ["--seconds", "100000"]) == 2
    _one_line_error(capsys, "--seconds")
    assert imgen(["generate", "--model", str(root / "plain"), "--prompt", "  ", "--out", str(tmp_path / "o.wav")]) == 2
    _one_line_error(capsys, "--prompt is empty")
    assert imgen(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x", "--out", str(tmp_path / "o.wav")]) == 2
    _one_line_error(capsys, "model directory not found")
    assert imgen(["generate", "--model", str(root / "hf"), "--prompt", "x", "--out", str(tmp_path / "o.wav")]) == 2
    _one_line_error(capsys, "imgen convert")
    assert imgen(["generate", "--model", str(root / "plain"), "--prompt", "x", "--out", str(tmp_path / "no" / "o.wav")]) == 2
    _one_line_error(capsys, "does not exist")
    assert not os.path.exists(tmp_path / "o.wav")


def test_edit_batch_resamples_and_writes(model_dirs, tmp_path):
    root, model = model_dirs
    a = _mix(tmp_path / "a.wav", 0.5, 44100, 2)
    b = _mix(tmp_path / "b.flac", 0.3, 16000, 1)
    out, png = tmp_path / "edited.wav", tmp_path / "ba.png"
    assert imgen(["edit", "--model", str(root / "instruct"), "--input", a, "--input", b,
                  "--instruction", "remove drums", "--instruction", "Music piece. Instruct: Only Piano.",
                  "--out", str(out), "--spectrogram", str(png), "--window-frames", "40", "--stride-frames", "20"]) == 0
    sr_model = model.config.audio_encoder.sampling_rate
    for path, seconds in ((tmp_path / "edited_0.wav", 0.5), (tmp_path / "edited_1.wav", 0.3)):
        wav, sr = sf.read(path)
        assert sr == sr_model
        assert abs(len(wav) - seconds * sr_model) <= 4 and np.isfinite(wav).all()
    assert png.stat().st_size > 1000


def test_edit_windows_cover_long_inputs_and_are_deterministic(model_dirs):
    root, _ = model_dirs
    ed = Editor.load(str(root / "instruct"))
    sr = ed.sample_rate
    wav = (0.2 * np.sin(np.arange(sr) / sr * 2 * np.pi * 110)).astype(np.float32)[None]  # 1 s = 200 frames
    from imgen_jax.instruct.edit import EditConfig
    from imgen_jax.generate import SamplingConfig

    cfg = EditConfig(SamplingConfig.for_edit(seed=5), window_frames=60, stride_frames=40)
    codes = ed.mg.encode_audio(wav[None])
    one = np.asarray(ed.edit_codes(codes, ["add bass"], cfg))
    two = np.asarray(ed.edit_codes(codes, ["add bass"], cfg))
    assert one.shape == codes.shape and np.array_equal(one, two)
    other = np.asarray(ed.edit_codes(codes, ["add bass"], EditConfig(SamplingConfig.for_edit(seed=6), window_frames=60, stride_frames=40)))
    assert not np.array_equal(one, other)


def test_edit_errors(model_dirs, tmp_path, capsys):
    root, _ = model_dirs
    good = _mix(tmp_path / "good.wav")
    out = tmp_path / "o.wav"
    base = ["edit", "--model", str(root / "instruct"), "--out", str(out)]

    assert imgen(base + ["--input", good, "--instruction", "make it jazzier"]) == 2
    _one_line_error(capsys, "cannot parse the instruction", "accepted:")
    assert imgen(base + ["--input", good, "--instruction", "add kazoo"]) == 2
    _one_line_error(capsys, "unknown stem")

    nan = tmp_path / "nan.wav"
    sf.write(nan, np.array([0.0, np.nan, 0.1] * 100, np.float32), 32000, subtype="FLOAT")
    assert imgen(base + ["--input", str(nan), "--instruction", "add drums"]) == 2
    _one_line_error(capsys, "nan.wav", "NaN")

    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 32000)
    assert imgen(base + ["--input", str(empty), "--instruction", "add drums"]) == 2
    _one_line_error(capsys, "empty.wav", "empty")

    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 10)
    assert imgen(base + ["--input", str(junk), "--instruction", "add drums"]) == 2
    _one_line_error(capsys, "junk.wav", "unreadable audio")

    assert imgen(["edit", "--model", str(root / "plain"), "--out", str(out), "--input", good,
                  "--instruction", "add drums"]) == 2
    _one_line_error(capsys, "no Instruct-MusicGen adapters")
    assert not out.exists()


def test_instruction_forms():
    assert normalise_instruction("add drums") == "Music piece. Instruct: Add Drums."
    assert normalise_instruction("Remove the bass.") == "Music piece. Instruct: No Bass."
    assert normalise_instruction("extract piano") == "Music piece. Instruct: Only Piano."
    assert normalise_instruction("only synth lead") == "Music piece. Instruct: Only Synth Lead."
    assert normalise_instruction("Music piece. Instruct: No Guitar.") == "Music piece. Instruct: No Guitar."
    for bad in ("", "drums", "add", "louder please"):
        with pytest.raises(ImgenError):
            normalise_instruction(bad)


def test_one_vocabulary_for_instructions():
    """The editor's parser, the triplets and the synthetic training data all speak imgen_jax.vocab: every plain
    instruction of every task and stem parses to the official text, which parses to itself; the training data's
    instructions are vocabulary texts of its own task and stem."""
    from imgen_jax import vocab
    from imgen_jax.train.data import SyntheticTriplets

    for task in vocab.PLAIN_INSTRUCTION:
        for stem in vocab.STEMS:
            official = vocab.instruction(task, stem)
            assert official.startswith(vocab.OFFICIAL_PREFIX) and official.endswith(f" {stem}.")
            assert normalise_instruction(vocab.plain_instruction(task, stem)) == official
            assert normalise_instruction(official) == official
    for alias, stem in vocab.STEM_ALIASES.items():
        assert normalise_instruction(f"remove {alias}") == vocab.instruction("remove", stem)
    for plain, task in vocab.PLAIN_SYNONYMS.items():
        assert normalise_instruction(f"{plain} bass") == vocab.instruction(task, "Bass")
    batch = next(SyntheticTriplets(batch_size=6, num_samples=400, sample_rate=4000, seed=3))
    assert batch["instruction"] == [vocab.instruction(t, s) for t, s in zip(batch["task"], batch["stem"])]
    assert set(batch["stem"]) <= set(vocab.FOUR_STEMS) and set(batch["task"]) <= set(vocab.TASKS)


def test_export_adapters_round_trip(model_dirs, tmp_path):
    import torch

    root, _ = model_dirs
    assert imgen(["export-adapters", str(root / "instruct"), "--out", str(tmp_path / "back.pt")]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)
    orig = torch.load(root / "adapters.pt", weights_only=True)
    assert sorted(back) == sorted(orig)
    for k in orig:
        assert torch.equal(back[k], orig[k]), k


def test_edit_defaults_follow_the_adapters_positional_table(model_dirs, tmp_path):
    """`imgen edit` with no window flags on adapters whose positional table is shorter than 500 frames (as the
    README's demo model, 201): the window comes from the table, a longer input is edited in several windows,
    and the output has the input's length. An explicit window beyond the table is a one-line error."""
    import shutil

    from imgen_jax.instruct.fusion import FusionConfig, init_adapters, save_adapters
    from imgen_jax.models.lm import load_lm
    from imgen_jax.weights import module_weights

    root, _ = model_dirs
    short = tmp_path / "short"
    shutil.copytree(root / "plain", short)
    fcfg = FusionConfig.for_lm(load_lm(str(short)).cfg, pos_emb_frames=41)
    save_adapters(short, fcfg, module_weights(init_adapters(fcfg, seed=3)))
    ed = Editor.load(str(short))
    assert ed.max_window == 40
    inp = _mix(tmp_path / "long.wav", seconds=0.5, sr=ed.sample_rate, channels=1)  # 100 frames > 40
    out = tmp_path / "edited.wav"
    assert imgen(["edit", "--model", str(short), "--input", inp, "--instruction", "remove drums", "--out", str(out)]) == 0
    wav, sr = sf.read(out)
    assert sr == ed.sample_rate and abs(len(wav) - int(0.5 * sr)) <= 4 and np.isfinite(wav).all()
    assert imgen(["edit", "--model", str(short), "--input", inp, "--instruction", "remove drums", "--out",
                  str(tmp_path / "x.wav"), "--window-frames", "500"]) == 2
