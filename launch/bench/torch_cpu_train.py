"""The peer a user would otherwise pick: the same Llama-style model trained by PyTorch (eager,
fp32, torch.optim.AdamW) on the CPU, timed per optimizer step. Debian 12's torch is 1.13, which
has neither F.rms_norm nor scaled_dot_product_attention, so both are written out as a user of
that version would.

usage: /usr/bin/python3 launch/bench/torch_cpu_train.py MODEL.json --seq S --micro-batch B
       --global-batch G --steps N [--threads T]
Prints one JSON line: {"tokens_per_s": median, "step_s": [...], "params": N}.
"""
import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def causal_attention(q, k, v):  # [b, h, s, d]; k, v with kv heads
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
    s = q.shape[2]
    scores = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    mask = torch.ones(s, s, dtype=torch.bool).triu(1)
    return torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


class SwiGlu(torch.nn.Module):
    def __init__(self, h, f):
        super().__init__()
        self.gate = torch.nn.Linear(h, f, bias=False)
        self.up = torch.nn.Linear(h, f, bias=False)
        self.down = torch.nn.Linear(f, h, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class SparseMoe(torch.nn.Module):
    """Dropless top-k MoE the way Hugging Face's Mixtral/Qwen2-MoE blocks run it in eager mode:
    a loop over experts with index_add, plus the switch load-balancing and z losses."""

    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.E = c.get("num_experts") or c.get("num_local_experts")
        self.k = c["num_experts_per_tok"]
        self.norm = c.get("norm_topk_prob", False) or c.get("model_type") == "mixtral"
        self.aux_coef = c.get("router_aux_loss_coef", 0.001)
        self.z_coef = c.get("router_z_loss_coef", 0.0)
        self.router = torch.nn.Linear(h, self.E, bias=False)
        f = c.get("moe_intermediate_size", c["intermediate_size"])
        self.experts = torch.nn.ModuleList(SwiGlu(h, f) for _ in range(self.E))
        fs = c.get("shared_expert_intermediate_size") or 0
        self.shared = SwiGlu(h, fs) if fs else None
        gated = fs and c.get("model_type") == "qwen2_moe"
        self.shared_gate = torch.nn.Linear(h, 1, bias=False) if gated else None

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x)
        probs = torch.softmax(logits, dim=-1)
        gates, chosen = torch.topk(probs, self.k, dim=-1)
        if self.norm:
            gates = gates / gates.sum(dim=-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(self.E):
            token, slot = torch.where(chosen == e)
            if len(token):
                y = y.index_add(0, token, gates[token, slot, None] * self.experts[e](x[token]))
        if self.shared is not None:
            s = self.shared(x)
            y = y + (torch.sigmoid(self.shared_gate(x)) * s if self.shared_gate is not None else s)
        f = F.one_hot(chosen, self.E).sum(dim=1).float().mean(dim=0) / self.k
        self.loss = self.aux_coef * self.E * (f * probs.mean(dim=0)).sum()
        self.loss = self.loss + self.z_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return y.view(shape)


def is_moe_layer(c, layer):
    experts = c.get("num_experts") or c.get("num_local_experts") or 0
    return (experts > 0 and layer >= c.get("first_k_dense_replace", 0)
            and (layer + 1) % c.get("decoder_sparse_step", 1) == 0)


class Block(torch.nn.Module):
    def __init__(self, c, layer=0):
        super().__init__()
        h, d = c["hidden_size"], c["head_dim"]
        self.heads, self.kv_heads, self.d = c["num_attention_heads"], c["num_key_value_heads"], d
        self.eps = c["rms_norm_eps"]
        self.norm1 = torch.nn.Parameter(torch.ones(h))
        self.norm2 = torch.nn.Parameter(torch.ones(h))
        bias = c.get("attention_bias", False)
        self.q = torch.nn.Linear(h, self.heads * d, bias=bias)
        self.k = torch.nn.Linear(h, self.kv_heads * d, bias=bias)
        self.v = torch.nn.Linear(h, self.kv_heads * d, bias=bias)
        self.o = torch.nn.Linear(self.heads * d, h, bias=False)
        self.mlp = SparseMoe(c) if is_moe_layer(c, layer) else SwiGlu(h, c["intermediate_size"])

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        a = rms_norm(x, self.norm1, self.eps)
        q = self.q(a).view(b, s, self.heads, self.d).transpose(1, 2)
        k = self.k(a).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        v = self.v(a).view(b, s, self.kv_heads, self.d).transpose(1, 2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        o = causal_attention(q, k, v)
        x = x + self.o(o.transpose(1, 2).reshape(b, s, -1))
        m = rms_norm(x, self.norm2, self.eps)
        return x + self.mlp(m)


def rope(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = torch.nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = torch.nn.ModuleList(Block(c, l) for l in range(c["num_hidden_layers"]))
        self.norm = torch.nn.Parameter(torch.ones(c["hidden_size"]))
        self.eps = c["rms_norm_eps"]
        self.tied = c.get("tie_word_embeddings", False)
        if not self.tied:
            self.head = torch.nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        d, theta = c["head_dim"], c.get("rope_theta", 10000.0)
        self.inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))

    def forward(self, tokens, targets):
        s = tokens.shape[1]
        ang = torch.arange(s, dtype=torch.float32)[:, None] * self.inv_freq[None, :]
        ang = torch.cat([ang, ang], dim=-1)
        cos, sin = ang.cos(), ang.sin()
        x = self.embed(tokens)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        x = rms_norm(x, self.norm, self.eps)
        logits = x @ (self.embed.weight if self.tied else self.head.weight).T
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        for blk in self.blocks:
            if isinstance(blk.mlp, SparseMoe):
                loss = loss + blk.mlp.loss
        return loss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--seq", type=int, required=True)
    ap.add_argument("--micro-batch", type=int, required=True)
    ap.add_argument("--global-batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    c = json.load(open(a.model))
    c.setdefault("head_dim", c["hidden_size"] // c["num_attention_heads"])
    c.setdefault("num_key_value_heads", c["num_attention_heads"])
    c.setdefault("rms_norm_eps", 1e-6)
    torch.manual_seed(0)
    model = Model(c)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    accum = a.global_batch // a.micro_batch
    times = []
    for step in range(a.steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        for _ in range(accum):
            tokens = torch.randint(0, c["vocab_size"], (a.micro_batch, a.seq + 1))
            loss = model(tokens[:, :-1], tokens[:, 1:]) / accum
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    print(json.dumps({"tokens_per_s": a.global_batch * a.seq / median, "step_s": times,
                      "params": sum(p.numel() for p in model.parameters()),
                      "threads": torch.get_num_threads(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
