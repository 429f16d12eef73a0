"""The attention oracle the KV benchmarks share: ways to store K/V, fp32 attention over them,
the error metrics, and the cases (synthetic outlier keys, the demo model's real K/V).

``bench_kv_accuracy.py`` documents each method, metric and case; ``bench_kv_alternatives.py``
scores other storage formats against the same oracle.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import PARIS_TEXT
from breccia_sglang.kvcache import dequantize_kv, quantize_kv
from breccia_sglang.kvcache.quant import FP8

FP8_MAX = 448.0  # largest finite float8_e4m3fn
TARGET_COS = 0.9995
NUM_Q_HEADS, NUM_KV_HEADS = 9, 3  # SmolLM2-135M's GQA shape, reused for the synthetic cases
SYNTH_HEAD_DIMS = (64, 128)
SYNTH_CONTEXTS = (97, 1024, 4096)  # 97: not a multiple of any page size
SYNTH_QUERIES = 16

# --- the ways K/V reach attention: (T, H, D) float -> (T, H, D) fp32 ---------------------

def kv_ours(x: torch.Tensor) -> torch.Tensor:
    return dequantize_kv(*quantize_kv(x))


def kv_sglang_scale1(x: torch.Tensor) -> torch.Tensor:
    # SGLang does x.div_(1.0).to(float8_e4m3fn) with no clamp. What the cast does beyond 448
    # depends on torch: this torch (2.14) saturates finite overflow and +-inf to +-448 (c10
    # Float8_e4m3fn.h, pytorch#178817, April 2026); older torch's C++ cast mapped |x| >= 480
    # to NaN, which would poison every query head reading that kv head. We model the torch
    # that runs here and count the clipped elements so the older behaviour can be read off.
    return x.to(FP8).to(torch.float32)


def kv_sglang_amax(x: torch.Tensor) -> torch.Tensor:
    scale = x.abs().amax().clamp_min(torch.finfo(torch.float32).tiny) / FP8_MAX
    return (x / scale).to(FP8).to(torch.float32) * scale


def kv_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.bfloat16).to(torch.float32)


# bf16 is not a contender: it is the usual unquantized cache, shown to calibrate the target.
METHODS = {"ours": kv_ours, "sglang_scale1": kv_sglang_scale1, "sglang_amax": kv_sglang_amax, "bf16": kv_bf16}


def cast_stats(x: torch.Tensor) -> dict:
    """What the scale-1.0 cast does to x: elements clipped at 448 and nonzeros flushed to 0."""
    q = x.to(FP8).to(torch.float32)
    return {
        "clipped": int((x.abs() > FP8_MAX).sum()),
        "flushed": int(((x != 0) & (q == 0)).sum()),
        "numel": x.numel(),
    }


# --- attention and metrics ---------------------------------------------------------------

def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v in fp32.

    q : (Tq, Hq, D); k, v : (T, Hkv, D). With ``causal``, query i sits at position i
    (Tq == T); without, every query sees the whole context (decode). Returns (Tq, Hq, D).
    """
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)  # q head h reads kv head h // group (Llama layout)
    v = v.repeat_interleave(group, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
    if causal:
        future = torch.ones(q.shape[0], k.shape[0], dtype=torch.bool).triu(1)
        logits = logits.masked_fill(future, float("-inf"))
    return torch.einsum("hqk,khd->qhd", logits.softmax(dim=-1), v)


def compare(ref: torch.Tensor, out: torch.Tensor) -> dict:
    cos = F.cosine_similarity(out, ref, dim=-1)  # one value per (query, head); NaN propagates
    return {
        "cos_min": cos.min().item(),
        "cos_mean": cos.mean().item(),
        "frac_cos_ok": (cos >= TARGET_COS).float().mean().item(),  # share of rows meeting the target
        "rel_l2": ((out - ref).norm() / ref.norm()).item(),
        "err_sq": (out - ref).pow(2).sum().item(),  # kept to pool rel_l2 over layers
        "ref_sq": ref.pow(2).sum().item(),
    }


def run_methods(q, k, v, causal) -> dict:
    ref = attention(q, k, v, causal)
    results = {}
    for name, through_cache in METHODS.items():
        results[name] = compare(ref, attention(q, through_cache(k), through_cache(v), causal))
    # Where ours loses accuracy: K alone (through the softmax) or V alone (linear in the output).
    results["ours_rel_l2_k_only"] = compare(ref, attention(q, kv_ours(k), v, causal))["rel_l2"]
    results["ours_rel_l2_v_only"] = compare(ref, attention(q, k, kv_ours(v), causal))["rel_l2"]
    results["ratio"] = ratio(results)
    return results


def pooled(results: list[dict]) -> dict:
    """compare() results of several layers as one: worst min cos, mean of the mean cos, and
    rel L2 over all of their outputs together."""
    return {
        "cos_min": min(r["cos_min"] for r in results),
        "cos_mean": sum(r["cos_mean"] for r in results) / len(results),
        "rel_l2": math.sqrt(sum(r["err_sq"] for r in results) / sum(r["ref_sq"] for r in results)),
    }


def ratio(results: dict) -> float:
    ours = results["ours"]["rel_l2"]
    return results["sglang_scale1"]["rel_l2"] / ours if ours > 0 else float("inf")


# --- case 1: synthetic outlier keys --------------------------------------------------------

def outlier_keys(tokens: int, heads: int, dim: int, gen: torch.Generator, offset: float = 0.0) -> torch.Tensor:
    """(T, H, D) keys: N(0, 1), 4 fixed outlier channels per head (fixed sign, magnitude
    log-uniform in [10, 100] per (token, head, channel)), 1/8 of (token, head) rows x 0.01;
    then ``offset`` (same sign) added to every token's outlier channels."""
    k = torch.randn(tokens, heads, dim, generator=gen)
    bias = torch.zeros(heads, dim)
    for h in range(heads):
        channels = torch.randperm(dim, generator=gen)[:4]
        sign = torch.randint(0, 2, (4,), generator=gen).float() * 2 - 1
        magnitude = 10 ** (1 + torch.rand(tokens, 4, generator=gen))
        k[:, h, channels] = sign * magnitude
        bias[h, channels] = sign * offset
    quiet = torch.rand(tokens, heads, 1, generator=gen) < 1 / 8
    return torch.where(quiet, k * 0.01, k) + bias


def synthetic_qkv(dim: int, tokens: int, offset: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One synthetic decode case: q (SYNTH_QUERIES, NUM_Q_HEADS, D), outlier keys and N(0, 1)
    values (T, NUM_KV_HEADS, D). Seeded by (D, T) only, so both families share their keys."""
    gen = torch.Generator().manual_seed(1000 * dim + tokens)
    k = outlier_keys(tokens, NUM_KV_HEADS, dim, gen, offset)
    v = torch.randn(tokens, NUM_KV_HEADS, dim, generator=gen)
    q = torch.randn(SYNTH_QUERIES, NUM_Q_HEADS, dim, generator=gen)
    return q, k, v


def synthetic_cases() -> list[dict]:
    rows = []
    for family, offset in (("outlier keys", 0.0), ("outlier keys +400", 400.0)):
        for dim in SYNTH_HEAD_DIMS:
            for tokens in SYNTH_CONTEXTS:
                q, k, v = synthetic_qkv(dim, tokens, offset)
                rows.append({
                    "case": f"{family}, D={dim}, T={tokens}",
                    "family": family, "head_dim": dim, "context": tokens,
                    "q_heads": NUM_Q_HEADS, "kv_heads": NUM_KV_HEADS, "queries": SYNTH_QUERIES,
                    "k_cast": cast_stats(k), "v_cast": cast_stats(v),
                    **run_methods(q, k, v, causal=False),
                })
    return rows


# --- case 2: real K/V of the demo model ----------------------------------------------------

def capture_demo_qkv(model_dir: Path):
    """Run SmolLM2 in fp32 over PARIS_TEXT; return per-layer post-RoPE (q, k, v) as
    (T, H, D) tensors and each layer's attention output before o_proj, (T, Hq * D)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(PARIS_TEXT, return_tensors="pt").input_ids
    layers = model.model.layers
    head_dim = model.config.head_dim
    q_raw, attn_out, hooks = {}, {}, []
    for i, layer in enumerate(layers):
        hooks.append(layer.self_attn.q_proj.register_forward_hook(
            lambda mod, inp, out, i=i: q_raw.__setitem__(i, out.detach())))
        hooks.append(layer.self_attn.o_proj.register_forward_pre_hook(
            lambda mod, inp, i=i: attn_out.__setitem__(i, inp[0].detach())))
    with torch.no_grad():
        cache = model(ids, use_cache=True).past_key_values
        positions = torch.arange(ids.shape[1])[None]
        cos, sin = model.model.rotary_emb(q_raw[0], positions)
    for h in hooks:
        h.remove()

    captured = []
    for i in range(len(layers)):
        q = q_raw[i].view(1, ids.shape[1], -1, head_dim).transpose(1, 2)  # (1, Hq, T, D)
        q, _ = apply_rotary_pos_emb(q, q, cos, sin)
        captured.append({
            "q": q[0].transpose(0, 1).contiguous(),  # (T, Hq, D)
            "k": cache.layers[i].keys[0].transpose(0, 1).contiguous(),  # (T, Hkv, D), post-RoPE
            "v": cache.layers[i].values[0].transpose(0, 1).contiguous(),
            "attn_out": attn_out[i][0],  # (T, Hq * D)
        })
    return captured, ids.shape[1], model.config


def demo_model_case(model_dir: Path) -> dict:
    captured, tokens, config = capture_demo_qkv(model_dir)
    layers = []
    for i, c in enumerate(captured):
        ref = attention(c["q"], c["k"], c["v"], causal=True)
        # The captured Q/K/V must reproduce the model's own attention (sdpa, fp32) or
        # nothing below means anything.
        recon = ((ref.flatten(1) - c["attn_out"]).norm() / c["attn_out"].norm()).item()
        if recon > 1e-4:
            raise RuntimeError(f"layer {i}: Q/K/V capture does not reproduce attention (rel err {recon:.2e})")
        layers.append({"layer": i, "reconstruction_rel_err": recon,
                       "k_cast": cast_stats(c["k"]), "v_cast": cast_stats(c["v"]),
                       "k_amax": c["k"].abs().max().item(), "v_amax": c["v"].abs().max().item(),
                       **run_methods(c["q"], c["k"], c["v"], causal=True)})
    overall = {name: pooled([layer[name] for layer in layers]) for name in METHODS}
    overall["ratio"] = ratio(overall)
    return {
        "model": str(model_dir), "tokens": tokens, "layers_count": len(layers),
        "q_heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
        "head_dim": config.head_dim, "text": PARIS_TEXT,
        "overall": overall, "layers": layers,
    }
