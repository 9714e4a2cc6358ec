"""Tests for nanoGPT/model.py against METHODS.md and hand-computed values.

Independent references used here (never the module's own helpers):
- the scale table of METHODS.md (n_layer, d_model, n_head, run-name letter);
- parameter counts summed over a built model's tensors (built on the meta device, so even
  the 221M scale costs no memory or init time), and the 16M count written out by hand;
- init std from the definitions: Xavier-normal sqrt(2/(fan_in+fan_out)), embeddings 1/sqrt(d),
  residual projections 0.02/sqrt(2·n_layer);
- RoPE facts: a rotation (norm preserving), relative-position property, a hand-rotated pair;
- qk-LayerNorm facts: scale invariance in q/k, linearity in v, normalised input to RoPE.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from nanoGPT.model import GPT, SCALES, GPTConfig, Rotary, count_parameters, flops_per_token, get_scale

V_SMALL, T_SMALL = 128, 32

# METHODS.md, "The scales": letter, name, n_layer, d_model, n_head
PUBLISHED_SCALES = [
    ("4", "16M", 6, 224, 4),
    ("6", "29M", 9, 320, 4),
    ("8", "57M", 12, 480, 4),
    ("A", "109M", 15, 640, 4),
    ("C", "221M", 21, 832, 4),
]


def tiny_cfg(**kw) -> GPTConfig:
    kw.setdefault("vocab_size", V_SMALL)
    kw.setdefault("block_size", T_SMALL)
    return GPTConfig.from_scale("tiny", **kw)


def build(cfg: GPTConfig, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg)


def meta_model(cfg: GPTConfig) -> GPT:
    with torch.device("meta"):
        return GPT(cfg)


def unique_numel(model: torch.nn.Module) -> int:
    seen, n = set(), 0
    for p in model.parameters():  # parameters() already de-duplicates; be explicit anyway
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


# ----------------------------------------------------------------------------- scale table
@pytest.mark.parametrize("letter,name,n_layer,d_model,n_head", PUBLISHED_SCALES)
def test_scale_table_matches_methods(letter, name, n_layer, d_model, n_head):
    s = SCALES[name]
    assert (s.name, s.letter, s.n_layer, s.d_model, s.n_head) == (name, letter, n_layer, d_model, n_head)
    cfg = GPTConfig.from_scale(name)
    assert (cfg.n_layer, cfg.d_model, cfg.n_head) == (n_layer, d_model, n_head)
    assert cfg.vocab_size == 50304 and cfg.block_size == 2048 and cfg.tie_weights is False


@pytest.mark.parametrize("letter,name,n_layer,d_model,n_head", PUBLISHED_SCALES)
def test_get_scale_by_name_and_letter(letter, name, n_layer, d_model, n_head):
    assert get_scale(name) is get_scale(letter)
    assert get_scale(letter).name == name
    assert get_scale(name).d_model == d_model


def test_unknown_scale_raises_keyerror_naming_known_scales():
    with pytest.raises(KeyError) as ei:
        get_scale("999M")
    msg = str(ei.value)
    assert "999M" in msg
    for _, name, *_ in PUBLISHED_SCALES:
        assert name in msg
    with pytest.raises(KeyError):
        GPTConfig.from_scale("Z")


@pytest.mark.parametrize("d,hidden", [(224, 768), (320, 1024), (480, 1280), (640, 1792), (832, 2304), (64, 256)])
def test_swiglu_hidden_size_hand_computed(d, hidden):
    # 256 * ceil((8d/3)/256), computed by hand: 224 -> 597.3 -> 768; 320 -> 853.3 -> 1024;
    # 480 -> 1280 -> 1280; 640 -> 1706.7 -> 1792; 832 -> 2218.7 -> 2304; 64 -> 170.7 -> 256
    cfg = GPTConfig(n_layer=1, d_model=d, n_head=4, vocab_size=V_SMALL, block_size=T_SMALL)
    assert cfg.mlp_hidden == hidden
    m = meta_model(cfg)
    assert tuple(m.blocks[0].mlp.gate.weight.shape) == (hidden, d)
    assert tuple(m.blocks[0].mlp.up.weight.shape) == (hidden, d)
    assert tuple(m.blocks[0].mlp.down.weight.shape) == (d, hidden)


# ----------------------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("name", list(SCALES))
@pytest.mark.parametrize("tie", [False, True])
def test_count_parameters_matches_built_model(name, tie):
    cfg = GPTConfig.from_scale(name, tie_weights=tie)
    model = meta_model(cfg)
    total = unique_numel(model)
    emb = model.wte.weight.numel() + (0 if tie else model.lm_head.weight.numel())
    counts = count_parameters(cfg)
    assert counts["total"] == total
    assert counts["non_embedding"] == total - emb


def test_count_parameters_16M_hand_computed():
    L, d, H, V = 6, 224, 4, 50304
    hidden = 256 * math.ceil((2 * 4 * 224 / 3) / 256)
    assert hidden == 768
    head_dim = d // H  # 56
    per_block = (
        2 * d                # ln_attn, ln_mlp gains
        + 3 * d * d          # qkv
        + d * d              # attn.proj
        + 2 * head_dim       # q_norm, k_norm gains
        + 3 * d * hidden     # gate, up, down
    )
    assert per_block == 717_360
    non_embedding = L * per_block + d  # + ln_f gain
    assert non_embedding == 4_304_384
    total = non_embedding + 2 * V * d  # untied wte + lm_head
    assert total == 26_840_576
    counts = count_parameters(GPTConfig.from_scale("16M"))
    assert counts == {"total": total, "non_embedding": non_embedding}


def test_readme_scale_table_is_the_code_s():
    """The README's table of scales (shapes, counts, micro-batches, peaks) is what the code uses,
    so a change to SCALES cannot leave the documentation behind."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {}
    for line in readme.split("## Scales", 1)[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[0] in SCALES:
            rows[cells[0]] = cells
    assert set(rows) == set(SCALES)
    for name, (_, letter, shape, hidden, total, non_emb, label, micro, peak) in rows.items():
        s, cfg = SCALES[name], GPTConfig.from_scale(name)
        counts = count_parameters(cfg)
        assert letter == s.letter
        assert shape == f"{s.n_layer} × {s.d_model} ({s.n_head})"
        assert int(hidden) == cfg.mlp_hidden
        assert int(total.replace(",", "")) == counts["total"]
        assert int(non_emb.replace(",", "")) == counts["non_embedding"]
        assert int(label.replace(",", "")) == counts["non_embedding"] + cfg.vocab_size * cfg.d_model
        assert int(micro) == s.max_micro_batch
        assert peak == ("–" if s.peak_gib == 0 else f"{s.peak_gib:.1f} GiB")


def test_tied_weights_share_tensor_and_reduce_count():
    cfg_u, cfg_t = tiny_cfg(), tiny_cfg(tie_weights=True)
    m = build(cfg_t)
    assert m.lm_head.weight is m.wte.weight
    assert m.output_embedding is m.wte.weight
    d, V = cfg_t.d_model, cfg_t.vocab_size
    assert count_parameters(cfg_u)["total"] - count_parameters(cfg_t)["total"] == V * d
    assert unique_numel(build(cfg_u)) - unique_numel(m) == V * d
    # 16M at full vocab too
    a, b = count_parameters(GPTConfig.from_scale("16M")), count_parameters(GPTConfig.from_scale("16M", tie_weights=True))
    assert a["total"] - b["total"] == 50304 * 224
    assert a["non_embedding"] == b["non_embedding"]
    # a step on the tied matrix through the head moves the embedding (one tensor, not a copy)
    with torch.no_grad():
        m.lm_head.weight[0, 0] += 1.0
    assert m.wte.weight[0, 0] == m.lm_head.weight[0, 0]


def test_untied_by_default():
    m = build(tiny_cfg())
    assert m.lm_head.weight is not m.wte.weight
    assert m.lm_head.weight.data_ptr() != m.wte.weight.data_ptr()


# ----------------------------------------------------------------------------- no biases
@pytest.mark.parametrize("tie", [False, True])
def test_no_biases_anywhere(tie):
    m = build(tiny_cfg(tie_weights=tie))
    names = [n for n, _ in m.named_parameters()]
    assert not [n for n in names if "bias" in n]
    n_ln = 0
    for mod in m.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            n_ln += 1
            assert mod.bias is None
            assert mod.weight is not None  # affine gains are kept
            assert torch.equal(mod.weight, torch.ones_like(mod.weight))
        if isinstance(mod, torch.nn.Linear):
            assert mod.bias is None
    # per block: ln_attn, ln_mlp, q_norm, k_norm; plus ln_f
    assert n_ln == 4 * m.cfg.n_layer + 1


# ----------------------------------------------------------------------------- init
def _std(t: torch.Tensor) -> float:
    return t.detach().double().std().item()


def test_xavier_init_stds():
    cfg = tiny_cfg()
    d, L, V, h = cfg.d_model, cfg.n_layer, cfg.vocab_size, cfg.mlp_hidden
    assert (d, L, h) == (64, 2, 256)
    m = build(cfg, seed=1)
    blk = m.blocks[0]
    xavier = lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))
    expected = {
        "qkv": (blk.attn.qkv.weight, xavier(d, 3 * d)),        # 0.0884
        "gate": (blk.mlp.gate.weight, xavier(d, h)),           # 0.0791
        "up": (blk.mlp.up.weight, xavier(d, h)),
        "lm_head": (m.lm_head.weight, xavier(d, V)),           # 0.102
        "wte": (m.wte.weight, 1 / math.sqrt(d)),               # 0.125
        "attn.proj": (blk.attn.proj.weight, 0.02 / math.sqrt(2 * L)),  # 0.01
        "mlp.down": (blk.mlp.down.weight, 0.02 / math.sqrt(2 * L)),
    }
    for name, (w, std) in expected.items():
        got = _std(w)
        assert abs(got - std) / std < 0.10, f"{name}: std {got:.5f}, expected {std:.5f}"
        assert abs(w.double().mean().item()) < 3 * std / math.sqrt(w.numel()) + 1e-3, name
    # every block, not just the first
    for b in m.blocks:
        assert abs(_std(b.attn.proj.weight) - 0.01) / 0.01 < 0.10
        assert abs(_std(b.mlp.down.weight) - 0.01) / 0.01 < 0.10
        assert abs(_std(b.attn.qkv.weight) - xavier(d, 3 * d)) / xavier(d, 3 * d) < 0.10


