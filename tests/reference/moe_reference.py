"""Independent PyTorch (float64) Mixture-of-Experts blocks and decoder, for tests.

Three plain-torch modules written from the papers' and Hugging Face models' definitions, not from
metamorph's code: Mixtral (top-k logits then softmax; experts w1/w3/w2), Qwen2-MoE (softmax then
top-k, optional renormalisation, shared expert with a sigmoid gate) and DeepSeek-V3 style sigmoid
scoring with a selection bias. Routing is differentiated by autograd; the load-balancing loss is
coef * E * sum_e f_e P_e (f_e = slots routed to e / (tokens * k), P_e = mean router probability)
and the z-loss coef * mean_t logsumexp(logits_t)^2.

Usage: moe_reference.py layer DIR | model DIR
  layer: DIR holds config.json, layer.txt (layer index), params.json/params.bin (that layer's MoE
         parameters), x.bin (f32 [tokens, h]), dy.bin (f32 [tokens, h]), scale.txt (the weight of
         aux + z). Writes y.bin, losses.txt ("aux z"), grads.bin (params.json order) and dx.bin
         for loss = sum(y * dy) + scale * (aux + z).
  model: as model_reference.py (tokens.bin, targets.bin, shape.json, scale.txt); the loss is
         scale * summed CE + scale * tokens * sum over MoE layers of (aux + z). Writes logits.bin,
         loss.txt, losses.txt (one "aux z" line per MoE layer) and grads.bin.
"""
import json
import math
import sys

import numpy as np
import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from model_reference import IGNORE, attention, load_params, rmsnorm, rope  # noqa: E402

F = torch.nn.functional


def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T


class Moe:
    """Common parts: expert evaluation with an optional capacity, and the router losses."""

    def __init__(self, cfg, params, prefix):
        self.cfg, self.params, self.prefix = cfg, params, prefix
        self.E = cfg.get("num_experts") or cfg.get("num_local_experts")
        self.k = cfg["num_experts_per_tok"]
        extra = cfg.get("metamorph", {})
        self.capacity_factor = extra.get("capacity_factor", 0)
        self.aux_coef = cfg.get("router_aux_loss_coef", 0.001)
        self.z_coef = cfg.get("router_z_loss_coef", 0.0)

    def expert(self, e, x):
        """(w1, w3, w2) = (gate, up, down) of expert e."""
        p = f"{self.prefix}experts.{e}."
        return swiglu(x, self.params[p + "gate_proj.weight"], self.params[p + "up_proj.weight"],
                      self.params[p + "down_proj.weight"])

    def combine(self, x, chosen, gates):
        """chosen/gates [tokens, k]; drops, per expert, the slots past its capacity in token order."""
        tokens = x.shape[0]
        y = torch.zeros_like(x)
        capacity = None
        if self.capacity_factor > 0:
            capacity = math.ceil(self.capacity_factor * tokens * self.k / self.E)
        dropped = 0
        for e in range(self.E):
            hit = (chosen == e)  # [tokens, k]; at most one slot per token
            rows = hit.any(dim=1).nonzero().flatten()
            if capacity is not None and len(rows) > capacity:
                dropped += len(rows) - capacity
                rows = rows[:capacity]
            if len(rows) == 0:
                continue
            gate = (gates * hit)[rows].sum(dim=1, keepdim=True)
            y = y.index_add(0, rows, gate * self.expert(e, x[rows]))
        self.dropped = dropped
        return y

    def shared(self, x):
        """The always-active shared expert (Qwen2-MoE, DeepSeek), optionally sigmoid-gated."""
        if (self.cfg.get("shared_expert_intermediate_size") or 0) == 0:
            return 0
        p = self.prefix + "shared_expert."
        s = swiglu(x, self.params[p + "gate_proj.weight"], self.params[p + "up_proj.weight"],
                   self.params[p + "down_proj.weight"])
        if self.cfg.get("metamorph", {}).get("shared_expert_gate", False):
            s = torch.sigmoid(x @ self.params[self.prefix + "shared_expert_gate.weight"].T) * s
        return s

    def losses(self, logits, chosen, probs):
        tokens = logits.shape[0]
        counts = torch.stack([(chosen == e).sum() for e in range(self.E)]).to(torch.float64)
        f = counts / (tokens * self.k)
        P = probs.mean(dim=0)
        aux = self.aux_coef * self.E * (f * P).sum()
        z = self.z_coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
        return aux, z


class MixtralSparseMoe(Moe):
    def __call__(self, x):
        logits = x @ self.params[self.prefix + "gate.weight"].T
        top_logits, chosen = torch.topk(logits, self.k, dim=-1)
        gates = torch.softmax(top_logits, dim=-1)
        y = self.combine(x, chosen, gates)
        return y, self.losses(logits, chosen, torch.softmax(logits, dim=-1))


class Qwen2MoeSparseBlock(Moe):
    def __call__(self, x):
        logits = x @ self.params[self.prefix + "gate.weight"].T
        probs = torch.softmax(logits, dim=-1)
        gates, chosen = torch.topk(probs, self.k, dim=-1)
        if self.cfg.get("norm_topk_prob", False):
            gates = gates / gates.sum(dim=-1, keepdim=True)
        y = self.combine(x, chosen, gates) + self.shared(x)
        return y, self.losses(logits, chosen, probs)


