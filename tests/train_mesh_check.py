"""Run a few training steps of the tiny model on several meshes of emulated CPU devices (subprocess of
tests/test_train.py, which sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before jax loads).

    python tests/train_mesh_check.py MODEL_DIR WORKROOT OUT.npz STEPS MESH [MESH ...]

MESH is "data,fsdp,tensor" (e.g. "1,1,1" on the first device only, "8,1,1", "2,2,2"). Writes, per mesh,
the logged losses and the final adapter parameters (flat) into OUT.npz, plus the parameters' shardings
as strings (to show that the mesh really split them).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from train_helpers import tiny_config  # noqa: E402


def main() -> None:
    model_dir, root, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    from imgen_jax.train import train

    assert len(jax.devices()) == 8, jax.devices()
    result, specs = {}, {}
    for mesh in sys.argv[5:]:
        d, f, t = (int(x) for x in mesh.split(","))
        n = d * f * t
        c = tiny_config(model_dir, os.path.join(root, mesh.replace(",", "_")), steps=steps,
                        **{"mesh.data": d, "mesh.fsdp": f, "mesh.tensor": t})
        summary = train(c, devices=jax.devices()[:n], progress=False)
        result[f"{mesh}/losses"] = np.asarray([summary["losses"][s] for s in range(1, steps + 1)], np.float64)

        def visit(prefix, tree):
            for k, v in tree.items():
                name = f"{prefix}/{k}" if prefix else str(k)
                if isinstance(v, dict):
                    visit(name, v)
                else:
                    result[f"{mesh}/param/{name}"] = np.asarray(v)

        visit("", summary["params"])
        specs[mesh] = summary.get("shardings", {})
    np.savez(out, **result)
    with open(out + ".json", "w") as fh:
        json.dump(specs, fh)


if __name__ == "__main__":
    main()
