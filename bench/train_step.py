"""Instruct-MusicGen adapter training step: imgen_jax (jitted) vs a PyTorch implementation of the same step.

The step: teacher-forced loss of the frozen MusicGen LM with the audio-fusion prefix (the LM's own
layers over the condition codes, trainable merge_linear / pos_emb / gates) and LoRA on the
cross-attention q / v; gradients of the adapters only; one AdamW update (lr 1e-4, weight decay 0.05,
constant lr). EnCodec and T5 are EXCLUDED on both sides: the inputs are the target / condition codes
[B, K, T] and the projected text memory [B, L, dim] with its padding mask.

JAX side: `imgen_jax.train.step.codes_loss_and_grads` + `apply_update` (what `train.py`'s step runs
after EnCodec and T5) under one jit, parameters and optimizer state donated, compiled twice: with the
layers as a loop (`model.unroll_layers` False, the default) and unrolled (True). PyTorch side: a compact
eager re-implementation in this file (SDPA attention, autograd, torch.optim.AdamW), loaded with the
same weights. A third JAX program, "plain jnp", is the PyTorch side's code written line for line in jax.numpy
(per-layer weight arrays, Python loops, jax.value_and_grad, optax.adamw) under the same jit: what XLA:CPU
makes of the step's math without this project's structure (stacked layers, fusion hooks), to tell the cost of
that structure from the compiler's. Before timing, the script asserts every side gives the same loss before
and after one update (relative difference <= 1e-4); all sides then run in turns. Then the bound the step's
matrix work puts on the ratio (`_common.floor_lines`: its dot FLOPs at the fp32 matmul rate measured in the
same run). Last line: `speedup: X.XX` (PyTorch step time / the faster of our two programs' step time).

    python bench/train_step.py [--dim 512 --layers 6 --heads 8 --card 1024 --batch 4 --frames 150 --repeats 5]
"""

from __future__ import annotations

import argparse
import math
import os

from _common import alternate, device_line, floor_lines, load_average, matmul_rates, matrix_flops, timed_once


