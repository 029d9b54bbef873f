"""mini-Slakh: a small, deterministic, offline-built dataset in the exact Slakh2100 on-disk layout.

Each track is a Bach chorale from music21's public-domain corpus (its Soprano / Alto / Tenor / Bass
parts), arranged for a band and rendered with the General-MIDI soundfont that pretty_midi ships
(TimGM6mb.sf2) through tinysoundfont, one stem at a time:

    Piano   (GM 0-7)    soprano + alto + tenor, held as written
    Guitar  (GM 24-30)  the alto / tenor / bass+12 chord strummed on the beat subdivision
    Bass    (GM 32-39)  the bass part an octave down (notes below E1 folded back up)
    Drums   (is_drum)   kick / snare with hi-hat or ride and tambourine on the 16ths of the piece's
                        metre, crash every 4 bars
    + on about half of the tracks one more stem from another class (Strings (continued), Organ,
      Brass, Reed or Pipe) doubling the soprano melody.

Programs, drum kit, tempo, velocities and stem order vary per track, drawn from `seed`. The piece is
looped to fill `seconds`. Mixing follows Slakh2100: every stem is normalised to -13 LUFS
(ITU-R BS.1770-4 integrated loudness), the stems are summed, and one overall gain brings the mix peak
to -1 dBFS; that gain is applied to every stem too, so mix = sum of stems.

Layout (as Slakh2100):

    OUT/mini_slakh.json                     the report returned by render_mini_slakh
    OUT/{train,validation,test}/TrackNNNNN/ track numbers run on across the splits (Track00001, ...)
        metadata.yaml  mix.flac  all_src.mid  stems/S00.flac ...  MIDI/S00.mid ...

metadata.yaml has Slakh2100's keys (UUID, audio_dir, lmd_midi_dir, midi_dir, normalization_factor,
normalized, overall_gain, stems: {S00: {audio_rendered, inst_class, integrated_loudness, is_drum,
midi_program_name, midi_saved, plugin_name, program_num}}, target_peak); `lmd_midi_dir`, Slakh's path of the
source MIDI file, holds the music21 corpus name of the chorale (e.g. 'bach/bwv389.mxl'); drums are
program_num 128, midi_program_name 'Drums', as in Slakh2100.
All audio is mono 16-bit FLAC at `sample_rate`; every stem has exactly as many samples as the mix.
The same arguments give the same bytes (no timestamps; UUIDs derive from seed and track index).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

import numpy as np

from imgen_jax.errors import ImgenError
from imgen_jax.files import atomic_dir

SPLITS = ("train", "validation", "test")
INSTALL_TSF = "pip install --no-deps tinysoundfont==0.3.7"
NORMALIZATION_LUFS = -13.0  # Slakh2100's normalization_factor
TARGET_PEAK_DB = -1.0  # Slakh2100's target_peak
SOUNDFONT_NAME = "TimGM6mb.sf2"
MAX_TRACKS = 2100
MIN_SECONDS, MAX_SECONDS = 2.0, 600.0

# Slakh2100 inst_class / midi_program_name of the programs used here (slakh-utils midi_inst_values).
PROGRAM_NAMES = {
    0: "Acoustic Grand Piano", 1: "Bright Acoustic Piano", 2: "Electric Grand Piano", 4: "Electric Piano 1",
    5: "Electric Piano 2", 6: "Harpsichord", 7: "Clavinet",
    16: "Drawbar Organ", 19: "Church Organ", 21: "Accordion",
    24: "Acoustic Guitar (nylon)", 25: "Acoustic Guitar (steel)", 26: "Electric Guitar (jazz)",
    27: "Electric Guitar (clean)", 29: "Overdriven Guitar", 30: "Distortion Guitar",
    32: "Acoustic Bass", 33: "Electric Bass (finger)", 34: "Electric Bass (pick)", 35: "Fretless Bass",
    36: "Slap Bass 1", 38: "Synth Bass 1", 39: "Synth Bass 2",
    48: "String Ensemble 1", 49: "String Ensemble 2", 52: "Choir Aahs",
    56: "Trumpet", 60: "French Horn", 65: "Alto Sax", 68: "Oboe", 71: "Clarinet", 73: "Flute",
}
CLASS_RANGES = (  # GM program -> Slakh inst_class (the classes that PROGRAM_NAMES uses)
    (0, 7, "Piano"), (16, 23, "Organ"), (24, 31, "Guitar"), (32, 39, "Bass"),
    (48, 55, "Strings (continued)"), (56, 63, "Brass"), (64, 71, "Reed"), (72, 79, "Pipe"),
)
PIANO_PROGRAMS = (0, 1, 2, 4, 5, 6, 7)
GUITAR_PROGRAMS = (24, 25, 26, 27, 29, 30)
BASS_PROGRAMS = (32, 33, 34, 35, 36, 38, 39)
EXTRA_PROGRAMS = (48, 49, 52, 16, 19, 21, 56, 60, 65, 68, 71, 73)
DRUM_KITS = (0, 16, 24, 25, 40)  # TimGM6mb bank 128: Standard, Power, Electronic, TR 808, Brush
GROOVES = ("hat16", "ride8", "hat8")
KICK, SNARE, CLOSED_HAT, OPEN_HAT, CRASH, RIDE, TAMBOURINE = 36, 38, 42, 46, 49, 51, 54
SATB = ("Soprano", "Alto", "Tenor", "Bass")
MAX_REST_QUARTERS = 2.0  # chorales whose voices rest longer than this are skipped


def inst_class(program: int, is_drum: bool = False) -> str:
    """Slakh2100 inst_class of a General-MIDI program (0-based) or of a drum track."""
    if is_drum:
        return "Drums"
    for lo, hi, name in CLASS_RANGES:
        if lo <= program <= hi:
            return name
    raise ValueError(f"program {program} is not used by mini-Slakh")


# ----------------------------------------------------------------------------- dependencies


def soundfont_path() -> str:
    """Path of the General-MIDI soundfont that pretty_midi ships (TimGM6mb.sf2); ImgenError if absent."""
    try:
        import pretty_midi
    except ImportError:
        raise ImgenError("mini-Slakh needs pretty_midi (it ships the soundfont): pip install pretty_midi") from None
    path = os.path.join(os.path.dirname(pretty_midi.__file__), SOUNDFONT_NAME)
    if not os.path.isfile(path):
        raise ImgenError(f"{path}: General-MIDI soundfont not found; reinstall pretty_midi: "
                         "pip install --force-reinstall --no-deps pretty_midi")
    return path


def _tinysoundfont():
    try:
        import tinysoundfont
    except ImportError:
        raise ImgenError(f"mini-Slakh needs tinysoundfont: {INSTALL_TSF}") from None
    return tinysoundfont


def chorale_paths() -> list[tuple[str, str]]:
    """[(corpus name like 'bach/bwv10.7.mxl', absolute path)] of music21's Bach corpus, sorted by name."""
    try:
        import music21
        from music21 import corpus
    except ImportError:
        raise ImgenError("mini-Slakh needs music21 with its corpus: pip install music21") from None
    root = os.path.dirname(os.path.abspath(music21.corpus.__file__))
    paths = []
    try:
        found = corpus.getComposer("bach")
    except Exception:  # noqa: BLE001 - a broken corpus install reads as "no corpus"
        found = []
    for p in found:
        p = os.path.abspath(str(p))
        if p.endswith(".mxl") and os.path.isfile(p):
            paths.append((os.path.relpath(p, root).replace(os.sep, "/"), p))
    if not paths:
        raise ImgenError(f"{root}: music21's corpus has no Bach chorales; reinstall music21 with its corpus: "
                         "pip install --force-reinstall music21")
    return sorted(paths)


