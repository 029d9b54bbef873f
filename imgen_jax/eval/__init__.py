"""Evaluation of instructed music edits with the Instruct-MusicGen paper's metrics (`imgen eval`).

    sisdr.py       SI-SDR / SI-SDRi (torchmetrics' definition)
    mel.py         mel spectrogram of the official evaluation (16 kHz, 128 HTK bands), mel L1
    ssim.py        SSIM of mel spectrograms (torchmetrics / scikit-image Gaussian SSIM)
    fad.py         Fréchet distance of Gaussians, pooled embedding statistics
    embedders.py   built-in FAD embedders: `encodec` (the model's EnCodec latents), `logmel`
    plugins.py     plug-in embedders / CLAP / classifiers / separators: NAME[=ARG], module:factory, file.py:factory[=ARG]
    nets/          the paper's networks in Flax (VGGish, Cnn14; CLAP, HTDemucs) and their weights files
    networks.py    those networks as plug-ins: vggish=FILE, cnn14=FILE, clap=FILE, htdemucs=FILE (--vggish ...)
    separation.py  a separator on mono clips: P-Demucs and the htdemucs baseline row
    metrics/       the metric registry: one file per metric (name, direction, compute, where it applies)
    scoring.py     what a metric sees (Context, Clip, Example) and the Scorer of a run
    report.py      the table as text, CSV, JSON and a bar chart (directions / units from the registry)
    runner.py      run_eval: the evaluation set, batched edits, scoring, resume, the table

Runtime code here never imports torch: the networks are JAX ports, loaded from converted weights files
(convert/*_weights.py); no weights ship with imgen_jax.
"""

from imgen_jax.eval.fad import GaussianStats, fad, frechet_distance
from imgen_jax.eval.mel import MelConfig, mel_l1, mel_spectrogram
from imgen_jax.eval.sisdr import si_sdr, si_sdri
from imgen_jax.eval.ssim import ssim

__all__ = ["si_sdr", "si_sdri", "MelConfig", "mel_spectrogram", "mel_l1", "ssim", "GaussianStats", "fad",
           "frechet_distance"]
