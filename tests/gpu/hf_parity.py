"""Hugging Face logits parity, no downloads: Llama, Qwen3 and Mixtral models built from configs
in transformers with random weights, saved as safetensors, imported with `metamorph ckpt import`,
and their logits from `metamorph logits` (cuda, cpu) compared with transformers' on the same
tokens. Runs on the GPU machine (python3 there has torch, transformers and safetensors).

The reference is transformers' forward pass in float64 on the CPU (eager attention): exact for
both fp32 and bf16 purposes. Beside metamorph, transformers itself is measured against it in
fp32 and in bf16 on the GPU, so metamorph's bf16 error is judged against what a bf16 forward of
the same model and tokens costs anyway. Figures per model and path:
  max_abs    max |logit - reference|
  rel_rms    rms(logit - reference) / rms(reference)       (relative error normalised by RMS)
  max_rel    max |logit - reference| / rms(reference)
  token_rel  the median over positions of rms(that position's logit errors) / rms(reference):
             the typical position, unmoved by the few whose MoE routing flipped
  top1       fraction of positions whose arg-max token equals the reference's
Bounds (pass/fail):
  metamorph cpu  (fp32 weights and arithmetic): rel_rms <= 1e-4 and top1 >= 0.999. fp32 carries
                 24 bits; a few layers of fp32 GEMMs and reductions lose ~1e-6, so 1e-4 leaves
                 room for summation order and catches any real mistake (a wrong RoPE theta,
                 norm, routing or name map moves logits by O(1)).
  metamorph cuda (bf16 weights and activations, fp32 accumulation): token_rel <= max(2.5 x
                 transformers-bf16's token_rel, 4e-3) and, for a dense model, <= 0.05; rel_rms
                 <= max(2.5 x transformers-bf16's rel_rms, 4e-3); top1 >= transformers-bf16's
                 top1 - 0.04.
                 bf16 keeps 8 mantissa bits (relative rounding 2^-9 = 0.2% per value); every
                 GEMM input, the residual stream and the attention probabilities are rounded, so
                 a dense forward pass drifts by ~1.5% of the logit RMS (transformers' own bf16:
                 1.6-1.8% here). In an MoE a token whose router margin is below that error takes
                 another expert and its logits move by O(1), and through attention every later
                 position moves a little: Mixtral in transformers' bf16 shows rel_rms ~14%,
                 token_rel ~4.3% and top1 ~0.88. So every figure is judged against transformers'
                 bf16 on the same model and tokens (the same precision class: within 2.5x; 4e-3
                 = 2^-8 floors a lucky small reference error), and a dense model's typical
                 position must also stay below 5%. The top1 margin is ~4 standard errors of a
                 fraction near 0.9 over 1024 positions.

usage: hf_parity.py --metamorph BIN --work DIR [--models llama,qwen3,mixtral] [--devices cuda,cpu]
                    [--batch 4] [--seq 256] [--json FILE] [--skip-metamorph]
The way back is checked too: the imported checkpoint is exported (`metamorph ckpt export
--format safetensors`), loaded by transformers and must give the reference's logits (float64, within 1e-12).
Exit 0 when every compared path is within its bound, 1 otherwise.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import torch


def model_configs():
    """Sizes that run the real code paths: GQA (8 query heads over 2 KV heads), head_dim 64 and
    128 (the tensor-core attention kernels' two sizes; Qwen3's q width 1024 != hidden 512),
    q/k norms and tied embeddings (Qwen3), 8 experts top-2 (Mixtral), RoPE theta inside
    transformers 5's rope_parameters, vocabularies that are not multiples of 64."""
    import transformers as tf
    common = dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False)
    return {
        "llama": tf.LlamaConfig(**common, vocab_size=4000, intermediate_size=1376, head_dim=64,
                                rms_norm_eps=1e-5, rope_theta=500000.0),
        "qwen3": tf.Qwen3Config(**{**common, "tie_word_embeddings": True}, vocab_size=4003,
                                intermediate_size=1536, head_dim=128, rms_norm_eps=1e-6,
                                rope_theta=1000000.0),
        "mixtral": tf.MixtralConfig(**common, vocab_size=3989, intermediate_size=768, head_dim=64,
                                    num_local_experts=8, num_experts_per_tok=2,
                                    rms_norm_eps=1e-5, rope_theta=1000000.0),
    }


