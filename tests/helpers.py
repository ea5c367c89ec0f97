"""What the test modules share: hypothesis strategies for model configurations, seeded models
and images, an independent from-scratch ViT, and the authors' vectors.  (The op-level
strategies are the conformance suite's, re-exported here.)"""

import math

import torch
import torch.nn.functional as F
from hypothesis import strategies as st

from gtp_ref import GTPViT
from gtp_ref._checks import SELECTIONS
from gtp_ref.backends import NAMES, fast
from gtp_ref.conformance.seeded import flat_model, model_for, official_vectors, tome_vectors  # noqa: F401
from gtp_ref.conformance.strategies import (  # noqa: F401  (re-exported for the tests)
    DTYPES,
    NEAR_TIE,
    attention_maps,
    grids,
    near_tie,
    scores_and_P,
    selections,
    tensors,
)
from gtp_ref.tome import ToMeViT

# an HF vision model's config keywords, tiny: 2 blocks of width 32 over 32 px images in 8 px patches
HF_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
)
BACKENDS = NAMES  # every backend of the registry: a new backend inherits every test that uses it
# Where the fast backend's Triton kernels run here: "cuda" (compiled), "cpu" (TRITON_INTERPRET=1), or None.
TRITON = fast.TRITON_DEVICE if fast.TRITON_DEVICE != "cuda" or torch.cuda.is_available() else None


