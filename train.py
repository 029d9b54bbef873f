"""Train the Instruct-MusicGen adapters on a frozen converted MusicGen.

    python train.py --config=configs/slakh.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh [--config.train.steps=100]

Runs (or resumes, from WORKDIR/checkpoints) the run the config describes; see imgen_jax/train/.
Errors meant for the user print one line `error: ...` and exit with status 2.

Multi-process (multi-host) runs: start the same command on every process with
--config.mesh.distributed=True and JAX_COORDINATOR_ADDRESS=HOST:PORT (process 0's), JAX_NUM_PROCESSES,
JAX_PROCESS_ID (or --config.mesh.coordinator / num_processes / process_id; SLURM, Open MPI and TPU pods
need none of them). A process that fails ends at once (status 1 or 2, last line `error: ...`), and the
others follow within config.mesh.heartbeat_timeout seconds; rerun every process to resume.
"""

from __future__ import annotations

import os
import sys

from absl import flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.abspath(__file__))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file (configs/*.py)", lock_config=True)


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}; settings go through --config.FIELD=VALUE", file=sys.stderr)
        return 2
    from imgen_jax.errors import ImgenError
    from imgen_jax.train import train

    try:
        train(_CONFIG.value)
    except ImgenError as e:
        print(f"error: {e}", file=sys.stderr)
        return _end_distributed(2)
    except KeyboardInterrupt:
        print("error: interrupted (resume by running the same command)", file=sys.stderr)
        return _end_distributed(130)
    except Exception as e:
        if not _distributed():
            raise
        import traceback

        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0][:300]
        print(f"error: {type(e).__name__}: {first}; in a multi-process run this usually means that another process "
              "died or hung: restart every process to resume from the last complete checkpoint", file=sys.stderr)
        return _end_distributed(1)
    return 0


def _distributed() -> bool:
    import jax

    return jax.distributed.is_initialized()


def _end_distributed(code: int) -> int:
    """In a multi-process run that failed, end this process at once: the normal exit waits at JAX's
    shutdown barrier for processes that may be dead or stuck in a collective; the others notice this
    one is gone (at once when it ran the coordinator, process 0; else within
    config.mesh.heartbeat_timeout) and end too."""
    if _distributed():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run() -> None:
    """Parse the flags (a missing or broken config file is one `error:` line, exit 2) and train."""
    try:
        argv = flags.FLAGS(sys.argv)
        if _CONFIG.value is None:
            raise flags.Error("--config is required (e.g. --config=configs/demo.py)")
        _CONFIG.value.to_json()  # a config file that failed to load raises here, not at parse time
    except (flags.Error, Exception) as e:  # config files that fail to load raise arbitrary exceptions
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"error: config: {msg}", file=sys.stderr)
        sys.exit(2)
    sys.exit(main(argv))


if __name__ == "__main__":
    run()