class SigmoidBiasMoe(Moe):
    def __call__(self, x):
        logits = x @ self.params[self.prefix + "gate.weight"].T
        scores = torch.sigmoid(logits)
        bias = self.params[self.prefix + "gate.e_score_correction_bias"].detach()
        _, chosen = torch.topk(scores.detach() + bias, self.k, dim=-1)
        gates = scores.gather(1, chosen)
        if self.cfg.get("norm_topk_prob", True):
            gates = gates / gates.sum(dim=-1, keepdim=True)
        y = self.combine(x, chosen, gates) + self.shared(x)
        return y, self.losses(logits, chosen, scores / scores.sum(dim=-1, keepdim=True))


def moe_block(cfg, params, layer):
    prefix = f"model.layers.{layer}.mlp."
    scoring = cfg.get("metamorph", {}).get("router_scoring", "softmax_then_topk")
    if scoring == "topk_then_softmax":
        return MixtralSparseMoe(cfg, params, prefix)
    if scoring == "sigmoid_bias":
        return SigmoidBiasMoe(cfg, params, prefix)
    return Qwen2MoeSparseBlock(cfg, params, prefix)


def is_moe_layer(cfg, layer):
    experts = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    step = cfg.get("decoder_sparse_step", 1)
    return experts > 0 and layer >= cfg.get("first_k_dense_replace", 0) and (layer + 1) % step == 0


def forward(cfg, params, tokens):
    """Logits [batch*seq, vocab] and the [(aux, z)] of every MoE layer."""
    batch, seq = tokens.shape
    eps, d, theta = cfg["rms_norm_eps"], cfg["head_dim"], cfg["rope_theta"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    x = params["model.embed_tokens.weight"][tokens]
    losses = []
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        a_in = rmsnorm(x, params[p + "input_layernorm.weight"], eps)
        q = (a_in @ params[p + "self_attn.q_proj.weight"].T).view(batch, seq, heads, d)
        k = (a_in @ params[p + "self_attn.k_proj.weight"].T).view(batch, seq, kv_heads, d)
        v = (a_in @ params[p + "self_attn.v_proj.weight"].T).view(batch, seq, kv_heads, d)
        o = attention(rope(q, theta), rope(k, theta), v).reshape(batch, seq, heads * d)
        x = x + o @ params[p + "self_attn.o_proj.weight"].T
        m_in = rmsnorm(x, params[p + "post_attention_layernorm.weight"], eps)
        if is_moe_layer(cfg, layer):
            y, layer_losses = moe_block(cfg, params, layer)(m_in.reshape(batch * seq, -1))
            x = x + y.view(batch, seq, -1)
            losses.append(layer_losses)
        else:
            x = x + swiglu(m_in, params[p + "mlp.gate_proj.weight"], params[p + "mlp.up_proj.weight"],
                           params[p + "mlp.down_proj.weight"])
    x = rmsnorm(x, params["model.norm.weight"], eps)
    head = params["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else params["lm_head.weight"]
    return (x @ head.T).reshape(batch * seq, -1), losses


def read(directory, name, shape):
    return torch.tensor(np.fromfile(f"{directory}/{name}", dtype=np.float32).reshape(shape),
                        dtype=torch.float64)


def write_grads(directory, specs, params):
    np.concatenate([(params[name].grad if params[name].grad is not None
                     else torch.zeros(shape, dtype=torch.float64)).numpy().reshape(-1)
                    for name, shape in specs]).astype(np.float32).tofile(f"{directory}/grads.bin")


def run_layer(directory):
    cfg = json.load(open(f"{directory}/config.json"))
    layer = int(open(f"{directory}/layer.txt").read())
    specs, params = load_params(directory)
    h = cfg["hidden_size"]
    x = read(directory, "x.bin", (-1, h)).requires_grad_(True)
    dy = read(directory, "dy.bin", (-1, h))
    scale = float(open(f"{directory}/scale.txt").read())
    block = moe_block(cfg, params, layer)
    y, (aux, z) = block(x)
    ((y * dy).sum() + scale * (aux + z)).backward()
    y.detach().numpy().astype(np.float32).tofile(f"{directory}/y.bin")
    x.grad.numpy().astype(np.float32).tofile(f"{directory}/dx.bin")
    open(f"{directory}/losses.txt", "w").write(f"{aux.item():.17g} {z.item():.17g} {block.dropped}\n")
    write_grads(directory, specs, params)


def run_model(directory):
    cfg = json.load(open(f"{directory}/config.json"))
    specs, params = load_params(directory)
    batch, seq = json.load(open(f"{directory}/shape.json"))
    tokens = torch.tensor(np.fromfile(f"{directory}/tokens.bin", dtype=np.int32).reshape(batch, seq),
                          dtype=torch.long)
    targets = torch.tensor(np.fromfile(f"{directory}/targets.bin", dtype=np.int32).reshape(-1),
                           dtype=torch.long)
    scale = float(open(f"{directory}/scale.txt").read())
    logits, losses = forward(cfg, params, tokens)
    loss_sum = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum")
    router = sum((aux + z for aux, z in losses), torch.zeros((), dtype=torch.float64))
    (loss_sum * scale + scale * batch * seq * router).backward()
    logits.detach().numpy().astype(np.float32).tofile(f"{directory}/logits.bin")
    counted = int((targets != IGNORE).sum())
    open(f"{directory}/loss.txt", "w").write(f"{loss_sum.item():.17g} {counted}\n")
    open(f"{directory}/losses.txt", "w").write(
        "".join(f"{aux.item():.17g} {z.item():.17g}\n" for aux, z in losses))
    write_grads(directory, specs, params)


if __name__ == "__main__":
    {"layer": run_layer, "model": run_model}[sys.argv[1]](sys.argv[2])
