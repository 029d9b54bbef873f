"""Atomic writes (imgen_jax.files): complete on success, untouched target on failure."""

import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys

import pytest

from imgen_jax import files
from imgen_jax.files import atomic_dir, atomic_file, atomic_update_dir


def test_atomic_file_replaces_only_on_success(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(path) as tmp:
            open(tmp, "w").write("half")
            raise ValueError("boom")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["a.txt"]
    with atomic_file(path, ".txt") as tmp:
        open(tmp, "w").write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


def test_atomic_dir_swaps_whole_directories(tmp_path):
    out = tmp_path / "d"
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "x"), "w").write("1")
    assert os.listdir(out) == ["x"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            open(os.path.join(tmp, "y"), "w").write("2")
            raise KeyboardInterrupt
    assert os.listdir(out) == ["x"] and sorted(os.listdir(tmp_path)) == ["d"]
    with atomic_dir(out) as tmp:
        open(os.path.join(tmp, "z"), "w").write("3")
    assert os.listdir(out) == ["z"] and sorted(os.listdir(tmp_path)) == ["d"]


# ---- durability and kills --------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _exchange_supported(tmp_path) -> bool:
    a, b = tmp_path / ".xa", tmp_path / ".xb"
    a.mkdir()
    b.mkdir()
    (a / "f").write_text("a")
    try:
        return files._rename_exchange(str(a), str(b)) and (b / "f").exists()
    finally:
        shutil.rmtree(a, ignore_errors=True)
        shutil.rmtree(b, ignore_errors=True)


def _fd_path(fd):
    return os.path.realpath(f"/proc/self/fd/{fd}")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads fsynced paths from /proc/self/fd")
def test_fsync_before_rename_and_parent_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace, real_exchange = os.fsync, os.replace, files._rename_exchange
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", _fd_path(fd))), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.fspath(a), os.fspath(b))), real_replace(a, b))[1])
    monkeypatch.setattr(files, "_rename_exchange", lambda a, b: (events.append(("exchange", a, b)), real_exchange(a, b))[1])
    root = os.path.realpath(tmp_path)

    target = os.path.join(root, "a.txt")
    with atomic_file(target) as tmp:
        open(tmp, "w").write("x")
    assert events == [("fsync", tmp), ("replace", tmp, target), ("fsync", root)]

    events.clear()
    target = os.path.join(root, "d")
    with atomic_dir(target) as tmp:
        os.makedirs(os.path.join(tmp, "sub"))
        for name in ("a", "sub/b"):
            open(os.path.join(tmp, name), "w").write(name)
    synced = [e[1] for e in events if e[0] == "fsync"]
    assert sorted(synced[:4]) == sorted([os.path.join(tmp, "a"), os.path.join(tmp, "sub", "b"), os.path.join(tmp, "sub"), tmp])
    assert synced.index(os.path.join(tmp, "sub")) < synced.index(tmp)  # children before their folder
    assert events[4] == ("replace", tmp, target) and events[5:] == [("fsync", root)]

    events.clear()  # replacing an existing folder: one exchange (Linux), then the parent
    with atomic_dir(target) as tmp:
        open(os.path.join(tmp, "c"), "w").write("c")
    assert events[:2] == [("fsync", os.path.join(tmp, "c")), ("fsync", tmp)]
    assert events[2][0] in ("exchange", "replace") and events[-1] == ("fsync", root)
    assert os.listdir(target) == ["c"] and sorted(os.listdir(root)) == ["a.txt", "d"]


def test_atomic_update_dir_failure_keeps_the_old_folder(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text('{"v": 1}')
    (d / "w.bin").write_bytes(b"old")
    (d / "keep.model").write_bytes(b"tok")
    (d / ".tmp-leftover.bin").write_bytes(b"junk")
    with pytest.raises(OSError):
        with atomic_update_dir(d, ["w.bin", "config.json"]) as tmp:
            assert sorted(os.listdir(tmp)) == ["keep.model"]
            (tmp_path / "x").joinpath("nope").write_text("")  # fails midway: no folder x
    assert (d / "config.json").read_text() == '{"v": 1}' and (d / "w.bin").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["m"]
    with atomic_update_dir(d, ["w.bin", "config.json"]) as tmp:
        open(os.path.join(tmp, "w.bin"), "wb").write(b"new")
        open(os.path.join(tmp, "config.json"), "w").write('{"v": 2}')
    assert sorted(os.listdir(d)) == ["config.json", "keep.model", "w.bin"]  # leftovers of old writes dropped
    assert (d / "w.bin").read_bytes() == b"new" and (d / "keep.model").read_bytes() == b"tok"
    assert sorted(os.listdir(tmp_path)) == ["m"]


_WRITER = r"""
import hashlib, json, os, sys, time
sys.path.insert(0, {root!r})
import imgen_jax.files as files

target, version, pause_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
calls = [0]

def event():
    calls[0] += 1
    if calls[0] == pause_at:
        print("paused", flush=True)
        time.sleep(600)

def hooked(fn):
    def wrapper(*a, **k):
        out = fn(*a, **k)
        event()
        return out
    return wrapper

os.fsync, os.replace, os.link = hooked(os.fsync), hooked(os.replace), hooked(os.link)
files._rename_exchange = hooked(files._rename_exchange)
{body}
print("done", calls[0], flush=True)
"""

_DIR_BODY = r"""
weights = hashlib.sha256(version.encode()).digest() * 4096
with files.atomic_update_dir(target, ["weights.bin", "config.json"]) as tmp:
    with open(os.path.join(tmp, "weights.bin"), "wb") as f:
        f.write(weights)
    event()  # new weights written, config.json not yet
    with open(os.path.join(tmp, "config.json"), "w") as f:
        json.dump({"version": version, "sha256": hashlib.sha256(weights).hexdigest()}, f)
"""


def _run_until_paused(script: str, args: list[str]) -> tuple[bool, str]:
    """Run `script`; SIGKILL it when it reports 'paused'. (killed, last line)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        if line.startswith("paused"):
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return True, line
        proc.wait(timeout=60)
        assert proc.returncode == 0, f"writer failed: {line}"
        return False, line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _dir_state(d) -> str:
    """'old' / 'new' for a complete folder whose config.json matches its weights (else the test fails)."""
    assert sorted(os.listdir(d)) == ["config.json", "keep.model", "weights.bin"], sorted(os.listdir(d))
    cfg = json.loads((d / "config.json").read_text())
    assert hashlib.sha256((d / "weights.bin").read_bytes()).hexdigest() == cfg["sha256"], "config.json does not match weights"
    assert (d / "keep.model").read_bytes() == b"tokenizer"
    return cfg["version"]


def test_sigkill_at_every_step_leaves_the_old_or_the_new_folder(tmp_path):
    """The writer (a subprocess) pauses after its k-th step (fsync, rename, link, exchange, or
    'weights written'); it is SIGKILLed there, for every k. The folder is always complete and
    consistent: the old one up to the swap, the new one from then on."""
    if not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) unavailable here: a kill between the two renames leaves no folder")
    script = _WRITER.format(root=ROOT, body=_DIR_BODY)
    d = tmp_path / "model"
    states = []
    for k in range(1, 100):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        weights = hashlib.sha256(b"old").digest() * 4096
        (d / "weights.bin").write_bytes(weights)
        (d / "config.json").write_text(json.dumps({"version": "old", "sha256": hashlib.sha256(weights).hexdigest()}))
        (d / "keep.model").write_bytes(b"tokenizer")
        killed, line = _run_until_paused(script, [str(d), "new", str(k)])
        states.append(_dir_state(d))
        assert all(n == "model" or n.startswith(".tmp-model-") for n in os.listdir(tmp_path)), os.listdir(tmp_path)
        for n in os.listdir(tmp_path):
            if n != "model":
                shutil.rmtree(tmp_path / n)
        if not killed:
            break
    assert not killed and states[-1] == "new", line
    first_new = states.index("new")
    assert 5 < first_new and set(states[:first_new]) == {"old"} and set(states[first_new:]) == {"new"}, states


_ADAPTERS_BODY = r"""
import numpy as np
import imgen_jax.weights
from imgen_jax.instruct.fusion import FusionConfig, save_adapters

when = sys.argv[4]
if when == "weights":  # pause once adapters.safetensors is written, before config.json
    save = imgen_jax.weights.save_safetensors
    def save_then_pause(*a, **k):
        save(*a, **k)
        calls[0] = pause_at - 1
        event()
    imgen_jax.weights.save_safetensors = save_then_pause
else:  # pause right before / after the swap
    exchange = files._rename_exchange
    def exchange_with_pause(a, b):
        if when == "before":
            calls[0] = pause_at - 1
            event()
        out = exchange(a, b)
        if when == "after":
            calls[0] = pause_at - 1
            event()
        return out
    files._rename_exchange = exchange_with_pause
data = np.load(os.path.join(os.path.dirname(target), "new.npz"))
cfg = FusionConfig.from_dict(json.loads(sys.argv[5]))
save_adapters(target, cfg, {k: data[k] for k in data.files})
"""


def test_save_adapters_killed_mid_write_keeps_config_and_weights_together(tmp_path):
    """save_adapters on an existing converted directory, SIGKILLed after the new weights are
    written (before config.json) and just after the swap: the directory always loads, with the
    config and the weights of the same version (they differ in shapes, so a mix cannot load).
    Every other kill point of the mechanism is covered by the test above."""
    if not _exchange_supported(tmp_path):
        pytest.skip("renameat2(RENAME_EXCHANGE) unavailable here")
    import numpy as np

    from imgen_jax.instruct.fusion import FusionConfig, abstract_adapters, load_adapters, read_adapters, save_adapters
    from imgen_jax.modeldir import write_model_dir
    from imgen_jax.weights import module_shapes

    def flat_of(cfg, seed):
        rng = np.random.default_rng(seed)
        return {k: rng.standard_normal(s).astype(np.float32) for k, (s, _) in module_shapes(abstract_adapters(cfg)).items()}

    old_cfg = FusionConfig(dim=8, num_layers=2, adapter_layers=1, lora_r=2, pos_emb_frames=4)
    new_cfg = FusionConfig(dim=8, num_layers=2, adapter_layers=2, lora_r=3, pos_emb_frames=4)
    old, new = flat_of(old_cfg, 0), flat_of(new_cfg, 1)
    tok = tmp_path / "spiece.model"
    tok.write_bytes(b"tokenizer")

    def state(d):
        cfg, flat = read_adapters(d)
        load_adapters(d)  # names and shapes checked against the config
        assert sorted(os.listdir(d)) == ["adapters.safetensors", "config.json", "spiece.model"]
        assert (d / "spiece.model").read_bytes() == b"tokenizer"
        want = old if cfg == old_cfg else new
        assert cfg in (old_cfg, new_cfg) and all(np.array_equal(flat[k], want[k]) for k in want)
        return "old" if cfg == old_cfg else "new"

    procs = {}
    for when in ("weights", "after"):
        root = tmp_path / when
        root.mkdir()
        write_model_dir(root / "m", "musicgen", {"adapters": old_cfg.to_dict()}, {"adapters": old}, "test", str(tok))
        np.savez(root / "new.npz", **new)
        script = _WRITER.format(root=ROOT, body=_ADAPTERS_BODY)
        procs[when] = subprocess.Popen([sys.executable, "-c", script, str(root / "m"), "new", "1000", when,
                                        json.dumps(new_cfg.to_dict())], stdout=subprocess.PIPE, text=True)
    seen = {}
    for when, proc in procs.items():
        try:
            line = proc.stdout.readline()
            assert line.startswith("paused"), line
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        seen[when] = state(tmp_path / when / "m")
    assert seen == {"weights": "old", "after": "new"}

    for when in procs:  # what a kill leaves beside the directory: only the documented .tmp-m-* sibling
        assert all(n in ("m", "new.npz") or n.startswith(".tmp-m-") for n in os.listdir(tmp_path / when))
    leftovers = set(os.listdir(tmp_path / "weights"))
    save_adapters(tmp_path / "weights" / "m", new_cfg, new)  # an uninterrupted save, beside the leftovers
    assert state(tmp_path / "weights" / "m") == "new"
    assert set(os.listdir(tmp_path / "weights")) == leftovers


def test_save_adapters_error_midway_keeps_the_old_directory(tmp_path, monkeypatch):
    import numpy as np

    import imgen_jax.weights
    from imgen_jax.instruct.fusion import FusionConfig, abstract_adapters, read_adapters, save_adapters
    from imgen_jax.modeldir import write_model_dir
    from imgen_jax.weights import module_shapes

    cfg = FusionConfig(dim=8, num_layers=2, adapter_layers=1, lora_r=2, pos_emb_frames=4)
    flat = {k: np.full(s, 1.0, np.float32) for k, (s, _) in module_shapes(abstract_adapters(cfg)).items()}
    write_model_dir(tmp_path / "m", "musicgen", {"adapters": cfg.to_dict()}, {"adapters": flat}, "test")
    before = {n: (tmp_path / "m" / n).read_bytes() for n in os.listdir(tmp_path / "m")}

    def fail(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(imgen_jax.weights, "save_safetensors", fail)
    with pytest.raises(OSError, match="No space"):
        save_adapters(tmp_path / "m", cfg, {k: v * 2 for k, v in flat.items()})
    assert {n: (tmp_path / "m" / n).read_bytes() for n in os.listdir(tmp_path / "m")} == before
    assert os.listdir(tmp_path) == ["m"]
    assert np.array_equal(read_adapters(tmp_path / "m")[1]["gates"], flat["gates"])
