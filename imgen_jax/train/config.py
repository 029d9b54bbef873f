"""The training config: `base_config()` (every field, documented) and `validate()`.

The files under configs/ start from `base_config()` and override fields; `train.py` applies
command-line overrides (`--config.train.steps=100`) on top. A config is plain data (an
ml_collections ConfigDict) and is saved with every checkpoint as JSON.
"""

from __future__ import annotations

import json
import os

import ml_collections

from imgen_jax import vocab
from imgen_jax.errors import ImgenError
from imgen_jax.vocab import TASKS

DATA_SOURCES = ("triplets", "synthetic")
DTYPES = ("float32", "bfloat16")
REMAT = ("none", "dots", "full")
BASE_SIZES = ("", "small", "medium", "large")


def base_config() -> ml_collections.ConfigDict:
    """All fields with the official Instruct-MusicGen training hyper-parameters as defaults."""
    c = ml_collections.ConfigDict()
    c.seed = 0                      # adapters init, data order, samples: everything derives from (seed, step)
    c.workdir = "runs/default"      # checkpoints/, metrics.jsonl, tb/, samples/, model/ (the trained model dir)

    c.model = ml_collections.ConfigDict()
    c.model.base_dir = ""           # converted MusicGen directory (`imgen convert`): lm + encodec + t5 + spiece.model
    c.model.base_size = ""          # "small" | "medium" | "large": the base `imgen plan` compiles (no weights); "" = base_dir's
    c.model.remat = "none"          # layer rematerialisation in training: "none" | "dots" (keep matmul outputs) | "full"
    c.model.unroll_layers = False   # emit every LM / fusion layer in the train step instead of a layer loop: CPU step
                                    # 10-20% faster (bench/train_step.py); not for TPU (docs/scaling.md: compile 10x,
                                    # compiler-estimated HBM traffic 2.1x)
    c.model.frozen_dtype = "float32"  # "bfloat16": the frozen LM and T5 weights and compute in bf16 (EnCodec stays fp32)
    c.model.fusion = "both"         # "both" (official: audio fusion + text LoRA) | "audio" (no LoRA) | "text" (no audio fusion)
    c.model.adapter_layers = -1     # audio fusion on the last N LM layers; -1 = all (official)
    c.model.lora_r = 32
    c.model.lora_alpha = 64.0
    c.model.pos_emb_frames = 501    # condition frames the positional table covers (official: 500 + the special frame)
    c.model.mask_text_padding = True  # key-mask padded text tokens (see step.py: fixed-length padding needs it)
    c.model.text_dropout = 0.3      # P(a micro-batch trains on the null text): the official CFG dropout (LM in train mode)

    c.data = ml_collections.ConfigDict()
    c.data.source = "triplets"      # "triplets": imgen_jax.data.make_triplet_loader over data.dir; "synthetic": tests
    c.data.dir = ""                 # Slakh2100 / mini-Slakh / MoisesDB / MUSDB18-HQ / stems-folder root, or its
                                    # `imgen data build` output (faster)
    c.data.layout = "auto"          # layout of data.dir: auto (detected), slakh, moisesdb, musdb or stems
    c.data.tasks = TASKS
    c.data.stems = "4_stems"
    c.data.clip_seconds = 5.0
    c.data.sample_rate = 32000      # must equal the base model's EnCodec rate
    c.data.text_max_length = 32     # instructions are padded to this many T5 tokens (static shapes)
    c.data.train_split = "train"
    c.data.eval_split = "validation"

    c.train = ml_collections.ConfigDict()
    c.train.steps = 5000            # optimizer updates
    c.train.batch_size = 32         # global batch per update (over all hosts, devices and micro-batches)
    c.train.grad_accum = 4          # micro-batches per update (official: batch 8 x accumulate_grad_batches 4 = 32)
    c.train.lr = 1e-4               # AdamW peak learning rate
    c.train.weight_decay = 0.05
    c.train.b1 = 0.9
    c.train.b2 = 0.999
    c.train.eps = 1e-8
    c.train.warmup_steps = 100      # linear warmup from 0 (the official DEFAULT_WARMUP_STEPS), then half a cosine
    c.train.schedule_steps = 10000  # where the cosine reaches 0 (official num_training_steps 10000); 0 = train.steps
    c.train.grad_clip_norm = 2.0    # global-norm clipping (official gradient_clip_val); 0 = no clipping
    c.train.log_every = 10          # metrics to stdout / jsonl / TensorBoard every N steps

    c.eval = ml_collections.ConfigDict()
    c.eval.every = 500              # validation loss every N steps (0 = never; always at the end when > 0)
    c.eval.batches = 4
    c.eval.batch_size = 8

    c.samples = ml_collections.ConfigDict()
    c.samples.every = 1000          # edited samples every N steps (0 = never; always at the end when > 0)
    c.samples.count = 2             # validation clips edited each time
    c.samples.seconds = 0.0         # length of the edited excerpt; 0 = the whole clip
    c.samples.top_k = vocab.GENERATE_TOP_K
    c.samples.guidance = vocab.GUIDANCE_SCALE

    c.checkpoint = ml_collections.ConfigDict()
    c.checkpoint.every = 500        # save every N steps (and at the end)
    c.checkpoint.keep = 3           # keep the N most recent checkpoints

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1                # mesh axis sizes; one of them may be -1 = the remaining devices
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    c.mesh.fsdp_frozen = True       # split the frozen base over fsdp too (False: only adapters + optimizer state)
    c.mesh.distributed = False      # call jax.distributed.initialize() (multi-host / multi-process; see train/mesh.py)
    c.mesh.coordinator = ""         # distributed: process 0's "host:port"; "" = $JAX_COORDINATOR_ADDRESS, else auto
    c.mesh.num_processes = 0        # distributed: number of processes; 0 = $JAX_NUM_PROCESSES, else auto
    c.mesh.process_id = -1          # distributed: this process, 0..num_processes-1; -1 = $JAX_PROCESS_ID, else auto
    c.mesh.init_timeout = 300       # distributed: seconds to wait for all processes (start-up, compiling, final save)
    c.mesh.heartbeat_timeout = 100  # distributed: seconds until a silent (killed) process is lost: the others exit
    c.mesh.rules = (("heads", "tensor"), ("mlp", "tensor"), ("vocab", "tensor"))  # logical axis -> mesh axis

    c.output = ml_collections.ConfigDict()
    c.output.model_dir = ""         # where the trained model directory goes; "" = WORKDIR/model
    return c


