"""HyenaDNA backbone: reference-fixture equivalence, causality, shorter inputs, autocast, checkpointing, compile."""

import json

import numpy as np
import pytest
import torch

from hyena_dna import PRETRAINED_SIZES, HyenaDNAConfig, HyenaDNAModel
from hyena_dna.model import MLP, _fast_fft_size, fft_conv, short_conv

CASES = [
    ("hyenadna-tiny-1k-ref", 1024),
    ("hyenadna-tiny-1k-ref", 300),
    ("hyenadna-gradckpt-ref", 4096),
    ("hyenadna-gradckpt-ref", 777),
]


def tiny_config(**kw) -> HyenaDNAConfig:
    return HyenaDNAConfig(d_model=32, n_layer=2, d_inner=64, l_max=130, **kw)


@pytest.mark.parametrize("folder, length", CASES)
def test_matches_reference_implementation(ref_fixtures, folder, length):
    root = ref_fixtures / folder
    model = HyenaDNAModel.from_pretrained(root).eval()
    manifest = json.loads((root / "manifest.json").read_text())
    assert model.num_parameters() == manifest["params"]
    ids = torch.from_numpy(np.load(root / f"input_ids_L{length}.npy"))
    expected = np.load(root / f"hidden_L{length}.npy")
    with torch.no_grad():
        hidden = model(ids)
    assert hidden.shape == expected.shape
    assert np.abs(hidden.numpy() - expected).max() < 1e-4


def test_output_shape_and_dtype():
    model = HyenaDNAModel(tiny_config()).eval()
    out = model(torch.randint(7, 12, (3, 50)))
    assert out.shape == (3, 50, 32) and out.dtype == torch.float32


def test_causal_output_depends_only_on_past():
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config()).eval()
    ids = torch.randint(7, 12, (2, 128))
    changed = ids.clone()
    changed[:, 77:] = torch.randint(7, 12, (2, 128 - 77))
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :77], b[:, :77], rtol=0, atol=1e-5)
    assert (a[:, 77:] - b[:, 77:]).abs().max() > 1e-3


def test_gradient_is_causal():
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config()).eval()
    emb = model.embeddings.word_embeddings
    ids = torch.randint(7, 12, (1, 64))
    x = emb(ids).detach().requires_grad_(True)
    model.embeddings.forward = lambda _ids: x  # feed the leaf directly to read d out[i] / d in[j]
    out = model(ids)
    # A random projection: the plain sum of a LayerNorm output is constant and has no gradient.
    (out[0, 20] * torch.randn(32)).sum().backward()
    grad = x.grad[0].abs().sum(-1)
    # Future positions get only FFT round-off (~1e-7), past ones real gradient (~1e-2 and up).
    assert grad[:21].min() > 0
    assert grad[21:].max() < 1e-4 * grad[:21].max()


def test_shorter_input_evaluates_filter_for_its_own_length():
    model = HyenaDNAModel(tiny_config()).eval()
    ids = torch.randint(7, 12, (1, 128))
    with torch.no_grad():
        full, prefix = model(ids), model(ids[:, :40])
    # Causal + filter truncated to the input length: a prefix sees exactly what the full input saw.
    torch.testing.assert_close(prefix, full[:, :40], rtol=0, atol=1e-5)
    assert model.layers[0].mixer.filter_fn(40).shape == (32, 40)


def test_too_long_input_is_a_clear_error():
    model = HyenaDNAModel(tiny_config())
    with pytest.raises(ValueError, match="l_max=130"):
        model(torch.zeros(1, 131, dtype=torch.long))


def test_fft_conv_equals_direct_causal_convolution():
    torch.manual_seed(0)
    u, k, bias = torch.randn(2, 3, 37), torch.randn(3, 37), torch.randn(3)
    expected = torch.zeros_like(u)
    for t in range(37):
        expected[..., t] = (u[..., : t + 1].flip(-1) * k[:, : t + 1]).sum(-1)
    expected += u * bias[:, None]
    torch.testing.assert_close(fft_conv(u, k, bias), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("length", [1, 2, 20])
def test_short_conv_equals_causal_depthwise_conv1d(length):
    torch.manual_seed(0)
    conv = torch.nn.Conv1d(6, 6, 3, padding=2, groups=6)
    z = torch.randn(2, length, 6)  # channels last
    expected = conv(z.transpose(1, 2))[..., :length].transpose(1, 2)
    torch.testing.assert_close(short_conv(z, conv.weight, conv.bias), expected, rtol=1e-5, atol=1e-6)


def test_inference_gelu_equals_the_tanh_gelu_and_training_keeps_f_gelu():
    torch.manual_seed(0)
    mlp = MLP(8, 32)
    x = torch.randn(3, 5, 8) * 4
    expected = mlp.fc2(torch.nn.functional.gelu(mlp.fc1(x), approximate="tanh"))
    with torch.no_grad():
        torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(mlp(x), expected, rtol=1e-5, atol=1e-6)
    out = mlp(x)  # with gradients: the out-of-place F.gelu, so backward works
    out.sum().backward()
    assert mlp.fc1.weight.grad is not None and torch.isfinite(mlp.fc1.weight.grad).all()
    torch.testing.assert_close(out, expected)


def test_fast_fft_size():
    assert [_fast_fft_size(n) for n in (1, 2, 7, 1554, 2048, 2049)] == [1, 2, 8, 1600, 2048, 2160]


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config()).eval()
    ids = torch.randint(7, 12, (2, 100))
    with torch.no_grad():
        ref = model(ids)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(ids)
    assert torch.isfinite(low).all()
    assert (low.float() - ref).abs().max() < 0.15


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = HyenaDNAModel(tiny_config(embed_dropout=0.0))
    ids = torch.randint(7, 12, (2, 64))
    model(ids).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(ids).square().mean().backward()
    for g0, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, g0, rtol=1e-4, atol=1e-6)


def test_works_under_torch_compile():
    model = HyenaDNAModel(tiny_config()).eval()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    ids = torch.randint(7, 12, (2, 64))
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), model(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(PRETRAINED_SIZES))
def test_every_public_size_has_an_architecture(name):
    config = HyenaDNAConfig.from_name(name)
    d_model, n_layer, max_length = PRETRAINED_SIZES[name][:3]
    assert (config.d_model, config.n_layer, config.max_length) == (d_model, n_layer, max_length)
    assert HyenaDNAConfig.from_name(f"LongSafari/{name}") == config


def test_build_tiny_1k_size_from_name():
    model = HyenaDNAModel(HyenaDNAConfig.from_name("hyenadna-tiny-1k-seqlen"))
    assert model.num_parameters() == 436096  # the public tiny-1k's parameter count
    assert model.embeddings.word_embeddings.weight.shape == (16, 128)


def test_unknown_size_name():
    with pytest.raises(ValueError, match="hyenadna-small-32k-seqlen"):
        HyenaDNAConfig.from_name("hyenadna-huge")
