"""Training of the Instruct-MusicGen adapters: sharded, resumable, on a frozen converted MusicGen.

    python train.py --config=configs/slakh.py --config.model.base_dir=models/musicgen-large \
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh

Modules:
  config.py      the base ml_collections config (every field documented) and its validation
  mesh.py        device mesh, multi-host start, logical-axis sharding rules, global batches
  data.py        training batches: the instruction-triplet loader (imgen_jax.data) or a synthetic
                 source, tokenised instructions, per-host shards
  step.py        the jitted train / eval steps (EnCodec + T5 + LM inside; grads of the adapters only)
  checkpoint.py  orbax CheckpointManager: params, optimizer state, step, data state, config
  metrics.py     metrics to stdout, metrics.jsonl and TensorBoard
  samples.py     edited samples (wav + spectrogram) with the current adapters
  loop.py        `train(config)`: the whole run, resumable at any point
"""

from imgen_jax.train.loop import train

__all__ = ["train"]