def validate(c: ml_collections.ConfigDict) -> None:
    """One ImgenError naming the first wrong field, or None."""

    def need(ok: bool, field: str, msg: str) -> None:
        if not ok:
            raise ImgenError(f"config.{field}: {msg}")

    need(isinstance(c.model.base_dir, str) and bool(c.model.base_dir), "model.base_dir",
         "not set; pass --config.model.base_dir=DIR (a converted MusicGen directory, `imgen convert`)")
    need(c.model.frozen_dtype in DTYPES, "model.frozen_dtype", f"{c.model.frozen_dtype!r} is not one of {DTYPES}")
    need(c.model.remat in REMAT, "model.remat", f"{c.model.remat!r} is not one of {REMAT}")
    need(c.model.base_size in BASE_SIZES, "model.base_size", f"{c.model.base_size!r} is not one of {BASE_SIZES}")
    from imgen_jax.instruct.fusion import MODES as FUSION_MODES

    need(c.model.fusion in FUSION_MODES, "model.fusion", f"{c.model.fusion!r} is not one of {FUSION_MODES}")
    need(c.model.adapter_layers == -1 or c.model.adapter_layers >= 1, "model.adapter_layers", "must be -1 (all) or >= 1")
    need(c.model.lora_r >= 1, "model.lora_r", "must be >= 1")
    need(c.model.pos_emb_frames >= 2, "model.pos_emb_frames", "must be >= 2")
    need(c.data.source in DATA_SOURCES, "data.source", f"{c.data.source!r} is not one of {DATA_SOURCES}")
    if c.data.source == "triplets":
        need(isinstance(c.data.dir, str) and bool(c.data.dir), "data.dir", "not set; pass --config.data.dir=DIR")
    from imgen_jax.data.tracks import LAYOUTS

    layout = c.data.get("layout", "auto")
    need(layout in ("auto", *LAYOUTS), "data.layout", f"{layout!r} is not auto nor one of {LAYOUTS}")
    tasks = tuple(c.data.tasks)
    need(bool(tasks) and all(t in TASKS for t in tasks), "data.tasks", f"{list(tasks)} must be a non-empty subset of {TASKS}")
    need(c.data.clip_seconds > 0, "data.clip_seconds", "must be > 0")
    need(c.data.sample_rate > 0, "data.sample_rate", "must be > 0")
    need(c.data.text_max_length >= 2, "data.text_max_length", "must be >= 2")
    need(c.train.steps >= 1, "train.steps", "must be >= 1")
    need(c.train.batch_size >= 1, "train.batch_size", "must be >= 1")
    need(c.train.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(c.train.batch_size % c.train.grad_accum == 0, "train.batch_size",
         f"{c.train.batch_size} is not divisible by train.grad_accum ({c.train.grad_accum})")
    need(c.train.schedule_steps >= 0, "train.schedule_steps", "must be >= 0 (0 = train.steps)")
    need(0.0 <= c.model.text_dropout < 1.0, "model.text_dropout", "must be in [0, 1)")
    need(c.train.lr > 0, "train.lr", "must be > 0")
    need(c.train.weight_decay >= 0, "train.weight_decay", "must be >= 0")
    need(0 <= c.train.warmup_steps, "train.warmup_steps", "must be >= 0")
    need(c.train.log_every >= 1, "train.log_every", "must be >= 1")
    need(c.train.grad_clip_norm >= 0, "train.grad_clip_norm", "must be >= 0 (0 = off)")
    for name in ("eval.every", "samples.every", "checkpoint.every"):
        sec, key = name.split(".")
        need(c[sec][key] >= 0, name, "must be >= 0")
    need(c.eval.batches >= 1 and c.eval.batch_size >= 1, "eval", "batches and batch_size must be >= 1")
    need(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    need(c.samples.count >= 0 and c.samples.seconds >= 0, "samples", "count and seconds must be >= 0")
    sizes = [c.mesh.data, c.mesh.fsdp, c.mesh.tensor]
    need(all(s == -1 or s >= 1 for s in sizes) and sizes.count(-1) <= 1, "mesh",
         f"axis sizes data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} must be >= 1, at most one -1")
    for rule in c.mesh.rules:
        need(len(rule) == 2 and rule[1] in ("data", "fsdp", "tensor", None), "mesh.rules",
             f"{rule!r} must be (logical_axis, 'data' | 'fsdp' | 'tensor' | None)")


def samples_sampling(c: ml_collections.ConfigDict):
    """The decoding settings of the training samples (`samples.top_k`, `samples.guidance`, the rest the edit
    defaults) as the shared imgen_jax.generate.SamplingConfig; the sample writer sets the seed per step."""
    from imgen_jax.generate import SamplingConfig

    return SamplingConfig.for_edit(top_k=int(c.samples.top_k), guidance_scale=float(c.samples.guidance))


def to_json(c: ml_collections.ConfigDict) -> dict:
    """The config as a JSON-ready dict (tuples become lists)."""
    return json.loads(c.to_json())


def output_model_dir(c: ml_collections.ConfigDict) -> str:
    return os.path.abspath(c.output.model_dir or os.path.join(c.workdir, "model"))


def sibling_config(config_file: str, name: str) -> ml_collections.ConfigDict:
    """`get_config()` of the config file `name` in the folder of `config_file` (a config that derives from
    another, e.g. configs/moisesdb.py from configs/slakh.py; config files are loaded by path, not imported)."""
    import importlib.util
    import os

    path = os.path.join(os.path.dirname(os.path.abspath(config_file)), name)
    if not os.path.isfile(path):
        raise ImgenError(f"{config_file}: derives from {path}, which does not exist")
    spec = importlib.util.spec_from_file_location(f"_imgen_config_{os.path.splitext(name)[0]}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


__all__ = ["base_config", "validate", "samples_sampling", "to_json", "output_model_dir", "sibling_config", "TASKS"]
