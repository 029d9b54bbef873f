"""Multi-process training on localhost and exact resume with the real triplet loader (train.py in
subprocesses, tiny random model, mini-Slakh).

Every run trains 6 steps of the tiny model (batch 4, a checkpoint after every step) on the real
triplet loader over mini-Slakh: grain with 2 reader threads and a read-ahead of 4 batches
(`make_triplet_loader`'s defaults, which `imgen_jax.train.data.make_loader` uses), each process
reading its own shard, on a mesh data 2 x fsdp 2 of 4 emulated CPU devices:

- "two processes": 2 `train.py` processes with 2 CPU devices each (`JAX_NUM_CPU_DEVICES=2`),
  `--config.mesh.distributed=True`, the coordinator on 127.0.0.1 from JAX_COORDINATOR_ADDRESS /
  JAX_NUM_PROCESSES / JAX_PROCESS_ID (gloo CPU collectives, the default of the installed jax); the
  mesh spans both processes and both write the orbax checkpoints;
- "one process": 1 `train.py` process with 4 CPU devices, the same mesh shape.

test_two_processes_kill_and_resume: one process of a 2-process run is SIGKILLed while a checkpoint
is being written; the survivor exits non-zero within 30 s (heartbeat timeout 10 s) naming the lost
peer; the restarted job (both processes) resumes from the last complete checkpoint (the half-written
one is ignored and cleaned up) and reproduces the uninterrupted 2-process run bit for bit (every
logged loss, gradient norm and learning rate; the final adapter parameters). The uninterrupted
2-process run equals the 1-process run within fp32 tolerance: |loss - loss_1| <= 1e-5 * loss_1 and
max |param - param_1| <= 1e-5 (the global batch rows come in another order and the sharded sums
reduce in another order).

test_one_process_kill_and_resume (issue 11 item 7): the same kill-and-resume on one process with the
2x2 mesh of 4 devices, bit for bit against the uninterrupted 1-process run. Together the two tests
prove exact resume of the real grain loader with prefetch on a 2x2 mesh, within one process and
across two.

test_distributed_settings_from_config_or_environment (fast, no subprocess): where
`--config.mesh.distributed=True` takes the coordinator, process count and id from.

The runs share a persistent XLA compilation cache (a fresh one per test session) so that restarted
processes skip most recompilation; every process is started in its own session and killed (whole
process group) in a `finally`; every wait has a timeout.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from train_helpers import ROOT, make_tiny_model_dir

from imgen_jax.weights import read_safetensors

STEPS = 6
KILL_AT = 3           # SIGKILL once the checkpoint of this step (or a later one) is being written
HEARTBEAT_S = 10      # config.mesh.heartbeat_timeout of the runs
SURVIVOR_EXIT_S = 30  # the survivor of a SIGKILL must be gone within this many seconds
RUN_TIMEOUT_S = 300   # any one job

_CONFIG_FILE = '''
import sys
sys.path.insert(0, {tests!r})
from train_helpers import tiny_config

def get_config():
    return tiny_config({model!r}, {workdir!r}, steps={steps}, **{{
        "data.source": "triplets", "data.dir": {data!r}, "train.batch_size": 4,
        "checkpoint.every": 1, "checkpoint.keep": 2, "mesh.data": 2, "mesh.fsdp": 2,
        "mesh.init_timeout": 120, "mesh.heartbeat_timeout": {heartbeat}}})
'''


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Job:
    """`train.py` in `nproc` processes (each in its own session, output to files), all on localhost."""

    def __init__(self, cfg_file: str, logdir: str, nproc: int, cache_dir: str, name: str):
        self.procs: list[subprocess.Popen] = []
        self.logs = [os.path.join(logdir, f"{name}_{i}.log") for i in range(nproc)]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "XLA_FLAGS"))}
        env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(4 // nproc), JAX_COMPILATION_CACHE_DIR=cache_dir,
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", PYTHONUNBUFFERED="1")
        cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--config={cfg_file}"]
        if nproc > 1:
            env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES=str(nproc))
            cmd.append("--config.mesh.distributed=True")
        try:
            for i in range(nproc):
                with open(self.logs[i], "w") as log:
                    self.procs.append(subprocess.Popen(cmd, env={**env, "JAX_PROCESS_ID": str(i)}, stdout=log,
                                                       stderr=subprocess.STDOUT, start_new_session=True))
        except BaseException:
            self.kill()
            raise

    def wait(self, timeout: float = RUN_TIMEOUT_S) -> list[int]:
        """Exit codes of all processes (killing them all and failing after `timeout` seconds)."""
        deadline = time.time() + timeout
        try:
            return [p.wait(timeout=max(deadline - time.time(), 0.1)) for p in self.procs]
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"job still running after {timeout} s:\n{self.tail()}")

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()

    def log(self, i: int) -> str:
        with open(self.logs[i], errors="replace") as f:
            return f.read()

    def tail(self, n: int = 3000) -> str:
        return "\n".join(f"--- process {i}:\n{self.log(i)[-n:]}" for i in range(len(self.procs)))


def _write_config(tmp, name: str, model: str, data: str) -> tuple[str, str]:
    workdir = str(tmp / name)
    cfg = tmp / f"{name}_config.py"
    cfg.write_text(_CONFIG_FILE.format(tests=os.path.join(ROOT, "tests"), model=model, workdir=workdir,
                                       steps=STEPS, data=data, heartbeat=HEARTBEAT_S))
    return str(cfg), workdir


def _run(tmp, name: str, nproc: int, model: str, data: str, cache: str) -> str:
    cfg, workdir = _write_config(tmp, name, model, data)
    job = Job(cfg, str(tmp), nproc, cache, name)
    try:
        codes = job.wait()
    finally:
        job.kill()
    assert codes == [0] * nproc, job.tail()
    return workdir


def _train_records(workdir: str) -> dict[int, dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        recs = [json.loads(line) for line in f]
    # steps_per_s / tokens_per_s are timings; everything else is a result
    return {r["step"]: {k: v for k, v in r.items() if k not in ("steps_per_s", "tokens_per_s")}
            for r in recs if r["kind"] == "train"}


def _adapters(workdir: str) -> dict[str, np.ndarray]:
    return read_safetensors(os.path.join(workdir, "model", "adapters.safetensors"))


def _checkpoints(workdir: str) -> tuple[list[int], list[str]]:
    """(complete step directories, orbax temporary directories) under WORKDIR/checkpoints."""
    d = os.path.join(workdir, "checkpoints")
    names = os.listdir(d) if os.path.isdir(d) else []
    return sorted(int(n) for n in names if n.isdigit()), sorted(n for n in names if "orbax-checkpoint-tmp" in n)


def _step_of(name: str) -> int:
    return int(re.match(r"(\d+)", name).group(1))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, spm_model):
    return make_tiny_model_dir(str(tmp_path_factory.mktemp("multihost") / "base"), spm_model)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla_cache"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_model, mini_slakh_root, cache_dir, tmp_path_factory):
    """Work directories of the uninterrupted runs {"one": 1 process x 4 devices, "two": 2 processes x 2
    devices}, both started at once."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    jobs, dirs = {}, {}
    try:
        for name, nproc in (("two", 2), ("one", 1)):
            cfg, dirs[name] = _write_config(tmp, name, tiny_model, mini_slakh_root)
            jobs[name] = Job(cfg, str(tmp), nproc, cache_dir, name)
        for name, job in jobs.items():
            assert job.wait() == [0] * len(job.procs), job.tail()
    finally:
        for job in jobs.values():
            job.kill()
    return dirs