# ----------------------------------------------------------------------------- the score


class Piece:
    """A chorale as plain numbers (offsets and durations in quarter notes).

    voices: {'Soprano'|'Alto'|'Tenor'|'Bass': [(onset, duration, midi pitch)]}
    bars:   [(offset, actual length, nominal bar length, beat length, beat count, compound metre,
              lead: where the nominal bar starts relative to offset, < 0 for a pickup bar)]
    length: the piece's length (its highest time) in quarters.
    """

    def __init__(self, name: str, voices: dict, bars: list, length: float):
        self.name, self.voices, self.bars, self.length = name, voices, bars, float(length)


def load_piece(name: str, path: str) -> Piece | None:
    """Parse a chorale with music21; None unless it has Soprano, Alto, Tenor and Bass parts, none of which
    rests for more than MAX_REST_QUARTERS (so every stem plays throughout)."""
    from music21 import converter, meter, stream

    score = converter.parse(path)
    parts = {p.partName: p for p in score.parts}
    if not all(v in parts for v in SATB):
        return None
    voices = {}
    for v in SATB:
        notes = []
        for n in parts[v].stripTies().flatten().notes:
            dur = float(n.quarterLength)
            if dur <= 0:
                continue
            for p in n.pitches:
                notes.append((float(n.offset), dur, int(p.midi)))
        voices[v] = sorted(notes)
    bars, ts = [], None
    for m in parts["Soprano"].getElementsByClass(stream.Measure):
        found = m.getElementsByClass(meter.TimeSignature)
        if found:
            ts = found[0]
        if ts is None:
            ts = m.getContextByClass(meter.TimeSignature) or meter.TimeSignature("4/4")
        actual = float(m.duration.quarterLength)
        if actual <= 0:
            continue
        nominal = float(ts.barDuration.quarterLength)
        lead = actual - nominal if not bars and actual < nominal else 0.0  # a pickup ends where its bar ends
        bars.append((float(m.offset), actual, nominal, float(ts.beatDuration.quarterLength), int(ts.beatCount),
                     ts.beatDivisionCount == 3, lead))
    length = float(score.highestTime)
    if length < 8 or not bars or any(len(voices[v]) < 8 for v in SATB):
        return None
    if max(_longest_rest(voices[v], length) for v in SATB) > MAX_REST_QUARTERS:
        return None  # a stem would fall silent for a while (staggered entries, long rests)
    return Piece(name, voices, bars, length)


