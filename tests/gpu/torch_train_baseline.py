"""PyTorch training steps of a Llama-shaped model (config.json fields) on one GPU: the baseline
next to `metamorph train --device cuda`. fp32 parameters and fused AdamW under bf16 autocast
(fp32 masters, bf16 matmuls, as metamorph's GPU path), scaled_dot_product_attention with
is_causal (the flash backend), gradient accumulation over micro-batches, clipping at 1.0, the
model under torch.compile (COMPILE=0 runs it eagerly). A config with num_local_experts gets
Mixtral's MoE feed-forward in the usual grouped form: softmax router, top-k renormalised, tokens
sorted by expert and each expert's rows run as one SwiGLU, scattered back with index_add; under
torch.compile its data-dependent expert sizes break the graph there, as they do for users.
Usage: torch_train_baseline.py CONFIG SEQ MICRO_BATCH GLOBAL_BATCH STEPS
Prints one "JSON {...}" line per step with its tokens/s (CUDA-synchronised wall time)."""
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, n, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, self.heads, self.kv = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]
        self.d = c.get("head_dim", h // self.heads)
        eps = c.get("rms_norm_eps", 1e-5)
        self.norm1, self.norm2 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.q = nn.Linear(h, self.heads * self.d, bias=False)
        self.k = nn.Linear(h, self.kv * self.d, bias=False)
        self.v = nn.Linear(h, self.kv * self.d, bias=False)
        self.o = nn.Linear(self.heads * self.d, h, bias=False)
        f = c["intermediate_size"]
        self.experts = c.get("num_local_experts", 0)
        if self.experts:
            self.top_k = c["num_experts_per_tok"]
            self.router = nn.Linear(h, self.experts, bias=False)
            self.w_gate = nn.Parameter(torch.randn(self.experts, f, h) * 0.02)
            self.w_up = nn.Parameter(torch.randn(self.experts, f, h) * 0.02)
            self.w_down = nn.Parameter(torch.randn(self.experts, h, f) * 0.02)
        else:
            self.gate, self.up = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
            self.down = nn.Linear(f, h, bias=False)

    def moe(self, y):
        shape = y.shape
        y = y.reshape(-1, shape[-1])
        probs = F.softmax(self.router(y).float(), dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        weights = (weights / weights.sum(-1, keepdim=True)).to(y.dtype)
        flat = experts.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.experts).tolist()
        token = order // self.top_k
        rows = y[token]
        out = torch.zeros_like(y)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            r = rows[start:start + n]
            h = F.silu(r @ self.w_gate[e].t()) * (r @ self.w_up[e].t())
            contrib = (h @ self.w_down[e].t()) * weights.reshape(-1)[order[start:start + n], None]
            out.index_add_(0, token[start:start + n], contrib.to(out.dtype))
            start += n
        return out.reshape(shape)

    def forward(self, x, cos, sin):
        b, s, _ = x.shape
        y = self.norm1(x)
        q = self.q(y).view(b, s, self.heads, self.d).transpose(1, 2)
        k = self.k(y).view(b, s, self.kv, self.d).transpose(1, 2)
        v = self.v(y).view(b, s, self.kv, self.d).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        group = self.heads // self.kv
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, -1))
        y = self.norm2(x)
        if self.experts:
            return x + self.moe(y)
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5))
        self.head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.theta = c.get("rope_theta", 10000.0)
        self.d = c.get("head_dim", c["hidden_size"] // c["num_attention_heads"])

    def forward(self, ids):
        s = ids.shape[1]
        inv = 1.0 / self.theta ** (torch.arange(0, self.d, 2, device=ids.device).float() / self.d)
        ang = torch.outer(torch.arange(s, device=ids.device).float(), inv)
        ang = torch.cat((ang, ang), dim=-1)
        cos, sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)
        x = self.embed(ids)
        for blk in self.blocks:
            x = blk(x, cos, sin)
        return self.head(self.norm(x))


def main():
    cfg = json.load(open(sys.argv[1]))
    seq, micro, global_batch, steps = (int(a) for a in sys.argv[2:6])
    torch.manual_seed(0)
    print("torch", torch.__version__, "device:", torch.cuda.get_device_name(0), flush=True)
    model = Llama(cfg).cuda()
    print("parameters", sum(p.numel() for p in model.parameters()), flush=True)
    compiled = os.environ.get("COMPILE", "1") == "1"
    step_model = torch.compile(model) if compiled else model
    print("torch.compile", compiled, flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True)
    vocab = min(cfg["vocab_size"], 258)  # the byte ids metamorph's run sees
    for step in range(steps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(global_batch // micro):
            rows = torch.randint(0, vocab, (micro, seq + 1), device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = step_model(rows[:, :-1])
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), rows[:, 1:].reshape(-1))
            (loss * micro / global_batch).backward()
            total += loss.item() * micro / global_batch
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        tps = global_batch * seq / seconds
        print(f"step {step + 1}: loss {total:.4f} {seconds:.3f} s {tps:.0f} tokens/s", flush=True)
        print("JSON " + json.dumps({"step": step + 1, "loss": total, "seconds": seconds,
                                    "tokens_per_s": tps}), flush=True)
    print("peak memory GiB", torch.cuda.max_memory_allocated() / 2**30, flush=True)


if __name__ == "__main__":
    main()
