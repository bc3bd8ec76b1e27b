"""The HyenaDNA backbone (Nguyen et al., 2023): embeddings, pre-norm Hyena blocks, final LayerNorm.

Read top to bottom: FFT convolution, the implicit long filter (positional embedding -> Sin MLP ->
exponential modulation), the order-2 Hyena operator, the block, the model. Module and buffer names
follow the public checkpoints so that `pretrained.py` maps keys one to one.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from hyena_dna.config import HyenaDNAConfig
from hyena_dna.memory import check_memory


def _fast_fft_size(n: int) -> int:
    """Smallest 2^a * 3^b * 5^c >= n: FFT libraries are fastest on such sizes."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def fft_conv(u: Tensor, k: Tensor, bias: Tensor) -> Tensor:
    """Causal long convolution y = u * k + bias * u along the last axis, via FFT, in fp32.

    u: (B, D, L), k: (D, L), bias: (D,). Zero padding to at least 2L makes the circular
    convolution of the FFT equal the linear (hence causal) one over the first L outputs.
    """
    seq_len = u.shape[-1]
    n = _fast_fft_size(2 * seq_len)
    # bf16/fp16 FFTs lose too much precision over long filters; the conv is memory-bound anyway.
    with torch.autocast(device_type=u.device.type, enabled=False):
        u32 = u.float()
        k_f = torch.fft.rfft(k.float(), n=n)
        u_f = torch.fft.rfft(u32, n=n)
        y = torch.fft.irfft(u_f * k_f, n=n)[..., :seq_len]
        y = torch.addcmul(y, u32, bias.float().unsqueeze(-1))
    return y.to(u.dtype)