def _kill_and_resume(tmp, nproc: int, victim: int, model: str, data: str, cache: str) -> dict:
    """Start a run, SIGKILL process `victim` right after the checkpoint of step KILL_AT starts being
    written, wait (bounded) for the other processes to end, then restart the job (every process) and
    let it finish. Returns {"workdir", "survivor_codes", "survivor_seconds", "survivor_logs",
    "checkpoints": (complete steps, temporary dirs) at the restart, "resumed_logs"}."""
    name = f"killed{nproc}"
    cfg, workdir = _write_config(tmp, name, model, data)
    job = Job(cfg, str(tmp), nproc, cache, name)
    try:
        deadline = time.time() + RUN_TIMEOUT_S
        while True:
            done, partial = _checkpoints(workdir)
            if any(_step_of(n) >= KILL_AT for n in partial):
                break
            assert not done or done[-1] <= KILL_AT, f"missed the checkpoint writes of steps {KILL_AT}..{done[-1]}"
            assert all(p.poll() is None for p in job.procs), f"a process ended before the kill:\n{job.tail()}"
            assert time.time() < deadline, f"no checkpoint of step {KILL_AT} in {RUN_TIMEOUT_S} s:\n{job.tail()}"
            time.sleep(0.002)
        job.procs[victim].send_signal(signal.SIGKILL)
        t_kill = time.time()
        assert job.procs[victim].wait(timeout=30) == -signal.SIGKILL
        survivors = [i for i in range(nproc) if i != victim]
        for i in survivors:
            try:
                job.procs[i].wait(timeout=max(SURVIVOR_EXIT_S - (time.time() - t_kill), 0.1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {i} still runs {SURVIVOR_EXIT_S} s after its peer was killed:\n{job.tail()}")
        out = {"workdir": workdir, "survivor_seconds": time.time() - t_kill,
               "survivor_codes": [job.procs[i].returncode for i in survivors],
               "survivor_logs": [job.log(i) for i in survivors]}
    finally:
        job.kill()
    assert not os.path.exists(os.path.join(workdir, "model")), "the killed run got to the end"
    out["checkpoints"] = _checkpoints(workdir)

    resumed = Job(cfg, str(tmp), nproc, cache, f"resumed{nproc}")
    try:
        codes = resumed.wait()
    finally:
        resumed.kill()
    assert codes == [0] * nproc, resumed.tail()
    out["resumed_logs"] = [resumed.log(i) for i in range(nproc)]
    return out


@pytest.fixture(scope="module")
def resumed(tiny_model, mini_slakh_root, cache_dir, uninterrupted, tmp_path_factory):
    """{2: the 2-process kill-and-resume (process 1 killed), 1: the 1-process one}, run at the same
    time (after the uninterrupted runs, whose compiled programs they find in the cache)."""
    from concurrent.futures import ThreadPoolExecutor

    tmp = tmp_path_factory.mktemp("resumed")
    with ThreadPoolExecutor(2) as pool:
        futures = {n: pool.submit(_kill_and_resume, tmp, n, n - 1, tiny_model, mini_slakh_root, cache_dir)
                   for n in (2, 1)}
        return {n: f.result() for n, f in futures.items()}


def _assert_resumed_from_last_complete(r: dict) -> None:
    """The kill left a half-written checkpoint (orbax's temporary directory) after the last complete
    one; every restarted process resumed from the complete one; the temporary one was cleaned up."""
    done, partial = r["checkpoints"]
    assert done and 1 <= done[-1] < STEPS and partial and _step_of(partial[-1]) > done[-1], (done, partial)
    line = f"resumed from {os.path.join(r['workdir'], 'checkpoints')}/{done[-1]} (step {done[-1]})"
    for log in r["resumed_logs"]:
        assert line in log, log[-3000:]
    after_done, after_partial = _checkpoints(r["workdir"])
    assert after_partial == [] and after_done[-1] == STEPS, (after_done, after_partial)


def _assert_same_run(a: str, b: str) -> None:
    """Bit for bit: every logged train record (loss, grad_norm, lr) and every final adapter parameter."""
    ra, rb = _train_records(a), _train_records(b)
    assert sorted(ra) == list(range(1, STEPS + 1)) and ra == rb, (ra, rb)
    pa, pb = _adapters(a), _adapters(b)
    assert sorted(pa) == sorted(pb) and len(pa) == 7
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), k


@pytest.mark.slow
def test_two_processes_kill_and_resume(uninterrupted, resumed):
    # 2 processes vs 1 process, same mesh shape: fp32 tolerance
    r1, r2 = _train_records(uninterrupted["one"]), _train_records(uninterrupted["two"])
    assert sorted(r1) == sorted(r2) == list(range(1, STEPS + 1))
    np.testing.assert_allclose([r2[s]["loss"] for s in r2], [r1[s]["loss"] for s in r1], rtol=1e-5, atol=0)
    p1, p2 = _adapters(uninterrupted["one"]), _adapters(uninterrupted["two"])
    assert sorted(p1) == sorted(p2)
    for k in p1:
        np.testing.assert_allclose(p2[k], p1[k], rtol=0, atol=1e-5, err_msg=k)
    assert np.abs(p2["gates"]).max() > 0  # the parameters did move

    # process 1 SIGKILLed mid-checkpoint: process 0 (which holds the coordinator) went, non-zero, and said why:
    # our last line (a collective failed in Python) or JAX's (its heartbeat monitor aborted the process)
    r = resumed[2]
    assert r["survivor_codes"][0] != 0 and r["survivor_seconds"] <= SURVIVOR_EXIT_S, r["survivor_codes"]
    log = r["survivor_logs"][0]
    assert "another process died" in log or "another task died" in log, log[-3000:]

    _assert_resumed_from_last_complete(r)
    _assert_same_run(r["workdir"], uninterrupted["two"])


@pytest.mark.slow
def test_one_process_kill_and_resume(uninterrupted, resumed):
    r = resumed[1]
    _assert_resumed_from_last_complete(r)
    _assert_same_run(r["workdir"], uninterrupted["one"])


def test_distributed_settings_from_config_or_environment():
    """mesh.coordinator / num_processes / process_id win over JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
    JAX_PROCESS_ID, which win over JAX's cluster auto-detection (None); wrong values are one-line errors
    naming the field or variable."""
    from imgen_jax.errors import ImgenError
    from imgen_jax.train.config import base_config
    from imgen_jax.train.mesh import distributed_settings

    mesh = base_config().mesh
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed_settings(mesh, {}) == {"coordinator": None, "num_processes": None, "process_id": None,
                                              "init_timeout": 300, "heartbeat_timeout": 100}
    assert distributed_settings(mesh, env) == {"coordinator": "10.0.0.1:1234", "num_processes": 4, "process_id": 3,
                                               "init_timeout": 300, "heartbeat_timeout": 100}
    mesh.coordinator, mesh.num_processes, mesh.process_id, mesh.heartbeat_timeout = "127.0.0.1:99", 2, 0, 7
    assert distributed_settings(mesh, env) == {"coordinator": "127.0.0.1:99", "num_processes": 2, "process_id": 0,
                                               "init_timeout": 300, "heartbeat_timeout": 7}
    for fields, environ, needle in (
        ({"coordinator": "no-port"}, {}, "config.mesh.coordinator: 'no-port' is not HOST:PORT"),
        ({}, {"JAX_PROCESS_ID": "x"}, "JAX_PROCESS_ID: 'x' is not an integer"),
        ({"num_processes": 2, "process_id": 2}, {}, "config.mesh.process_id: 2 must be in 0..1"),
        ({}, {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5"}, "JAX_PROCESS_ID: 5 must be in 0..1"),
        ({"heartbeat_timeout": 0}, {}, "config.mesh.heartbeat_timeout: 0 must be >= 1"),
    ):
        m = base_config().mesh
        for k, v in fields.items():
            m[k] = v
        with pytest.raises(ImgenError, match=needle) as e:
            distributed_settings(m, environ)
        assert "\n" not in str(e.value)