def _longest_rest(notes, length: float) -> float:
    """Longest stretch (quarters) without a sounding note, counting the wrap-around when looping."""
    longest, end = 0.0, 0.0
    for on, dur, _ in notes:
        longest = max(longest, on - end)
        end = max(end, on + dur)
    return max(longest, length - end + (notes[0][0] if notes else length))


def _tile(notes, period: float, end: float):
    """Repeat [(onset, dur, ...)] every `period` quarters and cut at `end` quarters."""
    out, k = [], 0
    while k * period < end:
        for n in notes:
            on = n[0] + k * period
            if on >= end:
                break
            out.append((on, min(n[1], end - on)) + tuple(n[2:]))
        k += 1
    return out


# ----------------------------------------------------------------------------- arrangement


class Stem:
    """One instrument of a track: its notes in seconds [(start, end, pitch, velocity)] and its program."""

    def __init__(self, program: int, is_drum: bool, notes: list, kit: int = 0):
        self.program, self.is_drum, self.kit = int(program), bool(is_drum), int(kit)
        self.notes = notes
        self.inst_class = inst_class(program, is_drum)
        self.program_name = "Drums" if is_drum else PROGRAM_NAMES[program]


def _clean(notes, end_s: float):
    """Sort, clip to [0, end_s), and cut overlapping notes of the same pitch at the next onset."""
    notes = sorted((max(0.0, s), min(e, end_s), p, v) for s, e, p, v in notes if s < end_s and e > s)
    last = {}
    out = []
    for s, e, p, v in notes:
        j = last.get(p)
        if j is not None and out[j][1] > s:
            ps, _, pp, pv = out[j]
            out[j] = (ps, s, pp, pv)
        last[p] = len(out)
        out.append((s, e, p, v))
    return [n for n in out if n[1] - n[0] > 1e-3]


