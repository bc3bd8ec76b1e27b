"""Benchmark the HyenaDNA backbone: tokenizer speed, train step (fwd+bwd+AdamW, small head) and inference.

One result line per case: tokens/s and peak memory. On CPU it also times a straightforward fp32 baseline
(FFT at exactly 2L, depthwise Conv1d) to check we are at least as fast.

    python benchmarks/bench_model.py                 # CPU cases
    python benchmarks/bench_model.py --device cuda   # the H200 cases from the README table
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch
from torch import nn

import hyena_dna.model as hm
from hyena_dna import HyenaDNAConfig, HyenaDNAModel, tokenizer

# (size, batch, length, gradient checkpointing) per device.
CUDA_CASES = [
    ("hyenadna-tiny-1k-seqlen", 256, 1024, False),
    ("hyenadna-small-32k-seqlen", 8, 32768, False),
    ("hyenadna-small-32k-seqlen", 8, 32768, True),
    ("hyenadna-medium-160k-seqlen", 2, 160000, True),
    ("hyenadna-large-1m-seqlen", 1, 1000000, True),
]
CPU_CASES = [("hyenadna-tiny-1k-seqlen", 4, 1024, False)]


def naive_fft_conv(u: torch.Tensor, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The textbook version: FFT size exactly 2L, normalisation split across forward and inverse."""
    seq_len = u.shape[-1]
    n = 2 * seq_len
    k_f = torch.fft.rfft(k, n=n) / n
    u_f = torch.fft.rfft(u.to(k.dtype), n=n)
    y = torch.fft.irfft(u_f * k_f, n=n, norm="forward")[..., :seq_len]
    return (y + u * bias.unsqueeze(-1)).to(u.dtype)


def naive_short_conv(z: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The textbook causal depthwise convolution of channels-last z (B, L, C): Conv1d padded on both sides, first L
    outputs kept."""
    zt = z.transpose(1, 2)
    out = nn.functional.conv1d(zt, weight, bias, padding=weight.shape[-1] - 1, groups=zt.shape[1])
    return out[..., : zt.shape[-1]].transpose(1, 2)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB, whole process


def bench_tokenizer(n_bases: int) -> None:
    rng = np.random.default_rng(0)
    seq = rng.choice(np.frombuffer(b"ACGTacgtN", dtype=np.uint8), n_bases).tobytes().decode()
    tokenizer.encode(seq[:1000])
    start = time.perf_counter()
    tokenizer.encode(seq)
    rate = n_bases / (time.perf_counter() - start)
    print(f"tokenizer: {rate / 1e6:.1f} M bases/s (one core, target >= 50)")


def bench_model(
    size: str, batch: int, length: int, ckpt: bool, device: torch.device, bf16: bool, steps: int, train: bool
) -> float:
    config = HyenaDNAConfig.from_name(size)
    model = HyenaDNAModel(config).to(device)
    model.gradient_checkpointing = ckpt
    head = nn.Linear(config.d_model, 1).to(device)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
    ids = torch.randint(7, 12, (batch, length), device=device)
    target = torch.randn(batch, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step() -> None:
        if train:
            model.train()
            with autocast:
                pred = head(model(ids).mean(1)).squeeze(-1)
                loss = nn.functional.mse_loss(pred.float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        else:
            model.eval()
            with torch.inference_mode(), autocast:
                model(ids)

    step()  # warm-up: allocator, kernels, lazy init
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    timings = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(time.perf_counter() - start)
    # The median step: robust to a noisy neighbour on a shared machine.
    seconds = float(np.median(timings))
    rate = batch * length / seconds
    mode = "train" if train else "infer"
    extra = " +ckpt" if ckpt else ""
    print(
        f"{size} B{batch} L{length} {mode}{extra} {'bf16' if bf16 else 'fp32'} {device.type}: "
        f"{rate / 1e6:.3f} M tok/s, {seconds * 1e3:.1f} ms/step, peak {peak_memory_gib(device):.2f} GiB"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=9)
    # Smaller CPU cases (a smoke test): the figures then say nothing about the README's.
    parser.add_argument("--bases", type=int, default=20_000_000, help="bases the tokenizer encodes")
    parser.add_argument("--batch", type=int, default=None, help="CPU train batch (default 4; inference takes 4x)")
    parser.add_argument("--length", type=int, default=None, help="CPU tokens per sequence (default 1024)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        bench_tokenizer(args.bases)
        torch.set_num_threads(threads)
        for size, batch, length, ckpt in CPU_CASES:
            batch, length = args.batch or batch, args.length or length
            ours = bench_model(size, batch, length, ckpt, device, False, args.steps, True)
            originals = hm.fft_conv, hm.short_conv
            hm.fft_conv, hm.short_conv = naive_fft_conv, naive_short_conv
            try:
                print("  baseline (straightforward fp32):", end=" ")
                base = bench_model(size, batch, length, ckpt, device, False, args.steps, True)
            finally:
                hm.fft_conv, hm.short_conv = originals
            print(f"tiny-1k CPU train speed vs straightforward fp32: {ours / base:.2f}x")
            bench_model(size, 4 * batch, length, ckpt, device, False, args.steps, False)
        return
    for size, batch, length, ckpt in CUDA_CASES:
        for train in (True, False):
            try:
                bench_model(size, batch, length, ckpt, device, True, args.steps, train)
            except torch.OutOfMemoryError:
                print(f"{size} B{batch} L{length} {'train' if train else 'infer'}: out of memory")
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