def test_residual_init_scales_with_depth():
    cfg = GPTConfig(n_layer=8, d_model=64, n_head=4, vocab_size=V_SMALL, block_size=T_SMALL)
    m = build(cfg, seed=2)
    std = 0.02 / math.sqrt(16)  # 0.005
    got = _std(torch.cat([b.attn.proj.weight.flatten() for b in m.blocks] + [b.mlp.down.weight.flatten() for b in m.blocks]))
    assert abs(got - std) / std < 0.05


def test_non_xavier_init_is_0p02():
    cfg = tiny_cfg(xavier_init=False)
    m = build(cfg, seed=3)
    for w in [m.blocks[0].attn.qkv.weight, m.blocks[1].mlp.gate.weight, m.blocks[0].mlp.up.weight, m.lm_head.weight, m.wte.weight]:
        assert abs(_std(w) - 0.02) / 0.02 < 0.10
    std_res = 0.02 / math.sqrt(2 * cfg.n_layer)
    assert abs(_std(m.blocks[0].attn.proj.weight) - std_res) / std_res < 0.10


def test_tied_init_is_embedding_init():
    cfg = tiny_cfg(tie_weights=True)
    m = build(cfg, seed=4)
    assert abs(_std(m.lm_head.weight) - 1 / math.sqrt(cfg.d_model)) / (1 / math.sqrt(cfg.d_model)) < 0.10


