"""PyTorch training steps of a Llama-shaped model (config.json fields) on one GPU: the baseline
next to `metamorph train --device cuda`. fp32 parameters and fused AdamW under bf16 autocast
(fp32 masters, bf16 matmuls, as metamorph's GPU path), scaled_dot_product_attention with
is_causal (the flash backend), gradient accumulation over micro-batches, clipping at 1.0.
Usage: torch_train_baseline.py CONFIG SEQ MICRO_BATCH GLOBAL_BATCH STEPS
Prints one "JSON {...}" line per step with its tokens/s (CUDA-synchronised wall time)."""
import json
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
        self.d = h // self.heads
        eps = c.get("rms_norm_eps", 1e-5)
        self.norm1, self.norm2 = RMSNorm(h, eps), RMSNorm(h, eps)
        self.q = nn.Linear(h, self.heads * self.d, bias=False)
        self.k = nn.Linear(h, self.kv * self.d, bias=False)
        self.v = nn.Linear(h, self.kv * self.d, bias=False)
        self.o = nn.Linear(self.heads * self.d, h, bias=False)
        f = c["intermediate_size"]
        self.gate, self.up = nn.Linear(h, f, bias=False), nn.Linear(h, f, bias=False)
        self.down = nn.Linear(f, h, bias=False)

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
        return x + self.down(F.silu(self.gate(y)) * self.up(y))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embed = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["num_hidden_layers"]))
        self.norm = RMSNorm(c["hidden_size"], c.get("rms_norm_eps", 1e-5))
        self.head = nn.Linear(c["hidden_size"], c["vocab_size"], bias=False)
        self.theta = c.get("rope_theta", 10000.0)
        self.d = c["hidden_size"] // c["num_attention_heads"]

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
                logits = model(rows[:, :-1])
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