def torch_step_fn(lm_flat, ad_flat, cfg, fcfg, lr, wd):
    """(step() -> loss float, loss_only() -> float) of the PyTorch implementation of the step."""
    import torch
    import torch.nn.functional as F

    T_ = lambda a: torch.from_numpy(a.copy())  # noqa: E731
    W = {k: T_(v) for k, v in lm_flat.items()}  # frozen: no grad
    P = {k.replace("/", "_"): torch.nn.Parameter(T_(v)) for k, v in ad_flat.items()}
    opt = torch.optim.AdamW(list(P.values()), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=wd)
    D, H, L, K = cfg.dim, cfg.num_heads, cfg.num_layers, cfg.num_codebooks
    Dh, start, scale = D // H, fcfg.start_layer, fcfg.lora_scaling
    special = cfg.special_token

    def ln(x, name, i=None):
        s, b = W[f"{name}/scale"], W[f"{name}/bias"]
        if i is not None:
            s, b = s[i], b[i]
        return F.layer_norm(x, (D,), s, b, eps=cfg.layer_norm_eps)

    def heads(x):  # [B, S, D] -> [B, H, S, Dh]
        return x.view(x.shape[0], x.shape[1], H, Dh).transpose(1, 2)

    def merge(y):  # [B, H, S, Dh] -> [B, S, D]
        return y.transpose(1, 2).reshape(y.shape[0], y.shape[2], D)

    def mlp(x, i):
        return F.gelu(x @ W["layers/linear1/kernel"][i]) @ W["layers/linear2/kernel"][i]

    def embed(codes):  # [B, K, S] -> [B, S, D]
        return sum(F.embedding(codes[:, k], W["emb"][k]) for k in range(K))

    def loss_fn(tgt, cond, memory, key_mask):
        B, _, T = tgt.shape
        # audio fusion: the condition (special frame appended) through the LM's own layers start..L-1
        cond_ext = torch.cat([cond, torch.full((B, K, 1), special, dtype=cond.dtype)], dim=-1)
        Tc = T + 1
        c = embed(cond_ext)
        pos = P["pos_emb"][:, :Tc]
        o = pos[0].expand(B, Tc, D)
        pre = []
        for j in range(fcfg.adapter_layers):
            i = start + j
            h = ln(o, "layers/norm1", i) + (c @ P["merge_linear"][j] + pos[j + 1])
            q, k, v = (h @ W["layers/self_attn/in_proj/kernel"][i]).split(D, dim=-1)
            q, k, v = heads(q), heads(k), heads(v)
            o = o + merge(F.scaled_dot_product_attention(q, k, v, is_causal=True)) @ W["layers/self_attn/out_proj/kernel"][i]
            o = o + mlp(ln(o, "layers/norm2", i), i)
            pre.append((q, k, v))
        # the delay pattern with T + 1 steps: step s of codebook k holds frame s - 1 - k
        S = T + 1
        seq = torch.full((B, K, S), special, dtype=tgt.dtype)
        for k in range(K):
            if S - 1 - k > 0:
                seq[:, k, 1 + k:] = tgt[:, k, : S - 1 - k]
        half = D // 2
        inv = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
        ph = torch.arange(S, dtype=torch.float32)[:, None] * inv
        x = embed(seq) + torch.cat([torch.cos(ph), torch.sin(ph)], dim=-1)[None]
        kbias = key_mask[:, None, None, :].bool()
        for i in range(L):
            h = ln(x, "layers/norm1", i)
            q, k, v = (h @ W["layers/self_attn/in_proj/kernel"][i]).split(D, dim=-1)
            q, k, v = heads(q), heads(k), heads(v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if i >= start:
                j = i - start
                qj, kj, vj = pre[j]
                y = y + P["gates"][j] * F.scaled_dot_product_attention(q + qj, kj, vj)
            x = x + merge(y) @ W["layers/self_attn/out_proj/kernel"][i]
            h = ln(x, "layers/norm_cross", i)
            cq = h @ W["layers/cross_attn/q_proj/kernel"][i] + scale * ((h @ P["lora_q_a"][i]) @ P["lora_q_b"][i])
            ck, cv = (memory @ W["layers/cross_attn/kv_proj/kernel"][i]).split(D, dim=-1)
            cv = cv + scale * ((memory @ P["lora_v_a"][i]) @ P["lora_v_b"][i])
            y = F.scaled_dot_product_attention(heads(cq), heads(ck), heads(cv), attn_mask=kbias)
            x = x + merge(y) @ W["layers/cross_attn/out_proj/kernel"][i]
            x = x + mlp(ln(x, "layers/norm2", i), i)
        h = ln(x, "out_norm")
        # frame t of codebook k is predicted at step t + k (valid while t + k < T)
        total, count = 0.0, 0
        for k in range(K):
            n = T - k
            if n <= 0:
                continue
            logits = h[:, k:k + n] @ W["heads"][k]  # [B, n, card]
            total = total + F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt[:, k, :n].reshape(-1), reduction="sum")
            count += B * n
        return total / count

    def step(tgt, cond, memory, key_mask):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(tgt, cond, memory, key_mask)
        loss.backward()
        opt.step()
        return float(loss.detach())

    def loss_only(tgt, cond, memory, key_mask):
        with torch.no_grad():
            return float(loss_fn(tgt, cond, memory, key_mask))

    return step, loss_only