def arrange(piece: Piece, rng: np.random.Generator, seconds: float) -> tuple[float, list[Stem]]:
    """(quarter-note tempo in BPM, the band's stems) for `seconds` of `piece`, choices drawn from `rng`."""
    bpm = float(rng.integers(84, 127))
    spq = 60.0 / bpm  # seconds per quarter
    end_q = seconds / spq
    v = {name: _tile(notes, piece.length, end_q) for name, notes in piece.voices.items()}
    bars = _tile(piece.bars, piece.length, end_q)

    def vel(base, n):
        return np.clip(base + rng.integers(-8, 9, size=n), 30, 127).astype(int)

    stems = []
    # piano: soprano, alto, tenor as written
    ps = [(on, d, p) for name in ("Soprano", "Alto", "Tenor") for on, d, p in v[name]]
    vs = vel(int(rng.integers(78, 100)), len(ps))
    stems.append(Stem(int(rng.choice(PIANO_PROGRAMS)),
                      False, [(on * spq, (on + d) * spq, p, int(x)) for (on, d, p), x in zip(ps, vs)]))
    # guitar: strum the alto / tenor / bass+12 chord on every beat subdivision
    program = int(rng.choice(GUITAR_PROGRAMS))
    strum = float(rng.uniform(0.008, 0.02))
    base = int(rng.integers(72, 96))
    steps = []
    for off, actual, nominal, beat, count, compound, lead in bars:
        step = beat / 3 if compound else beat / 2
        if rng.random() < 0.5 and not compound:
            step = beat  # some bars strum on the beat only
        start = off + lead
        t = start
        while t < off + actual - 1e-6:
            if t >= off - 1e-6:
                steps.append((t, step))
            t += step
    idx = {name: 0 for name in ("Alto", "Tenor", "Bass")}

    def sounding(name, t):
        notes = v[name]
        i = idx[name]
        while i < len(notes) and notes[i][0] + notes[i][1] <= t + 1e-6:
            i += 1
        idx[name] = i
        return [p for on, d, p in notes[i:i + 3] if on <= t + 1e-6 < on + d]

    gnotes = []
    for n_step, (t, step) in enumerate(steps):
        chord = sorted(set(sounding("Alto", t) + sounding("Tenor", t) + [p + 12 for p in sounding("Bass", t)]))
        up = n_step % 2 == 1 and step < 1.0  # down-up strumming on subdivisions
        order = chord[::-1] if up else chord
        accent = 10 if abs((t - round(t))) < 1e-6 else 0
        for k, p in enumerate(order):
            s = t * spq + k * strum
            gnotes.append((s, (t + step) * spq, p, int(min(127, base + accent - (6 if up else 0)
                                                            + rng.integers(-5, 6)))))
    stems.append(Stem(program, False, gnotes))
    # bass: an octave down, notes below E1 folded back up
    bs = [(on, d, p - 12 if p - 12 >= 28 else p) for on, d, p in v["Bass"]]
    vs = vel(int(rng.integers(88, 110)), len(bs))
    stems.append(Stem(int(rng.choice(BASS_PROGRAMS)), False,
                      [(on * spq, (on + d) * spq, p, int(x)) for (on, d, p), x in zip(bs, vs)]))
    # drums: groove on the metre with a cymbal on every subdivision (kick / snare kept soft so that, after
    # loudness normalisation, the cymbals keep the stem well above near-silence between hits)
    kit = int(rng.choice(DRUM_KITS))
    groove = str(rng.choice(GROOVES))
    dnotes = []
    for b, (off, actual, nominal, beat, count, compound, lead) in enumerate(bars):
        start = off + lead
        slots = 6 if compound else 4  # 16th-note grid per beat
        hits = []
        for i in range(count):
            t = start + i * beat
            if i == 0 or (count == 4 and i == 2):
                hits.append((t, KICK, 75))
            elif count in (2, 4) and i % 2 == 1 or count == 3:
                hits.append((t, SNARE, 70))
            else:
                hits.append((t, KICK, 65))
            for j in range(slots):
                u = t + j * beat / slots
                if groove == "hat16":  # closed hat 16ths, open hat on the off-beat
                    hits.append((u, OPEN_HAT if j == slots // 2 else CLOSED_HAT, 120 if j % 2 == 0 else 100))
                elif j % 2 == 0 and groove == "ride8":  # ride 8ths, open hat closing the bar
                    last = i == count - 1 and j == slots - 2
                    hits.append((u, OPEN_HAT if last else RIDE, 127 if j == 0 else 110))
                elif j % 2 == 0:  # "hat8": closed hat on the beat, open hat on the off-beats
                    hits.append((u, CLOSED_HAT if j == 0 else OPEN_HAT, 120 if j == 0 else 110))
                if j % 2 == 1:  # tambourine on the off 16ths fills the gaps between hits
                    hits.append((u, TAMBOURINE, 100))
        if b % 4 == 0:
            hits.append((start, CRASH, 100))
        for t, note, x in hits:
            if off - 1e-6 <= t < off + actual - 1e-6:
                dnotes.append((t * spq, t * spq + 0.1, note, int(np.clip(x + rng.integers(-6, 7), 1, 127))))
    stems.append(Stem(0, True, dnotes, kit=kit))
    # sometimes one more class doubling the melody
    if rng.random() < 0.5:
        program = int(rng.choice(EXTRA_PROGRAMS))
        ms = v["Soprano"]
        vs = vel(int(rng.integers(75, 95)), len(ms))
        stems.append(Stem(program, False, [(on * spq, (on + d) * spq, p, int(x)) for (on, d, p), x in zip(ms, vs)]))
    for s in stems:
        s.notes = _clean(s.notes, seconds)
    order = rng.permutation(len(stems))
    return bpm, [stems[i] for i in order]


# ----------------------------------------------------------------------------- audio


def render_stem(stem: Stem, num_samples: int, sample_rate: int, sf2: str) -> np.ndarray:
    """Synthesize one stem offline with tinysoundfont: mono float32 [num_samples]."""
    tsf = _tinysoundfont()
    synth = tsf.Synth(samplerate=sample_rate)
    sfid = synth.sfload(sf2)
    chan = 9 if stem.is_drum else 0
    if stem.is_drum:
        synth.program_select(chan, sfid, 128, stem.kit, True)
    else:
        synth.program_select(chan, sfid, 0, stem.program)
    events = []  # (sample, 0 = off before 1 = on, pitch, velocity)
    for s, e, p, v in stem.notes:
        events.append((int(round(s * sample_rate)), 1, p, v))
        events.append((int(round(e * sample_rate)), 0, p, 0))
    events.sort()
    out = np.zeros((num_samples, 2), np.float32)
    pos = 0
    for at, kind, p, v in events:
        at = min(at, num_samples)
        if at > pos:
            out[pos:at] = np.frombuffer(synth.generate_simple(at - pos), np.float32).reshape(-1, 2)
            pos = at
        if pos >= num_samples:
            break
        if kind:
            synth.noteon(chan, p, v)
        else:
            synth.noteoff(chan, p)
    if pos < num_samples:
        out[pos:] = np.frombuffer(synth.generate_simple(num_samples - pos), np.float32).reshape(-1, 2)
    mono = out.mean(axis=1)
    fade = min(num_samples, int(0.02 * sample_rate))  # the clip ends mid-note: no click
    mono[num_samples - fade:] *= np.linspace(1.0, 0.0, fade, dtype=np.float32)
    return mono


def _biquad(b, a, x):
    from scipy.signal import lfilter

    return lfilter(np.asarray(b) / a[0], np.asarray(a) / a[0], x)


def integrated_loudness(x: np.ndarray, sample_rate: int) -> float:
    """ITU-R BS.1770-4 integrated loudness (LUFS) of mono audio x [T]: K-weighting, 400 ms blocks with
    75% overlap, absolute (-70 LUFS) and relative (-10 LU) gates. -inf for silence."""
    x = np.asarray(x, np.float64)
    # K-weighting: high shelf (+4 dB, 1500 Hz) then high pass (38 Hz), RBJ biquads as in pyloudnorm
    A, w0 = 10 ** (4.0 / 40), 2 * np.pi * 1500.0 / sample_rate
    alpha = np.sin(w0) / (2 * (1 / np.sqrt(2)))
    c = np.cos(w0)
    b = [A * ((A + 1) + (A - 1) * c + 2 * np.sqrt(A) * alpha), -2 * A * ((A - 1) + (A + 1) * c),
         A * ((A + 1) + (A - 1) * c - 2 * np.sqrt(A) * alpha)]
    a = [(A + 1) - (A - 1) * c + 2 * np.sqrt(A) * alpha, 2 * ((A - 1) - (A + 1) * c),
         (A + 1) - (A - 1) * c - 2 * np.sqrt(A) * alpha]
    y = _biquad(b, a, x)
    w0 = 2 * np.pi * 38.0 / sample_rate
    alpha, c = np.sin(w0) / (2 * 0.5), np.cos(w0)
    y = _biquad([(1 + c) / 2, -(1 + c), (1 + c) / 2], [1 + alpha, -2 * c, 1 - alpha], y)
    block, step = int(0.4 * sample_rate), int(0.1 * sample_rate)
    if len(y) < block:
        z = np.array([np.mean(y ** 2)])
    else:
        csum = np.concatenate([[0.0], np.cumsum(y ** 2)])
        starts = np.arange(0, len(y) - block + 1, step)
        z = (csum[starts + block] - csum[starts]) / block
    with np.errstate(divide="ignore"):
        lk = -0.691 + 10 * np.log10(z)
    z = z[lk > -70.0]
    if z.size == 0:
        return float("-inf")
    rel = -0.691 + 10 * np.log10(np.mean(z)) - 10.0
    with np.errstate(divide="ignore"):
        z = z[-0.691 + 10 * np.log10(z) > rel]
    return float(-0.691 + 10 * np.log10(np.mean(z)))


def _write_flac(path: str, x: np.ndarray, sample_rate: int) -> None:
    import soundfile as sf

    sf.write(path, np.clip(x, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")


# ----------------------------------------------------------------------------- MIDI


def _midi(stems: list[Stem], bpm: float, piece: Piece):
    """pretty_midi.PrettyMIDI objects: one per stem and one with all of them (all_src.mid)."""
    import pretty_midi

    _, _, _, beat, count, compound, _ = piece.bars[-1]
    if compound:
        num, den = count * 3, 8
    else:
        num, den = count, {0.5: 8, 1.0: 4, 2.0: 2}.get(beat, 4)

    def song():
        pm = pretty_midi.PrettyMIDI(resolution=480, initial_tempo=bpm)
        pm.time_signature_changes.append(pretty_midi.TimeSignature(num, den, 0.0))
        return pm

    def inst(stem):
        i = pretty_midi.Instrument(program=stem.program, is_drum=stem.is_drum, name=stem.program_name)
        i.notes = [pretty_midi.Note(velocity=v, pitch=p, start=s, end=e) for s, e, p, v in stem.notes]
        return i

    singles = []
    for stem in stems:
        pm = song()
        pm.instruments.append(inst(stem))
        singles.append(pm)
    everything = song()
    everything.instruments.extend(inst(s) for s in stems)
    return singles, everything


# ----------------------------------------------------------------------------- dataset


def split_counts(tracks: int, splits=(0.7, 0.15, 0.15)) -> tuple[int, int, int]:
    """(train, validation, test) track counts: `splits` as 3 fractions, or 3 ints summing to `tracks`.

    With fractions, validation and test get at least one track each once tracks >= 3.
    """
    if len(splits) != 3:
        raise ImgenError(f"splits must give (train, validation, test), got {splits!r}")
    if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in splits):
        counts = tuple(int(s) for s in splits)
        if min(counts) < 0 or sum(counts) != tracks:
            raise ImgenError(f"split counts {counts} must be >= 0 and sum to tracks={tracks}")
        return counts
    f = [float(s) for s in splits]
    if min(f) < 0 or sum(f) <= 0:
        raise ImgenError(f"split fractions {splits!r} must be >= 0 with a positive sum")
    f = [s / sum(f) for s in f]
    val, test = int(round(f[1] * tracks)), int(round(f[2] * tracks))
    if tracks >= 3:
        val, test = max(1, val), max(1, test)
    val = min(val, tracks)
    test = min(test, tracks - val)
    return tracks - val - test, val, test


def track_uuid(seed: int, index: int) -> str:
    """Slakh-style 32-hex UUID derived from (seed, track index): the same on every run."""
    digest = hashlib.sha256(f"imgen-mini-slakh/{seed}/{index}".encode()).digest()
    return uuid.UUID(bytes=digest[:16], version=4).hex


def _pick_pieces(n: int, seed: int) -> list[Piece]:
    """n chorales in a seed-determined order (cycling through them again if n exceeds the corpus)."""
    paths = chorale_paths()
    order = np.random.default_rng([seed, 0x5AC4]).permutation(len(paths))
    pieces: list[Piece] = []
    for i in order:
        if len(pieces) == n:
            break
        piece = load_piece(*paths[i])
        if piece is not None:
            pieces.append(piece)
    if not pieces:
        raise ImgenError("no usable Bach chorale (Soprano/Alto/Tenor/Bass parts) in music21's corpus")
    return [pieces[i % len(pieces)] for i in range(n)]


def render_track(folder: str, piece: Piece, index: int, seed: int, seconds: float, sample_rate: int,
                 sf2: str) -> dict:
    """Render one Slakh track into `folder` (created); returns {'piece', 'bpm', 'stems': [inst_class]}."""
    import yaml

    rng = np.random.default_rng([seed, index])
    bpm, stems = arrange(piece, rng, seconds)
    n = int(round(seconds * sample_rate))
    audio = []
    for stem in stems:
        x = render_stem(stem, n, sample_rate, sf2).astype(np.float64)
        lufs = integrated_loudness(x, sample_rate)
        if not np.isfinite(lufs):
            raise ImgenError(f"{piece.name}: the {stem.inst_class} stem rendered silent")
        audio.append(x * 10 ** ((NORMALIZATION_LUFS - lufs) / 20))
    mix = np.sum(audio, axis=0)
    gain = 10 ** (TARGET_PEAK_DB / 20) / max(float(np.max(np.abs(mix))), 1e-9)
    audio = [x * gain for x in audio]
    mix = mix * gain
    os.makedirs(os.path.join(folder, "stems"))
    os.makedirs(os.path.join(folder, "MIDI"))
    singles, everything = _midi(stems, bpm, piece)
    meta_stems = {}
    for k, (stem, x, pm) in enumerate(zip(stems, audio, singles)):
        name = f"S{k:02d}"
        _write_flac(os.path.join(folder, "stems", f"{name}.flac"), x, sample_rate)
        pm.write(os.path.join(folder, "MIDI", f"{name}.mid"))
        meta_stems[name] = {
            "audio_rendered": True, "inst_class": stem.inst_class,
            "integrated_loudness": integrated_loudness(x, sample_rate), "is_drum": stem.is_drum,
            "midi_program_name": stem.program_name, "midi_saved": True, "plugin_name": SOUNDFONT_NAME,
            "program_num": 128 if stem.is_drum else stem.program,
        }
    _write_flac(os.path.join(folder, "mix.flac"), mix, sample_rate)
    everything.write(os.path.join(folder, "all_src.mid"))
    meta = {
        "UUID": track_uuid(seed, index), "audio_dir": "stems", "lmd_midi_dir": piece.name, "midi_dir": "MIDI",
        "normalization_factor": NORMALIZATION_LUFS, "normalized": True, "overall_gain": float(gain),
        "stems": meta_stems, "target_peak": TARGET_PEAK_DB,
    }
    with open(os.path.join(folder, "metadata.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(meta, f, sort_keys=True, default_flow_style=False)
    return {"piece": piece.name, "bpm": bpm, "stems": [s.inst_class for s in stems]}


def _check_out(out_dir: str, overwrite: bool) -> str:
    out = os.path.abspath(out_dir)
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise ImgenError(f"{out_dir}: exists and is not a directory")
        if os.listdir(out) and not overwrite:
            raise ImgenError(f"{out_dir}: directory exists and is not empty (pass overwrite=True / --overwrite)")
    parent = os.path.dirname(out)
    if not os.path.isdir(parent):
        raise ImgenError(f"{parent}: parent directory of the output does not exist")
    return out


def render_mini_slakh(out_dir: str, tracks: int = 20, seconds: float = 30.0, sample_rate: int = 44100,
                      seed: int = 0, progress: bool = True, splits=(0.7, 0.15, 0.15),
                      overwrite: bool = False) -> dict:
    """Render mini-Slakh into `out_dir` (Slakh2100 layout, see the module docstring); returns the report.

    tracks: number of tracks (each one chorale, looped/clipped to `seconds`, mono at `sample_rate`).
    splits: (train, validation, test) as fractions or as counts summing to `tracks`.
    The dataset is written to a temporary directory beside `out_dir` and renamed into place at the end;
    an existing non-empty `out_dir` is refused unless overwrite=True.

    Report (also written to OUT/mini_slakh.json): {'format', 'seed', 'seconds', 'sample_rate',
    'tracks': {split: count}, 'track_ids': {split: [TrackNNNNN]}, 'stems_per_class': {inst_class: count},
    'pieces': {TrackNNNNN: corpus name}, 'bpm': {TrackNNNNN: tempo}}.
    """
    if not (isinstance(tracks, (int, np.integer)) and 1 <= tracks <= MAX_TRACKS):
        raise ImgenError(f"tracks must be an integer in [1, {MAX_TRACKS}], got {tracks!r}")
    if not (MIN_SECONDS <= float(seconds) <= MAX_SECONDS):
        raise ImgenError(f"seconds must be in [{MIN_SECONDS:g}, {MAX_SECONDS:g}], got {seconds!r}")
    if not (8000 <= int(sample_rate) <= 96000):
        raise ImgenError(f"sample_rate must be in [8000, 96000], got {sample_rate!r}")
    seconds, sample_rate, seed = float(seconds), int(sample_rate), int(seed)
    out = _check_out(out_dir, overwrite)
    counts = split_counts(int(tracks), splits)
    sf2 = soundfont_path()
    _tinysoundfont()
    pieces = _pick_pieces(int(tracks), seed)
    from tqdm.auto import tqdm

    with atomic_dir(out) as tmp:
        report = {"format": "slakh2100", "generator": "imgen_jax.data.mini_slakh", "seed": seed,
                  "seconds": seconds, "sample_rate": sample_rate,
                  "tracks": dict(zip(SPLITS, counts)), "track_ids": {s: [] for s in SPLITS},
                  "stems_per_class": {}, "pieces": {}, "bpm": {}}
        split_of = [s for s, c in zip(SPLITS, counts) for _ in range(c)]
        with tqdm(total=len(pieces), desc="mini-slakh", unit="track", disable=not progress) as bar:
            for i, (piece, split) in enumerate(zip(pieces, split_of)):
                track = f"Track{i + 1:05d}"
                info = render_track(os.path.join(tmp, split, track), piece, i, seed, seconds, sample_rate, sf2)
                report["track_ids"][split].append(track)
                report["pieces"][track] = info["piece"]
                report["bpm"][track] = info["bpm"]
                for c in info["stems"]:
                    report["stems_per_class"][c] = report["stems_per_class"].get(c, 0) + 1
                bar.update(1)
        for s in SPLITS:
            os.makedirs(os.path.join(tmp, s), exist_ok=True)
        report["stems_per_class"] = dict(sorted(report["stems_per_class"].items()))
        with open(os.path.join(tmp, "mini_slakh.json"), "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, sort_keys=True)
            f.write("\n")
    return dict(report, out=out)