# ----------------------------------------------------------------------------- forward
def test_logits_shape_and_dtype():
    cfg = tiny_cfg()
    m = build(cfg)
    idx = torch.randint(0, cfg.vocab_size, (3, 17))
    out = m(idx)
    assert out.shape == (3, 17, cfg.vocab_size)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out_full = m(torch.randint(0, cfg.vocab_size, (1, cfg.block_size)))  # exactly block_size is allowed
    assert out_full.shape == (1, cfg.block_size, cfg.vocab_size)


def test_sequence_longer_than_block_size_raises():
    cfg = tiny_cfg()
    m = build(cfg)
    with pytest.raises(ValueError):
        m(torch.zeros(1, cfg.block_size + 1, dtype=torch.long))


def test_causality():
    cfg = tiny_cfg()
    m = build(cfg, seed=5).eval()
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, cfg.vocab_size, (2, 24), generator=g)
    with torch.no_grad():
        base = m(idx)
        for t in (0, 5, 11, 22):
            changed = idx.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(0, cfg.vocab_size - 1, changed[:, t + 1:].shape, generator=g)) % cfg.vocab_size
            assert (changed[:, t + 1:] != idx[:, t + 1:]).all()
            out = m(changed)
            torch.testing.assert_close(out[:, : t + 1], base[:, : t + 1], rtol=0, atol=1e-5)
            # the future positions do see the change (the check above is not vacuous)
            assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3