def plain_jax_step_fn(lm_flat, ad_flat, cfg, fcfg, lr, wd, inputs):
    """(run() -> loss float, reset()): one step of `torch_step_fn`'s code written in jax.numpy, jitted, state
    donated; reset() restores the initial state (the compiled step is kept)."""
    import jax
    import jax.numpy as jnp
    import optax

    from imgen_jax.xla import jit

    D, H, L, K = cfg.dim, cfg.num_heads, cfg.num_layers, cfg.num_codebooks
    Dh, start, scale, special, eps = D // H, fcfg.start_layer, fcfg.lora_scaling, cfg.special_token, cfg.layer_norm_eps
    # the frozen weights as one array per layer, made once here: nothing is sliced inside the program
    frozen = {k: (tuple(jnp.asarray(v[i]) for i in range(L)) if k.startswith("layers/") else jnp.asarray(v))
              for k, v in lm_flat.items()}

    def ln(x, W, name, i=None):
        s, b = (W[f"{name}/scale"], W[f"{name}/bias"]) if i is None else (W[f"{name}/scale"][i], W[f"{name}/bias"][i])
        m = x.mean(-1, keepdims=True)
        return (x - m) * jax.lax.rsqrt(jnp.square(x - m).mean(-1, keepdims=True) + eps) * s + b

    def heads(x):  # [B, S, D] -> [B, S, H, Dh]
        return x.reshape(x.shape[0], x.shape[1], H, Dh)

    def sdpa(q, k, v, causal=False, key_mask=None):  # [B, S, H, Dh] each
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(Dh)
        if causal:
            logits = jnp.where(jnp.tril(jnp.ones(logits.shape[-2:], bool)), logits, -jnp.inf)
        if key_mask is not None:
            logits = jnp.where(key_mask[:, None, None, :], logits, -jnp.inf)
        return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)

    def loss_fn(P, W, tgt, cond, memory, key_mask):
        B, _, T = tgt.shape
        lin = lambda name, i: W[f"layers/{name}/kernel"][i]  # noqa: E731

        def mlp(x, i):
            return jax.nn.gelu(x @ lin("linear1", i), approximate=False) @ lin("linear2", i)

        def embed(codes):
            return sum(jnp.take(W["emb"][k], codes[:, k], axis=0) for k in range(K))

        c = embed(jnp.concatenate([cond, jnp.full((B, K, 1), special, cond.dtype)], -1))
        Tc = T + 1
        pos = P["pos_emb"][:, :Tc]
        o, pre = jnp.broadcast_to(pos[0], (B, Tc, D)), []
        for j in range(fcfg.adapter_layers):
            i = start + j
            h = ln(o, W, "layers/norm1", i) + (c @ P["merge_linear"][j] + pos[j + 1])
            q, k, v = (heads(a) for a in jnp.split(h @ lin("self_attn/in_proj", i), 3, -1))
            o = o + sdpa(q, k, v, causal=True).reshape(B, Tc, D) @ lin("self_attn/out_proj", i)
            o = o + mlp(ln(o, W, "layers/norm2", i), i)
            pre.append((q, k, v))
        S = T + 1
        seq = jnp.full((B, K, S), special, tgt.dtype)
        for k in range(K):
            if S - 1 - k > 0:
                seq = seq.at[:, k, 1 + k:].set(tgt[:, k, : S - 1 - k])
        half = D // 2
        inv = jnp.exp(jnp.arange(half, dtype=jnp.float32) * -(math.log(10000.0) / (half - 1)))
        ph = jnp.arange(S, dtype=jnp.float32)[:, None] * inv
        x = embed(seq) + jnp.concatenate([jnp.cos(ph), jnp.sin(ph)], -1)[None]
        for i in range(L):
            q, k, v = (heads(a) for a in jnp.split(ln(x, W, "layers/norm1", i) @ lin("self_attn/in_proj", i), 3, -1))
            y = sdpa(q, k, v, causal=True)
            if i >= start:
                qj, kj, vj = pre[i - start]
                y = y + P["gates"][i - start] * sdpa(q + qj, kj, vj)
            x = x + y.reshape(B, S, D) @ lin("self_attn/out_proj", i)
            h = ln(x, W, "layers/norm_cross", i)
            cq = h @ lin("cross_attn/q_proj", i) + scale * ((h @ P["lora_q/a"][i]) @ P["lora_q/b"][i])
            ck, cv = jnp.split(memory @ lin("cross_attn/kv_proj", i), 2, -1)
            cv = cv + scale * ((memory @ P["lora_v/a"][i]) @ P["lora_v/b"][i])
            y = sdpa(heads(cq), heads(ck), heads(cv), key_mask=key_mask)
            x = x + y.reshape(B, S, D) @ lin("cross_attn/out_proj", i)
            x = x + mlp(ln(x, W, "layers/norm2", i), i)
        h = ln(x, W, "out_norm")
        total, count = 0.0, 0
        for k in range(K):
            n = T - k
            if n > 0:
                logits = h[:, k:k + n] @ W["heads"][k]
                total = total + optax.softmax_cross_entropy_with_integer_labels(logits, tgt[:, k, :n]).sum()
                count += B * n
        return total / count

    optimizer = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)

    def step(P, opt_state, W, *batch):
        loss, grads = jax.value_and_grad(loss_fn)(P, W, *batch)
        updates, opt_state = optimizer.update(grads, opt_state, P)
        return optax.apply_updates(P, updates), opt_state, loss

    step_j = jit(step, donate_argnums=(0, 1))
    tgt, cond, memory, mask = inputs
    batch = (jnp.asarray(tgt), jnp.asarray(cond), jnp.asarray(memory), jnp.asarray(mask.astype(bool)))
    state = {}

    def reset():  # the initial adapters and a fresh optimizer state (the step donates both)
        state["P"] = {k: jnp.array(v) for k, v in ad_flat.items()}
        state["o"] = optimizer.init(state["P"])

    def run():
        state["P"], state["o"], loss = step_j(state["P"], state["o"], frozen, *batch)
        return float(loss)

    reset()
    return run, reset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--card", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--lora-r", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--host-devices", type=int, default=1,
                    help="JAX side: split the CPU into N host devices and the batch over them (data parallel, "
                         "replicated weights, gradients all-reduced): the elementwise fusions, which XLA:CPU runs "
                         "on one thread per device, then run on N threads")
    args = ap.parse_args()

    import jax

    if args.host_devices > 1:
        jax.config.update("jax_num_cpu_devices", args.host_devices)  # before the backend starts
    import jax.numpy as jnp
    import numpy as np
    import optax
    import torch

    from imgen_jax.instruct.fusion import FusionConfig, init_adapters
    from imgen_jax.models.lm import LMConfig, abstract_lm
    from imgen_jax.train.step import apply_update, codes_loss_and_grads
    from imgen_jax.weights import load_into, module_shapes, module_weights
    from imgen_jax.xla import jit

    jax.config.update("jax_default_matmul_precision", "highest")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(device_line(), f"| torch {torch.__version__} threads {torch.get_num_threads()}")
    cfg = LMConfig(dim=args.dim, num_heads=args.heads, num_layers=args.layers, ffn_dim=4 * args.dim, card=args.card,
                   text_dim=args.dim)
    fcfg = FusionConfig.for_lm(cfg, lora_r=args.lora_r, lora_alpha=2.0 * args.lora_r, pos_emb_frames=args.frames + 1)
    rng = np.random.default_rng(0)
    lm_flat = {}
    for name, (shape, _) in module_shapes(abstract_lm(cfg)).items():
        if name.endswith("scale"):
            lm_flat[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        elif len(shape) >= 2:
            lm_flat[name] = (rng.standard_normal(shape) / math.sqrt(shape[-2])).astype(np.float32)
        else:
            lm_flat[name] = (0.02 * rng.standard_normal(shape)).astype(np.float32)
    ad_flat = module_weights(init_adapters(fcfg, seed=0))
    ad_flat["gates"] = (0.1 * rng.standard_normal(ad_flat["gates"].shape)).astype(np.float32)  # open the fusion
    ad_flat["lora_q/b"] = (0.01 * rng.standard_normal(ad_flat["lora_q/b"].shape)).astype(np.float32)
    ad_flat["lora_v/b"] = (0.01 * rng.standard_normal(ad_flat["lora_v/b"].shape)).astype(np.float32)

    B, T, L, K = args.batch, args.frames, args.text_len, cfg.num_codebooks
    tgt = rng.integers(0, cfg.card, (B, K, T)).astype(np.int32)
    cond = rng.integers(0, cfg.card, (B, K, T)).astype(np.int32)
    memory = rng.standard_normal((B, L, cfg.dim)).astype(np.float32)
    mask = np.ones((B, L), np.int32)
    mask[1:, L // 2:] = 0  # padded instructions in all rows but the first
    memory = (memory * mask[..., None]).astype(np.float32)

    # ---- JAX: the training step's own functions, one jit, donated state
    lr, wd = 1e-4, 0.05
    from flax import nnx

    lm = abstract_lm(cfg)
    load_into(lm, lm_flat, "bench")
    lm_def, lm_state = nnx.split(lm)
    adapters = init_adapters(fcfg, seed=0)
    load_into(adapters, ad_flat, "bench")
    ad_def, ad_state = nnx.split(adapters)
    params0 = jax.tree.map(np.asarray, nnx.to_pure_dict(ad_state))  # host copies: the step donates its inputs
    optimizer = optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=wd)

    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()[: args.host_devices]), ("data",))
    rep, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    if B % args.host_devices:
        raise SystemExit(f"--batch {B} must be a multiple of --host-devices {args.host_devices}")

    def fresh():
        p = jax.device_put(jax.tree.map(jnp.array, params0), rep)
        return p, jax.device_put(optimizer.init(p), rep)

    def jax_step_fn(unroll_layers: bool):
        def jax_step(params, opt_state, lm_state, tgt, cond, memory, mask):
            lm = nnx.merge(lm_def, lm_state)
            lm.unroll_layers = unroll_layers  # what train.py's step sets from config.model.unroll_layers
            loss, grads = codes_loss_and_grads(lm, ad_def, params, tgt, cond, memory, mask)
            params, opt_state = apply_update(optimizer, params, opt_state, grads)
            return params, opt_state, loss

        step_j = jit(jax_step, donate_argnums=(0, 1))
        state = dict(zip("po", fresh()))

        def run():
            state["p"], state["o"], loss = step_j(state["p"], state["o"], *j_in)
            return float(loss)

        compile_s = timed_once(run)
        state["p"], state["o"] = fresh()  # restart from the initial state for the parity check
        return run, compile_s, (run(), run()), lambda: matrix_flops(step_j, state["p"], state["o"], *j_in)

    j_in = (jax.device_put(lm_state, rep),) + tuple(jax.device_put(jnp.asarray(a), rows) for a in (tgt, cond, memory, mask))
    ours = {"jax (layer loop)": jax_step_fn(False), "jax (unrolled layers)": jax_step_fn(True)}
    run_plain, reset_plain = plain_jax_step_fn(lm_flat, ad_flat, cfg, fcfg, lr, wd, (tgt, cond, memory, mask))
    compile_plain = timed_once(run_plain)
    reset_plain()  # restart from the initial state for the parity check
    losses = {name: side[2] for name, side in ours.items()}
    losses["plain jnp"] = (run_plain(), run_plain())

    # ---- PyTorch
    t_step, _ = torch_step_fn(lm_flat, ad_flat, cfg, fcfg, lr, wd)
    t_in = (torch.from_numpy(tgt).long(), torch.from_numpy(cond).long(), torch.from_numpy(memory), torch.from_numpy(mask))
    tl = (t_step(*t_in), t_step(*t_in))
    for name, jl in losses.items():
        for what, a, b in (("loss before the update", jl[0], tl[0]), ("loss after one AdamW update", jl[1], tl[1])):
            rel = abs(a - b) / abs(b)
            print(f"{what}: {name} {a:.6f} torch {b:.6f} (rel diff {rel:.1e})")
            assert rel <= 1e-4, f"{what}: {name} and torch disagree ({rel:.2e})"

    print(load_average(), "at start")
    sides = {"torch": lambda: t_step(*t_in), **{name: side[0] for name, side in ours.items()}, "plain jnp": run_plain}
    med = alternate(sides, args.repeats)
    best = min(ours, key=med.get)
    t_torch, t_jax = med["torch"], med[best]
    tokens = B * K * T
    n_ad = sum(v.size for v in ad_flat.values())
    n_lm = sum(v.size for v in lm_flat.values())
    print(f"shape: LM {args.layers} layers x {args.dim} ({args.heads} heads, card {args.card}, {n_lm / 1e6:.1f}M frozen), "
          f"adapters {n_ad / 1e6:.2f}M trainable (fusion on all layers, LoRA r {args.lora_r}); batch {B} x {T} frames, "
          f"text {L}; EnCodec and T5 excluded on both sides")
    compiles = ", ".join(f"{name} {side[1]:.2f} s" for name, side in ours.items())
    print(f"jax compile (first call): {compiles}, plain jnp {compile_plain:.2f} s; {args.host_devices} host device(s), "
          "batch split over them (plain jnp: one device)")
    for name, t in med.items():
        ratio = "" if name == "torch" else f"; torch / it = {t_torch / t:.2f}x"
        print(f"{name + ' step:':28s} {t * 1000:.1f} ms = {1 / t:.2f} steps/s, {tokens / t:.0f} tokens/s "
              f"(median of {args.repeats}, sides alternated{ratio})")
    print(load_average(), "at end")
    for line in floor_lines(ours[best][3](), matmul_rates(), t_jax, t_torch, what=best):
        print(line)
    print(f"speedup: {t_torch / t_jax:.2f} ({best})")


if __name__ == "__main__":
    main()
