"""Train the Instruct-MusicGen adapters on a frozen converted MusicGen.

    python train.py --config=configs/slakh.py --config.model.base_dir=models/musicgen-large \\
        --config.data.dir=data/slakh2100 --config.workdir=runs/slakh [--config.train.steps=100]

Runs (or resumes, from WORKDIR/checkpoints) the run the config describes; see imgen_jax/train/.
Errors meant for the user print one line `error: ...` and exit with status 2.
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
        return 2
    except KeyboardInterrupt:
        print("error: interrupted (resume by running the same command)", file=sys.stderr)
        return 130
    return 0


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
