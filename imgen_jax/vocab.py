"""The shared vocabulary: tasks, stems (instrument classes), instruction texts and decoding defaults.

Every module that names a task, a stem, an instruction or a default decoding setting imports it from
here (data readers and triplets, the synthetic training data, the editor's instruction parser, the
training config, the evaluation, the CLI and `imgen_jax.generate.SamplingConfig`). Plain data only:
importing this module imports nothing else.

Instructions have two forms: the official text the released model was trained on
("Music piece. Instruct: No Drums.", `instruction`) and a plain form users type ("remove drums",
`plain_instruction`); `imgen_jax.instruct.edit.normalise_instruction` maps either one to the official text.
"""

from __future__ import annotations

# ---- tasks -----------------------------------------------------------------------------------

TASKS = ("add", "remove", "extract")          # the paper's tasks (training, evaluation, `imgen eval --task`)
EXTRA_TASKS = ("generate", "replace")         # beyond the paper (TripletConfig(extra_tasks=True))

# ---- stems -----------------------------------------------------------------------------------

FOUR_STEMS = ("Drums", "Bass", "Piano", "Guitar")  # the `4_stems` setting (and the synthetic data's stems)
STEM_SETS = ("4_stems", "all")
# Slakh2100's `inst_class` vocabulary (General MIDI families, plus Drums).
SLAKH_CLASSES = (
    "Piano", "Chromatic Percussion", "Organ", "Guitar", "Bass", "Strings", "Strings (continued)", "Brass",
    "Reed", "Pipe", "Synth Lead", "Synth Pad", "Sound Effects", "Ethnic", "Percussive", "Drums",
)
# MoisesDB stem names -> the class names used in instructions.
MOISESDB_CLASSES = {
    "bass": "Bass", "drums": "Drums", "guitar": "Guitar", "piano": "Piano", "percussion": "Percussion",
    "bowed_strings": "Bowed Strings", "wind": "Wind", "other_keys": "Other Keys", "other_plucked": "Other Plucked",
    "other": "Other", "vocals": "Vocals",
}
# MUSDB18(-HQ) stem files -> classes. `other` (everything else) gets the class "Other", which triplets never make
# a target (as MoisesDB's); `vocals` gets "Vocals", outside the released model's Slakh training vocabulary.
MUSDB_CLASSES = {"vocals": "Vocals", "drums": "Drums", "bass": "Bass", "other": "Other"}
# Every stem an instruction may name: the four stems first, then Slakh's and MoisesDB's other classes.
STEMS = tuple(dict.fromkeys(FOUR_STEMS + SLAKH_CLASSES + tuple(MOISESDB_CLASSES.values())))
# Other spellings users type (lower case) -> the stem.
STEM_ALIASES = {"drum": "Drums", "vocal": "Vocals", "voice": "Vocals", "keys": "Piano", "guitars": "Guitar"}

# ---- instructions ----------------------------------------------------------------------------

OFFICIAL_PREFIX = "Music piece. Instruct: "
OFFICIAL_VERBS = {"add": "Add", "remove": "No", "extract": "Only", "generate": "Generate", "replace": "Replace"}
# The official text of each task ({stem}: the target class; {old}: the replaced class of `replace`).
INSTRUCTION = {
    **{t: f"{OFFICIAL_PREFIX}{v} {{stem}}." for t, v in OFFICIAL_VERBS.items() if t != "replace"},
    "replace": f"{OFFICIAL_PREFIX}Replace {{old}} with {{stem}}.",
}
# The plain form: "<task> <stem in lower case>" ("remove drums"); other verbs accepted for a task.
PLAIN_INSTRUCTION = {t: f"{t} {{stem}}" for t in ("add", "remove", "extract", "generate")}
PLAIN_SYNONYMS = {
    "no": "remove", "without": "remove", "delete": "remove", "drop": "remove",
    "only": "extract", "isolate": "extract", "keep only": "extract",
}


def instruction(task: str, stem: str, old: str | None = None) -> str:
    """The official instruction text of `task` for target class `stem` (`old`: the class `replace` swaps out)."""
    return INSTRUCTION[task].format(stem=stem, old=old)


def plain_instruction(task: str, stem: str) -> str:
    """The plain instruction users type for `task` and `stem`: "remove drums"."""
    return PLAIN_INSTRUCTION[task].format(stem=stem.lower())


# ---- decoding defaults -----------------------------------------------------------------------

GUIDANCE_SCALE = 3.0          # classifier-free guidance (MusicGen and the official Instructor)
TEMPERATURE = 1.0
GENERATE_TOP_K = 250          # MusicGen's top_k (generation, training samples)
EDIT_TOP_K = 100              # the official Instructor's top_k (edits, evaluation)
GENERATE_WINDOW_FRAMES = 1500  # MusicGen's long-form window: 30 s at 50 frames/s
GENERATE_STRIDE_FRAMES = 900   # extend_stride 18 s at 50 frames/s
EVAL_WINDOW_FRAMES = 500      # `imgen eval` edit windows: the official checkpoint's positional table (10 s)
EVAL_STRIDE_FRAMES = 250      # half a window

__all__ = [
    "TASKS", "EXTRA_TASKS", "FOUR_STEMS", "STEM_SETS", "SLAKH_CLASSES", "MOISESDB_CLASSES", "MUSDB_CLASSES", "STEMS",
    "STEM_ALIASES",
    "OFFICIAL_PREFIX", "OFFICIAL_VERBS", "INSTRUCTION", "PLAIN_INSTRUCTION", "PLAIN_SYNONYMS", "instruction",
    "plain_instruction", "GUIDANCE_SCALE", "TEMPERATURE", "GENERATE_TOP_K", "EDIT_TOP_K", "GENERATE_WINDOW_FRAMES",
    "GENERATE_STRIDE_FRAMES", "EVAL_WINDOW_FRAMES", "EVAL_STRIDE_FRAMES",
]