def randomise(model, seed):
    """Weights that give informative logits (transformers' 0.02 init makes them nearly flat):
    matrices N(0, 1/fan_in), so activations stay O(1) and logits are ~N(0, 1); norm weights
    1 + N(0, 0.1) so a dropped or misplaced norm shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def load_hf(path, dtype, device, attn):
    from transformers import AutoConfig, AutoModelForCausalLM
    kwargs = {"attn_implementation": attn}
    # transformers 5 runs MoE experts through torch's grouped_mm, which has no float64 (and
    # no CPU path everywhere): the per-expert loop ("eager") on the CPU.
    if device == "cpu" and getattr(AutoConfig.from_pretrained(path), "num_local_experts", 0):
        kwargs["experts_implementation"] = "eager"
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    except TypeError:  # transformers 4 names it torch_dtype
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kwargs)
    return model.to(device).eval()


def hf_logits(path, tokens, dtype, device, attn):
    model = load_hf(path, dtype, device, attn)
    with torch.no_grad():
        out = model(input_ids=torch.tensor(tokens, dtype=torch.long, device=device)).logits
    result = out.double().cpu().numpy()
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


def compare(got, ref):
    diff = got.astype(np.float64) - ref
    rms_ref = float(np.sqrt(np.mean(ref * ref)))
    return {"max_abs": float(np.abs(diff).max()),
            "rel_rms": float(np.sqrt(np.mean(diff * diff)) / rms_ref),
            "max_rel": float(np.abs(diff).max() / rms_ref),
            "token_rel": float(np.median(np.sqrt(np.mean(diff * diff, axis=-1))) / rms_ref),
            "top1": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
            "rms_ref": rms_ref}


def run(cmd, log):
    start = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    log.write(f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}[exit {r.returncode}, "
              f"{time.time() - start:.1f} s]\n")
    log.flush()
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[-500:]}")
    return r.stdout


def metamorph_logits(binary, hf_dir, tokens_path, device, work, log):
    """Imports hf_dir once (ckpt beside it) and returns the logits on `device` and the JSON the
    command printed."""
    ckpt = os.path.join(work, "ckpt")
    if not os.path.exists(os.path.join(ckpt, "latest")):
        run([binary, "ckpt", "import", hf_dir, "--out", ckpt], log)
    out = os.path.join(work, f"logits_{device}.npy")
    printed = run([binary, "logits", "--ckpt", ckpt, "--tokens", tokens_path, "--out", out,
                   "--device", device, "--json"], log)
    return np.load(out), json.loads(printed.strip().splitlines()[-1])


def bounds(path, stats, hf_bf16, moe):
    """(passed, the bound in words) for a metamorph path; None for transformers' own paths."""
    if path == "metamorph_cpu":
        return (stats["rel_rms"] <= 1e-4 and stats["top1"] >= 0.999,
                "rel_rms <= 1e-4, top1 >= 0.999")
    if path == "transformers_f64_from_export":
        # The same weights and config: equal up to float64 summation order (threads).
        return stats["rel_rms"] <= 1e-12, "rel_rms <= 1e-12 (the reference's own weights)"
    if path == "metamorph_cuda":
        token_limit = max(2.5 * hf_bf16["token_rel"], 4e-3)
        if not moe:
            token_limit = min(token_limit, 0.05)
        limit = max(2.5 * hf_bf16["rel_rms"], 4e-3)
        floor = hf_bf16["top1"] - 0.04
        return (stats["token_rel"] <= token_limit and stats["rel_rms"] <= limit and
                stats["top1"] >= floor,
                f"token_rel <= {token_limit:.2e}, rel_rms <= {limit:.2e}, top1 >= {floor:.3f}")
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metamorph", default="metamorph")
    ap.add_argument("--work", required=True)
    ap.add_argument("--models", default="llama,qwen3,mixtral")
    ap.add_argument("--devices", default="cuda,cpu")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--skip-metamorph", action="store_true",
                    help="only transformers' paths (checks this script's side)")
    a = ap.parse_args()
    import transformers
    torch.backends.cuda.matmul.allow_tf32 = False  # transformers' fp32 path: real fp32
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.cuda.is_available()
    configs = model_configs()
    os.makedirs(a.work, exist_ok=True)
    log = open(os.path.join(a.work, "commands.log"), "a")
    report = {"torch": torch.__version__, "transformers": transformers.__version__,
              "gpu": torch.cuda.get_device_name(0) if cuda else None,
              "batch": a.batch, "seq": a.seq, "models": {}}
    failed = []
    for name in a.models.split(","):
        work = os.path.join(a.work, name)
        hf_dir = os.path.join(work, "hf")
        os.makedirs(work, exist_ok=True)
        cfg = configs[name]
        torch.manual_seed(a.seed)
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_config(cfg)
        randomise(model, a.seed)
        try:
            model.save_pretrained(hf_dir, safe_serialization=True)
        except TypeError:  # a transformers that always writes safetensors
            model.save_pretrained(hf_dir)
        del model
        gen = torch.Generator().manual_seed(a.seed + 1)
        tokens = torch.randint(0, cfg.vocab_size, (a.batch, a.seq), generator=gen)
        tokens = tokens.numpy().astype(np.int32)
        tokens_path = os.path.join(work, "tokens.npy")
        np.save(tokens_path, tokens)

        ref = hf_logits(hf_dir, tokens, torch.float64, "cpu", "eager")
        paths = {}
        if cuda:
            paths["transformers_fp32_cuda"] = hf_logits(hf_dir, tokens, torch.float32, "cuda", "sdpa")
            paths["transformers_bf16_cuda"] = hf_logits(hf_dir, tokens, torch.bfloat16, "cuda", "sdpa")
        paths["transformers_bf16_cpu"] = hf_logits(hf_dir, tokens, torch.bfloat16, "cpu", "sdpa")
        timings = {}
        if not a.skip_metamorph:
            for device in a.devices.split(","):
                if device == "cuda" and not cuda:
                    continue
                try:
                    logits, printed = metamorph_logits(a.metamorph, hf_dir, tokens_path, device,
                                                       work, log)
                    paths[f"metamorph_{device}"] = logits
                    timings[f"metamorph_{device}"] = printed.get("forward_s")
                except RuntimeError as e:
                    print(f"{name}: metamorph on {device} failed: {e}")
                    failed.append(f"{name}/metamorph_{device} (did not run)")
            # The way out: `ckpt export` of the imported checkpoint, loaded by transformers
            # again, must give the reference's logits exactly (the same bytes, names and config).
            try:
                exported = os.path.join(work, "exported")
                run([a.metamorph, "ckpt", "export", os.path.join(work, "ckpt"), "--format",
                     "safetensors", "--out", exported], log)
                paths["transformers_f64_from_export"] = hf_logits(exported, tokens, torch.float64,
                                                                  "cpu", "eager")
            except Exception as e:  # noqa: BLE001 (any failure is a finding to report)
                print(f"{name}: export and reload failed: {e}")
                failed.append(f"{name}/transformers_f64_from_export (did not run)")
        hf_bf16 = "transformers_bf16_cuda" if cuda else "transformers_bf16_cpu"
        entry = {"config": {k: v for k, v in cfg.to_dict().items()
                            if k in ("vocab_size", "hidden_size", "num_hidden_layers", "head_dim",
                                     "num_attention_heads", "num_key_value_heads",
                                     "num_local_experts", "num_experts_per_tok",
                                     "tie_word_embeddings")},
                 "paths": {}}
        for path, logits in paths.items():
            assert logits.shape == ref.shape, f"{name} {path}: {logits.shape} vs {ref.shape}"
            entry["paths"][path] = compare(logits, ref)
        for path, stats in entry["paths"].items():
            verdict = bounds(path, stats, entry["paths"][hf_bf16],
                             bool(getattr(cfg, "num_local_experts", 0)))
            if verdict is not None:
                stats["passed"], stats["bound"] = verdict
                if not verdict[0]:
                    failed.append(f"{name}/{path}")
            if path in timings:
                stats["forward_s"] = timings[path]
            print(f"{name:8s} {path:24s} max_abs {stats['max_abs']:.3e}  rel_rms "
                  f"{stats['rel_rms']:.3e}  token_rel {stats['token_rel']:.3e}  top1 "
                  f"{stats['top1']:.4f}" + ("" if verdict is None else
                                            f"  {'PASS' if verdict[0] else 'FAIL'} "
                                            f"({verdict[1]})"), flush=True)
        report["models"][name] = entry
    report["failed"] = failed
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
    print("hf_parity:", "FAIL " + ", ".join(failed) if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