def short_conv(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """Causal depthwise convolution of z (B, L, C), channels last, with a short kernel (C, 1, K): K shifted
    multiply-adds along L.

    Equal to Conv1d(groups=C, padding=K-1) on z.transpose(1, 2), first L outputs. Channels last, the projection's
    output is used as it comes (no transposed or padded copy), and the shifts are cheaper than a depthwise
    convolution, whose backward pass is slow on CPU.
    """
    w = weight[:, 0, :]  # (C, K); tap K - 1 weighs the current position
    width = w.shape[-1]
    out = torch.addcmul(bias, z, w[:, -1])
    for shift in range(1, width):
        out[:, shift:].addcmul_(z[:, :-shift], w[:, -1 - shift])
    return out


_GELU_2C = 2 * math.sqrt(2 / math.pi)


def _gelu_tanh_(x: Tensor) -> Tensor:
    """F.gelu(x, approximate="tanh") in place, as x * sigmoid(2a) (= x * (1 + tanh(a)) / 2): on CPU about twice as
    fast as F.gelu's tanh form (8.6 vs 19 ms for 4.3 M floats on one x86 thread), equal to about 5e-7. Only for
    fp32 tensors that need no gradient."""
    s = x * x
    s.mul_(0.044715 * _GELU_2C).add_(_GELU_2C).mul_(x).sigmoid_()
    return x.mul_(s)


class Sin(nn.Module):
    """sin(freq * x) with a learnable frequency per channel: the implicit filter's activation."""

    def __init__(self, dim: int, w: float) -> None:
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.sin(self.freq * x)


class PositionalEmbedding(nn.Module):
    """Filter inputs: normalised time t plus (emb_dim - 1) / 2 complex-exponential bands, for l_max positions."""

    def __init__(self, emb_dim: int, l_max: int) -> None:
        super().__init__()
        t = torch.linspace(0, 1, l_max)[None, :, None]  # (1, L, 1)
        bands = (emb_dim - 1) // 2
        t_rescaled = torch.linspace(0, l_max - 1, l_max)[None, :, None]
        w = 2 * math.pi * t_rescaled / l_max
        f = torch.linspace(1e-4, bands - 1, bands)[None, None]
        z = torch.exp(-1j * f * w)
        # Buffers, not parameters: the public checkpoints store them and never train them (lr_pos_emb = 0).
        self.register_buffer("z", torch.cat([t, z.real, z.imag], dim=-1))  # (1, L, emb_dim)
        self.register_buffer("t", t)

    def forward(self, seq_len: int) -> tuple[Tensor, Tensor]:
        return self.z[:, :seq_len], self.t[:, :seq_len]


class ExponentialModulation(nn.Module):
    """Multiply the filter by exp(-t * |delta|) + shift, a per-channel decay from fast to slow."""

    def __init__(self, d_model: int, modulate: bool, shift: float) -> None:
        super().__init__()
        self.modulate = modulate
        self.shift = shift
        target, fast_decay_pct, slow_decay_pct = 1e-2, 0.3, 1.5
        max_decay = math.log(target) / fast_decay_pct
        min_decay = math.log(target) / slow_decay_pct
        self.register_buffer("deltas", torch.linspace(min_decay, max_decay, d_model)[None, None])

    def forward(self, t: Tensor, h: Tensor) -> Tensor:
        if not self.modulate:
            return h
        decay = torch.exp(-t * self.deltas.abs())
        return h * (decay + self.shift)


class HyenaFilter(nn.Module):
    """Implicit long filter h(t) = modulation(t) * FFN(PositionalEmbedding(t)), one per channel, plus a bias."""

    def __init__(self, config: HyenaDNAConfig, channels: int) -> None:
        super().__init__()
        order = config.filter_order
        self.bias = nn.Parameter(torch.randn(channels))
        self.pos_emb = PositionalEmbedding(config.emb_dim, config.l_max)
        act = Sin(order, config.w)  # one module reused: the checkpoints store its freq at each position
        layers: list[nn.Module] = [nn.Linear(config.emb_dim, order), act]
        for _ in range(config.num_inner_mlps):
            layers += [nn.Linear(order, order), act]
        layers.append(nn.Linear(order, channels, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.modulation = ExponentialModulation(channels, config.modulate, config.shift)

    def forward(self, seq_len: int) -> Tensor:
        """The filter for the first seq_len positions, (channels, seq_len), in fp32."""
        with torch.autocast(device_type=self.bias.device.type, enabled=False):
            z, t = self.pos_emb(seq_len)
            h = self.modulation(t, self.implicit_filter(z))  # (1, L, channels)
        return h[0].transpose(0, 1)


class HyenaOperator(nn.Module):
    """Order-N Hyena: project to N+1 streams, short causal conv, then N-1 rounds of gate * long conv."""

    def __init__(self, config: HyenaDNAConfig) -> None:
        super().__init__()
        d, order = config.d_model, config.hyena_order
        self.d_model, self.order, self.l_max = d, order, config.l_max
        width = d * (order + 1)
        self.in_proj = nn.Linear(d, width)
        self.out_proj = nn.Linear(d, d)
        # Depthwise and causal; kept as a Conv1d for the checkpoint's weight layout, applied by short_conv.
        self.short_filter = nn.Conv1d(width, width, config.local_order, padding=config.local_order - 1, groups=width)
        self.filter_fn = HyenaFilter(config, d * (order - 1))

    def forward(self, u: Tensor) -> Tensor:
        seq_len = u.shape[1]
        # Channels last (B, L, width) from the projection through the gates; only the long convolution runs along
        # the last axis, where the FFT is fastest (30 % faster than transposing the whole projection on CPU).
        z = short_conv(self.in_proj(u), self.short_filter.weight, self.short_filter.bias)
        x0, *gates, v = z.split(self.d_model, dim=-1)
        k = self.filter_fn(seq_len).view(self.order - 1, self.d_model, seq_len)
        bias = self.filter_fn.bias.view(self.order - 1, self.d_model)
        for i, x_i in enumerate(reversed(gates)):
            v = fft_conv((v * x_i).transpose(1, 2).contiguous(), k[i], bias[i]).transpose(1, 2)
        return self.out_proj(v * x0)


class MLP(nn.Module):
    """Position-wise feed-forward: fc1 -> GELU (tanh approximation) -> fc2."""

    def __init__(self, d_model: int, d_inner: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if h.device.type == "cpu" and h.dtype == torch.float32 and not (torch.is_grad_enabled() and h.requires_grad):
            return self.fc2(_gelu_tanh_(h))  # embedding on CPU: the GELU was a fifth of the forward
        return self.fc2(F.gelu(h, approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block: x + mixer(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: HyenaDNAConfig) -> None:
        super().__init__()
        eps = config.layer_norm_epsilon
        self.norm1 = nn.LayerNorm(config.d_model, eps=eps)
        self.mixer = HyenaOperator(config)
        self.norm2 = nn.LayerNorm(config.d_model, eps=eps)
        self.mlp = MLP(config.d_model, config.d_inner)
        self.dropout = nn.Dropout(config.resid_dropout)
        self.residual_in_fp32 = config.residual_in_fp32

    def forward(self, x: Tensor) -> Tensor:
        # Under autocast the branches come back in bf16; keeping the residual stream in fp32 avoids
        # accumulating rounding error over layers (what residual_in_fp32 means upstream).
        if self.residual_in_fp32:
            x = x.float()
        x = x + self.dropout(self.mixer(self.norm1(x)))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x


class Embeddings(nn.Module):
    """Token embeddings; the table is padded to a multiple of pad_vocab_size_multiple rows."""

    def __init__(self, config: HyenaDNAConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.d_model)

    def forward(self, input_ids: Tensor) -> Tensor:
        return self.word_embeddings(input_ids)


class HyenaDNAModel(nn.Module):
    """HyenaDNA backbone: input_ids (B, L) -> hidden states (B, L, d_model) after the final LayerNorm."""

    def __init__(self, config: HyenaDNAConfig) -> None:
        super().__init__()
        config.validate()
        check_memory(config)  # a hostile or mistyped config is refused before gigabytes are allocated
        self.config = config
        self.embeddings = Embeddings(config)
        self.embed_dropout = nn.Dropout(config.embed_dropout)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model, eps=config.layer_norm_epsilon)
        self.final_dropout = nn.Dropout(config.resid_dropout)
        # Recompute each block in backward instead of storing its activations: long inputs fit in memory.
        self.gradient_checkpointing = False
        self.apply(self._init_weights)
        self._rescale_residual_projections()

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def _rescale_residual_projections(self) -> None:
        # GPT-2 style: the projections that write into the residual stream shrink with depth.
        std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for block in self.layers:
            nn.init.normal_(block.mixer.out_proj.weight, std=std)
            nn.init.normal_(block.mlp.fc2.weight, std=std)

    def forward(self, input_ids: Tensor) -> Tensor:
        seq_len = input_ids.shape[-1]
        if seq_len > self.config.l_max:
            raise ValueError(
                f"input has {seq_len} tokens but this model's filters cover at most l_max={self.config.l_max}; "
                "truncate the input (hyena_dna.tokenizer.truncate) or use a longer-context size"
            )
        x = self.embed_dropout(self.embeddings(input_ids))
        for block in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        x = self.final_dropout(x)
        return self.ln_f(x.to(self.ln_f.weight.dtype))

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **kwargs) -> HyenaDNAModel:
        """Load a local checkpoint folder, a hub repo id or a bare size name, in the LongSafari or the -hf
        layout (see hyena_dna.pretrained)."""
        from hyena_dna.pretrained import load_pretrained

        return load_pretrained(cls, name_or_path, **kwargs)

    def save_pretrained(self, directory: str | Path, *, layout: str = "original") -> Path:
        """Write config.json + weights.ckpt in the public LongSafari layout, or with layout="hf" config.json +
        model.safetensors as the LongSafari/*-hf repos hold them."""
        from hyena_dna.pretrained import save_pretrained

        return save_pretrained(self, directory, layout=layout)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