def plain_vit(state, images, *, patch_size, num_heads, class_token, global_pool):
    """A ViT written from scratch from a timm state_dict: the backbone GTP must reduce to.

    Head as timm's: ``norm(x)[:, 0]`` for token pooling; the mean of the image tokens ([CLS]
    left out) through ``fc_norm`` for average pooling.
    """
    x = F.conv2d(images, state["patch_embed.proj.weight"], state["patch_embed.proj.bias"], stride=patch_size)
    x = x.flatten(2).transpose(1, 2)
    if class_token:
        x = torch.cat([state["cls_token"].expand(x.shape[0], -1, -1), x], 1)
    x = x + state["pos_embed"]
    C, l = x.shape[-1], 0
    ln = lambda t, name: F.layer_norm(t, (C,), state[f"{name}.weight"], state[f"{name}.bias"], 1e-6)  # noqa: E731
    while f"blocks.{l}.norm1.weight" in state:
        p = f"blocks.{l}."
        B, N, _ = x.shape
        qkv = F.linear(ln(x, p + "norm1"), state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"])
        q, k, v = qkv.reshape(B, N, 3, num_heads, C // num_heads).permute(2, 0, 3, 1, 4)
        a = (q @ k.transpose(-2, -1) / math.sqrt(C // num_heads)).softmax(-1)
        x = x + F.linear(
            (a @ v).transpose(1, 2).reshape(B, N, C),
            state[p + "attn.proj.weight"],
            state[p + "attn.proj.bias"],
        )
        h = F.gelu(F.linear(ln(x, p + "norm2"), state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"]))
        x = x + F.linear(h, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        l += 1
    pooled = (
        ln(x, "norm")[:, 0] if global_pool == "token" else ln(x[:, int(class_token) :].mean(1), "fc_norm")
    )
    return F.linear(pooled, state["head.weight"], state["head.bias"])


@st.composite
def heads(draw, class_token=None):
    """(class_token, global_pool): [CLS] with token or average pooling, or no [CLS] (average)."""
    class_token = draw(st.booleans()) if class_token is None else class_token
    return class_token, draw(st.sampled_from(["token", "avg"])) if class_token else "avg"


@st.composite
def configs(draw, **fixed):
    """Small GTPViT configurations: rectangular grids, every head, any selection and mode."""
    class_token, global_pool = draw(heads(fixed.get("class_token")))
    patch = draw(st.sampled_from([2, 4]))
    h = draw(st.integers(1, 5))
    w = h if fixed.get("square") else draw(st.integers(1, 5))
    n, depth = h * w, draw(st.integers(1, 3))
    num_heads = draw(st.integers(1, 3))
    propagation = fixed.get("propagation", draw(st.sampled_from(["graph", "mean", "none"])))
    sel = [s for s in SELECTIONS if class_token or not s.startswith("cls")]
    num_prop, n_l = [], n
    for _ in range(depth):
        P = draw(st.integers(0, n_l - 1))
        num_prop.append(P)
        n_l = n_l - P + (1 if propagation == "mean" and P > 0 else 0)
    cfg = dict(
        img_size=(h * patch, w * patch),
        patch_size=patch,
        in_chans=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(1, 5)),
        embed_dim=num_heads * draw(st.integers(1, 4)),
        depth=depth,
        num_heads=num_heads,
        class_token=class_token,
        global_pool=global_pool,
        num_prop=num_prop,
        graph=draw(st.sampled_from(["spatial", "semantic", "mixed"])),
        num_neighbours=draw(st.integers(0, n - 1)),
        selection=draw(st.sampled_from(sel)),
        propagation=propagation,
        sparsity=draw(st.sampled_from([1.0, 0.9, 0.6, 0.3])),
        token_scale=draw(st.booleans()),
    )
    # Negative alpha could make token sizes non-positive: the model refuses it with sizes on.
    cfg["alpha"] = draw(st.floats(0 if cfg["token_scale"] else -1, 1))
    cfg.update({k: v for k, v in fixed.items() if k not in ("class_token", "propagation", "square")})
    return cfg


@st.composite
def tome_configs(draw, square=False):
    class_token, global_pool = draw(heads())
    patch, num_heads = draw(st.sampled_from([2, 4])), draw(st.integers(1, 3))
    h = draw(st.integers(1, 5))
    w = h if square else draw(st.integers(1, 5))
    depth = draw(st.integers(1, 3))
    return dict(
        img_size=(h * patch, w * patch),
        patch_size=patch,
        in_chans=draw(st.integers(1, 3)),
        num_classes=draw(st.integers(1, 4)),
        embed_dim=num_heads * draw(st.integers(1, 4)),
        depth=depth,
        num_heads=num_heads,
        class_token=class_token,
        global_pool=global_pool,
        r=draw(st.lists(st.integers(0, 12), min_size=depth, max_size=depth)),
    )


def randomise(model, seed=0):
    """Non-trivial weights, norms and biases included, so a layout slip shows."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(
                torch.randn_like(p) * (0.5 if p.ndim < 2 else 1 / math.sqrt(p[0].numel()))
                + (1.0 if "norm" in name and name.endswith("weight") else 0.0)
            )
    return model


def build(cfg, seed=0, dtype=torch.float64):
    """A GTPViT (or, with an ``r`` in cfg, a ToMeViT) of cfg with randomised weights, eval mode."""
    cls = ToMeViT if "r" in cfg else GTPViT
    torch.manual_seed(seed)
    return randomise(flat_model(cfg, cls).to(dtype).eval(), seed)


def images_for(cfg, B, seed=1, dtype=torch.float64, ties=False):
    """Random images; ``ties``: integer-valued in [-2, 2], so equal patches and exact ties abound."""
    g = torch.Generator().manual_seed(seed)
    size = cfg["img_size"] if isinstance(cfg["img_size"], tuple) else (cfg["img_size"],) * 2
    shape = (B, cfg.get("in_chans", 3), *size)
    if ties:
        return torch.randint(-2, 3, shape, generator=g).to(dtype)
    return torch.randn(*shape, generator=g, dtype=dtype)


def import_timm():
    """timm, or a skip of the calling test module that prints why it cannot be imported.

    A torchvision that does not match the installed torch fails on import with a RuntimeError
    (e.g. the CUDA torchvision 0.28.0 beside the CPU torch 2.13.0: 'operator torchvision::nms does
    not exist'), not an ImportError, so every exception counts.
    """
    import pytest

    try:
        import timm
    except Exception as e:  # noqa: BLE001 -- any failure to import is the reason to print
        pytest.skip(
            f"timm cannot be imported ({type(e).__name__}: {e}); the README's test command installs "
            "a torch / torchvision pair that timm can use",
            allow_module_level=True,
        )
    return timm


def command(main, *args, cwd=None):
    """A command's ``main(argv)`` run in this process, as ``subprocess.run(..., capture_output=True,
    text=True)`` would report it (returncode, stdout, stderr): for argument errors, which every
    command reports before it does any work, without the second or two of a new interpreter.  Each
    command's smoke test runs it as ``python -m`` too."""
    import contextlib
    import io
    import os
    import subprocess

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if cwd is not None:
                os.chdir(cwd)
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0 if e.code is None else 1
            if not isinstance(e.code, int) and e.code is not None:
                print(e.code, file=err)
        finally:
            os.chdir(here)
    return subprocess.CompletedProcess(list(args), code or 0, out.getvalue(), err.getvalue())


def replay_pruning(model, x):
    """GTP's pruning (a model with propagation='none') replayed block by block from its trace's
    selections, each token's patch tracked here -- its RoPE rows and relative-position biases looked
    up by that patch, independently of the model's own tracking -> (replayed logits, the model's)."""
    with torch.no_grad():
        trace = model.forward_trace(x)
        h, c = model.embed(x), model.num_prefix_tokens
        B, C = h.shape[0], h.shape[2]
        patch = torch.arange(model.num_image_tokens).expand(B, -1)  # (B, n_l): the patch of each image token
        for l, (block, layer) in enumerate(zip(model.blocks, trace.layers)):
            rope = bias = None
            if model.config.positions.rope is not None:
                rope = torch.stack([model.rope_table[min(l, len(model.rope_table) - 1)][:, p] for p in patch])
            if model.config.positions.attn_bias:
                index = torch.cat([torch.arange(c).expand(B, c), c + patch], 1)
                bias = torch.stack([model.attn_bias_table[l][:, i][:, :, i] for i in index])
            q, k, v = block.attn.heads(block.norm1(h), rope)
            attn = model.ops.sparsify_attention(block.attn.map(q, k, None, bias), model.sparsity)
            h = h + block.ls1(block.attn.out(block.attn.mix(attn, v)))
            h = torch.cat([h[:, :c], h[:, c:].gather(1, layer.kept[..., None].expand(-1, -1, C))], 1)
            patch = patch.gather(1, layer.kept)
            h = h + block.ls2(block.mlp(block.norm2(h)))
        return model.forward_head(h), trace.logits
