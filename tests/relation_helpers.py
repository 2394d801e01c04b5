"""Hand-built SAEs on the tiny Llama whose cross-layer relation is known, and a brute-force reference of the
ablation effect computed with plain PyTorch hooks on the Hugging Face model (none of saefw's ablation code)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from helpers import set_params

from saefw.registry import build, discover

UP, DOWN = (1, "resid_post"), (2, "resid_post")


@dataclass
class KnownPair:
    """Up SAE (layer 1) features k = 0..5 read and write orthonormal directions q_k; down SAE (layer 2) feature
    0 reads q_0 (what up feature 0 writes: the residual stream carries it from block 1 to block 2), down
    features 1..4 read q_6..q_9, orthogonal to everything the up SAE writes. Both are l1 SAEs with b_dec = 0,
    so f_k = ReLU(x·q_k + b_k); each bias puts its feature's firing rate at 20 % of the tokens."""

    up: object
    down: object
    up_dirs: torch.Tensor  # [6, d]
    up_bias: torch.Tensor
    down_dirs: torch.Tensor  # [5, d]
    down_bias: torch.Tensor


def known_pair(lm, contexts: torch.Tensor, seed: int = 0) -> KnownPair:
    discover()
    caps = lm.capture(contexts, [UP, DOWN])
    d = lm.d_model
    X, Y = caps[UP][:, 1:].reshape(-1, d), caps[DOWN][:, 1:].reshape(-1, d)
    u = torch.linalg.svd(X - X.mean(0), full_matrices=False).Vh[0]  # the direction layer 1 varies most along
    g = torch.Generator().manual_seed(seed)
    R = torch.randn(d, d, generator=g)
    R[:, 0] = u
    Q = torch.linalg.qr(R).Q.T  # orthonormal rows, Q[0] = ±u
    up_dirs, down_dirs = Q[:6].contiguous(), torch.cat([Q[:1], Q[6:10]])
    up_bias = -torch.quantile(X @ up_dirs.T, 0.8, dim=0)
    down_bias = -torch.quantile(Y @ down_dirs.T, 0.8, dim=0)
    up = build("arch", {"name": "l1"}, d_in=d, d_sae=6)
    down = build("arch", {"name": "l1"}, d_in=d, d_sae=5)
    set_params(up, W_enc=up_dirs.T, W_dec=up_dirs, b_enc=up_bias, b_dec=torch.zeros(d))
    set_params(down, W_enc=down_dirs.T, W_dec=down_dirs, b_enc=down_bias, b_dec=torch.zeros(d))
    return KnownPair(up.eval(), down.eval(), up_dirs, up_bias, down_dirs, down_bias)


@torch.no_grad()
def brute_force_effects(hf_model, pair: KnownPair, contexts: torch.Tensor) -> torch.Tensor:
    """effect[k, j] = mean over the tokens where down feature j fires cleanly of (g_j − g'_j), with g' the down
    activations after subtracting f_k(x_t)·q_k from the output of block 1 at every position t ≥ 1 — one
    context and one feature at a time, with forward hooks on the model's own blocks."""
    blocks = hf_model.model.layers
    state: dict = {}

    def first(out):
        return out[0] if isinstance(out, tuple) else out

    def edit(module, args, out):
        k = state.get("k")
        if k is None:
            return None
        x = first(out).clone()
        f = torch.relu(x[:, 1:] @ pair.up_dirs[k] + pair.up_bias[k])  # [1, T−1]
        x[:, 1:] -= f[..., None] * pair.up_dirs[k]
        return (x, *out[1:]) if isinstance(out, tuple) else x

    def grab(module, args, out):
        state["y"] = first(out).detach()

    handles = [blocks[1].register_forward_hook(edit), blocks[2].register_forward_hook(grab)]
    n_up, n_down = len(pair.up_dirs), len(pair.down_dirs)
    drop = torch.zeros(n_up, n_down, dtype=torch.float64)
    fired = torch.zeros(n_down, dtype=torch.float64)
    try:
        for c in range(len(contexts)):
            tokens = contexts[c:c + 1]
            state["k"] = None
            hf_model(tokens)
            g_clean = torch.relu(state["y"][0, 1:] @ pair.down_dirs.T + pair.down_bias).double()  # [T−1, n_down]
            fires = g_clean > 0
            fired += fires.sum(0)
            for k in range(n_up):
                state["k"] = k
                hf_model(tokens)
                g = torch.relu(state["y"][0, 1:] @ pair.down_dirs.T + pair.down_bias).double()
                drop[k] += ((g_clean - g) * fires).sum(0)
    finally:
        for h in handles:
            h.remove()
    return (drop / fired.clamp_min(1)).float()
