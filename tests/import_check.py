"""One check shared by the runtime-import tests: importing runtime modules in a fresh interpreter pulls in
none of the reference packages (torch and the evaluation networks' PyTorch ports are test-time only)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def assert_imports_none(modules: Sequence[str], forbidden: Sequence[str]) -> None:
    """Import `modules` in a fresh Python (repository root, CPU) and fail if any of `forbidden` got imported."""
    code = (f"import sys, {', '.join(modules)}; "
            f"bad = [m for m in {tuple(forbidden)!r} if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