def test_earlier_tokens_do_influence_later_positions():
    cfg = tiny_cfg()
    m = build(cfg, seed=6).eval()
    idx = torch.randint(0, cfg.vocab_size, (1, 16))
    changed = idx.clone()
    changed[0, 0] = (idx[0, 0] + 1) % cfg.vocab_size
    with torch.no_grad():
        a, b = m(idx), m(changed)
    assert (a[0, 1:] - b[0, 1:]).abs().max() > 1e-4  # attention mixes positions


# ----------------------------------------------------------------------------- RoPE
def test_rotary_preserves_norm():
    rot = Rotary(8, 64, 10000.0)
    x = torch.randn(2, 3, 40, 16, dtype=torch.float32)
    y = rot(x)
    assert y.shape == x.shape
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)
    # the rotated part alone is also norm preserving (it is a rotation of the first 8 features)
    torch.testing.assert_close(y[..., :8].norm(dim=-1), x[..., :8].norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_rotary_hand_computed_pair():
    # first pair (x0, x1) has frequency theta^0 = 1: at position p it turns by p radians
    dim, theta = 8, 10000.0
    rot = Rotary(dim, 16, theta)
    x = torch.zeros(1, 1, 8, 16)
    x[..., 0], x[..., 1] = 1.0, 2.0
    x[..., 2], x[..., 3] = 3.0, -1.0
    y = rot(x)
    for p in range(8):
        c, s = math.cos(p), math.sin(p)
        assert y[0, 0, p, 0].item() == pytest.approx(1 * c - 2 * s, abs=1e-5)
        assert y[0, 0, p, 1].item() == pytest.approx(1 * s + 2 * c, abs=1e-5)
        # second pair: frequency theta^(-2/dim) = 10000^(-1/4) = 0.1
        a = p * 0.1
        assert y[0, 0, p, 2].item() == pytest.approx(3 * math.cos(a) + 1 * math.sin(a), abs=1e-5)
        assert y[0, 0, p, 3].item() == pytest.approx(3 * math.sin(a) - 1 * math.cos(a), abs=1e-5)
    # position 0 is the identity
    torch.testing.assert_close(y[0, 0, 0], x[0, 0, 0])


def _rotate_at_all_positions(rot: Rotary, v: torch.Tensor, T: int) -> torch.Tensor:
    return rot(v.expand(1, 1, T, v.numel()).clone())[0, 0]  # [T, hd]


def test_rotary_dot_product_depends_only_on_offset():
    torch.manual_seed(0)
    hd, T = 16, 48
    rot = Rotary(hd // 2, T, 10000.0)
    q, k = torch.randn(hd, dtype=torch.float64), torch.randn(hd, dtype=torch.float64)
    rq, rk = _rotate_at_all_positions(rot, q, T).double(), _rotate_at_all_positions(rot, k, T).double()
    dot = lambda m, n: torch.dot(rq[m], rk[n]).item()
    for m, n in [(3, 1), (10, 10), (2, 9), (20, 5)]:
        for s in (1, 7, 20):
            assert dot(m + s, n + s) == pytest.approx(dot(m, n), rel=1e-4, abs=1e-4)
    # and it does depend on the offset (otherwise the identity would pass)
    offsets = {round(dot(m, 0), 4) for m in range(1, 6)}
    assert len(offsets) > 1


def test_rotary_in_model_changes_only_first_half_of_head_dim():
    cfg = tiny_cfg()
    attn = build(cfg).blocks[0].attn
    hd = cfg.head_dim
    x = torch.randn(1, cfg.n_head, 12, hd)
    y = attn.rotary(x)
    assert torch.equal(y[..., hd // 2:], x[..., hd // 2:])
    assert (y[..., 1:, : hd // 2] - x[..., 1:, : hd // 2]).abs().max() > 1e-3
    torch.testing.assert_close(y[..., 0, :], x[..., 0, :])


# ----------------------------------------------------------------------------- qk-LayerNorm
def _attn_double(seed=7):
    cfg = tiny_cfg()
    attn = build(cfg, seed=seed).blocks[0].attn.double()
    x = torch.randn(2, 10, cfg.d_model, dtype=torch.float64)
    return cfg, attn, x


def test_qk_norm_scale_invariance():
    cfg, attn, x = _attn_double()
    d = cfg.d_model
    with torch.no_grad():
        y0 = attn(x)
        attn.qkv.weight[: 2 * d] *= 7.0       # q and k rows
        y1 = attn(x)
        attn.qkv.weight[: d] *= 0.2           # only q again
        y2 = attn(x)
    torch.testing.assert_close(y1, y0, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(y2, y0, rtol=1e-3, atol=1e-4)


def test_attention_is_linear_in_v():
    # control for the test above: the same kind of rescaling on v does change the output, by exactly 3x
    cfg, attn, x = _attn_double()
    d = cfg.d_model
    with torch.no_grad():
        y0 = attn(x)
        attn.qkv.weight[2 * d:] *= 3.0
        y1 = attn(x)
    torch.testing.assert_close(y1, 3 * y0, rtol=1e-9, atol=1e-12)
    assert (y1 - y0).abs().max() > 1e-6


def test_q_and_k_are_layer_normalised_per_head_before_rope():
    cfg, attn, x = _attn_double()
    seen = []
    h = attn.rotary.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            attn(x * 5.0 + 3.0)
    finally:
        h.remove()
    assert len(seen) == 2  # q and k go through RoPE
    for t in seen:
        assert t.shape == (2, cfg.n_head, 10, cfg.head_dim)
        # LayerNorm output over each head's features: mean 0, (biased) variance 1
        torch.testing.assert_close(t.mean(-1), torch.zeros_like(t.mean(-1)), atol=1e-9, rtol=0)
        torch.testing.assert_close(t.var(-1, unbiased=False), torch.ones_like(t.mean(-1)), atol=1e-3, rtol=0)


# ----------------------------------------------------------------------------- FLOPs
def test_flops_per_token_16M_hand_computed():
    L, d, V, T, hidden = 6, 224, 50304, 2048, 768
    expected = 6 * (L * (4 * d * d + 3 * d * hidden) + V * d) + 12 * L * d * T
    # by hand: 4d² = 200704, 3·d·768 = 516096, ×6 layers = 4300800; V·d = 11268096;
    # 6 × 15568896 = 93413376; 12·6·224·2048 = 33030144; sum 126443520
    assert expected == 126_443_520
    assert flops_per_token(GPTConfig.from_scale("16M"), 2048) == expected


def test_flops_per_token_scales_with_seq_len():
    cfg = GPTConfig.from_scale("16M")
    assert flops_per_token(cfg, 4096) - flops_per_token(cfg, 2048) == 12 * 6 * 224 * 2048
