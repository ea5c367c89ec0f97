"""GTPViT: a pre-norm ViT with Graph-based Token Propagation in every block (docs/spec.md).

The whole GTP step is ``GTPBlock.forward``: attention with the sparsified map, the scores, the
selection of the tokens to propagate, their propagation over the token graph, then the MLP.  The
ops come from a backend object (``gtp_ref.backends``: dense, sparse or fast); the backbone is
``gtp_ref.vit`` (timm's layout, so timm checkpoints of a plain ViT load unchanged).
"""

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from gtp_ref._checks import prefix_count
from gtp_ref.backends import Backend, get_backend
from gtp_ref.config import ViTConfig
from gtp_ref.restore import Tokens, gtp_step, receiver_weights, start
from gtp_ref.select import sparsity_k
from gtp_ref.settings import GTPSettings
from gtp_ref.vit import Block, PostNormBlock, ViT


@dataclass
class LayerTrace:
    """What one block did: tokens entering it, the sparsity k, the scores and the selection."""

    tokens: int
    attn_k: int | None
    scores: Tensor | None = None  # (B, n_l) scores of the image tokens; None where P = 0
    kept: Tensor | None = None  # (B, n_l - P) image tokens kept, ascending
    prop: Tensor | None = None  # (B, P) image tokens propagated, lowest score first
    attn_raw: Tensor | None = None  # (B, H, N_l, N_l) the map before sparsity; only with record=True


@dataclass
class Provenance:
    """Where every original patch went, for ``GTPViT.forward_trace(x, record=True)``.

    Patches are the n image tokens of the input, 0-based, row-major over the patch grid.
    propagated_at: [B, n] the block that propagated each patch, -1 for a patch kept to the end.
    edges: one dict per block that propagated by the graph: ``image``, ``src`` (the propagated
        patch), ``dst`` (the kept patch that received alpha * ``weight`` of its features),
        ``weight`` (the entry of Â), each [E] -- the edges of Â[K, P] with a non-zero weight.
        The tokens are named by the patch they started as, whatever they absorbed since.
    final_sizes: [B, n] each patch's token size at the end (0 once propagated; all 1 without
        token sizes).  ``mean`` propagation's appended tokens are no patch and are left out.
    """

    propagated_at: Tensor
    edges: list[dict[str, Tensor]] = field(default_factory=list)
    final_sizes: Tensor | None = None


@dataclass
class GTPTrace:
    """A forward pass: the logits, one LayerTrace per block, the token count at the end, and (with
    ``record=True``) what ``gtp_ref.diagnostics`` needs to say how close each decision came to
    going the other way."""

    logits: Tensor | None = None
    layers: list[LayerTrace] = field(default_factory=list)
    final_tokens: int = 0
    sparsity: float = 1.0
    num_neighbours: int | None = None  # M of the semantic graph built; None: no semantic graph
    graph_input: Tensor | None = None  # (B, n, C) the image tokens the graph was built from (record=True)
    provenance: Provenance | None = None  # where every patch went (record=True)
    # the Tokens after the blocks asked for (forward_blocks)
    taken: list[Tokens] = field(default_factory=list)

    @property
    def tokens_per_layer(self) -> list[int]:
        """Token count after each block (prefix tokens included), as in the conformance vectors."""
        return [t.tokens for t in self.layers[1:]] + [self.final_tokens]

    @property
    def attn_k_per_layer(self) -> list[int]:
        return [t.attn_k for t in self.layers if t.attn_k is not None]


@dataclass
class GTPRun:
    """One forward pass: the model's GTP settings, and what passes from block to block."""

    ops: Backend
    selection: str
    sparsity: float
    alpha: float
    propagation: str
    # the prefix tokens ([CLS], a distillation token, registers) x starts with, as the ops take them: True /
    # False for one [CLS] or none (what implementations that take only a flag expect), else their number
    prefix_tokens: bool | int
    graph: Any = None  # Â of the current image tokens, in the backend's representation
    token_sizes: Tensor | None = None  # (B, N) token sizes s; None without proportional attention
    generator: torch.Generator | None = None  # for selection="random"
    record: bool = False  # keep the attention maps (and so take the explicit path) and the provenance
    block: int = 0  # the block running
    # (B, n_l) with record, rope or attn_bias: the patch each current image token started as (-1: none)
    ids: Tensor | None = None
    rope_rows: Tensor | None = None  # with RoPE: the running block's table rows of the current image tokens
    bias: Tensor | None = (
        None  # with attn_bias: the running block's relative-position bias of the current tokens
    )
    provenance: Provenance | None = None
    restore: Tensor | None = None  # (B, n, n_l) the restore map R of the current image tokens (restore.py)
    grid: tuple[int, int] = (0, 0)  # the patch grid, for the restore map's nearest-patch rule

    def track(self, layer: LayerTrace) -> None:
        """After block ``self.block``'s selection: the kept tokens' patches (``ids``), the restore
        map, and with ``record`` which patches it propagates, along which edges."""
        if self.ids is None:
            return
        # (B, P), (B, n - P)
        prop_ids, kept_ids = (self.ids.gather(1, layer.prop), self.ids.gather(1, layer.kept))
        mean_token = self.ids.new_full((self.ids.shape[0], 1), -1)
        self.ids = kept_ids if self.propagation != "mean" else torch.cat([kept_ids, mean_token], dim=1)
        A_KP = None  # (B, n - P, P): the edges from the removed tokens to the kept ones
        if self.graph is not None and (
            self.restore is not None or (self.record and self.propagation == "graph")
        ):
            A = self.ops.to_dense(self.graph).to(layer.prop.device)  # (B, n_l, n_l)
            b = torch.arange(A.shape[0], device=A.device)[:, None, None]
            A_KP = A[b, layer.kept[:, :, None], layer.prop[:, None, :]]  # Â[K, P] of each image
        if self.restore is not None:
            W = (
                None
                if self.propagation == "mean"
                else receiver_weights(A_KP.to(self.restore.dtype), prop_ids, kept_ids, self.grid)
            )
            self.restore = gtp_step(self.restore, layer.kept, layer.prop, W)
        if not self.record:
            return
        b = torch.arange(prop_ids.shape[0], device=prop_ids.device)[:, None].expand_as(prop_ids)
        real = prop_ids >= 0
        self.provenance.propagated_at[b[real], prop_ids[real]] = self.block
        if self.propagation == "graph":
            image, i, j = (A_KP != 0).nonzero(as_tuple=True)
            self.provenance.edges.append(
                {
                    "block": torch.tensor(self.block),
                    "image": image,
                    "src": prop_ids[image, j],
                    "dst": kept_ids[image, i],
                    "weight": A_KP[image, i, j],
                }
            )


class GTPBlock(Block):
    """A block with GTP between attention and MLP; the parameters of ``vit.Block``."""

    def forward(self, x: Tensor, P: int, run: GTPRun) -> tuple[Tensor, LayerTrace]:  # type: ignore[override]
        """One GTP block (spec 3): x [B, N, C] -> [B, N - P, C], and what it did."""
        layer = LayerTrace(
            tokens=x.shape[1], attn_k=sparsity_k(x.shape[1], run.sparsity) if run.sparsity < 1 else None
        )
        attn_out, layer.scores = self.attend(x, run.selection if P > 0 else None, run, layer)  # Attn(LN1 x)
        x = self.attn_add(x, attn_out)  # (B, N, C)
        if P > 0:
            layer.kept, layer.prop = run.ops.select_tokens(layer.scores, P)  # (B, n - P), (B, P)
            run.track(layer)  # a kept token keeps its patch (its RoPE rows, its relative-position bias)
            x, run.graph, run.token_sizes = run.ops.propagate(
                x,
                run.graph,
                layer.kept,
                layer.prop,
                run.alpha,
                run.token_sizes,
                run.prefix_tokens,
                run.propagation,
            )
        return self.mlp_add(x), layer  # (B, N - P, C)

    def attend(
        self, x: Tensor, selection: str | None, run: GTPRun, layer: LayerTrace
    ) -> tuple[Tensor, Tensor | None]:
        """Attn(LN1 x) with the sparsified map [B, N, C], and the image tokens' scores (None without a
        selection): by the backend's fused attention where it has one for these inputs, else explicitly."""
        q, k, v = self.attn.heads(self.attn_in(x), run.rope_rows)  # (B, H, N, d)
        if run.ops.attention is not None and not run.record:
            kernels = run.ops.attention(
                q,
                k,
                v,
                run.token_sizes,
                run.sparsity,
                selection,
                prefix_count(run.prefix_tokens),
                run.bias,
                self.attn.scale,
            )
            if kernels is not None:
                out, scores = kernels  # (B, N, H d), (B, n) or None
                return self.attn.out(out), scores
        # (B, H, N, N): softmax(q k^T / sqrt(d) + b + log s)
        raw = self.attn.map(q, k, run.token_sizes, run.bias)
        attn = run.ops.sparsify_attention(raw, run.sparsity)  # entries below the head's threshold set to 0
        if run.record:
            layer.attn_raw = raw
        out = self.attn.out(self.attn.mix(attn, v))  # (B, N, C)
        return out, None if selection is None else run.ops.token_scores(
            attn, selection, run.prefix_tokens, run.generator
        )


class GTPPostNormBlock(PostNormBlock, GTPBlock):
    """A post-norm block (``vit.PostNormBlock``'s steps) with GTP between attention and MLP."""


def _setting(name: str, doc: str) -> property:
    """A GTPViT attribute that reads ``settings.<name>`` and, assigned, checks the settings anew."""

    def get(self: "GTPViT") -> Any:
        value = getattr(self.settings, name)
        return list(value) if name == "num_prop" else value

    def set(self: "GTPViT", value: Any) -> None:
        self.settings = self.settings.replace(**{name: value})

    return property(get, set, doc=f"{doc} (assigned: validated like the constructor's argument)")


class GTPViT(ViT):
    """A ViT with Graph-based Token Propagation.  Input [B, in_chans, H, W] -> logits [B, classes].

    ``config``: the backbone (``gtp_ref.config.ViTConfig``; ``stem``: a hybrid ViT's stem module).
    GTP's settings: num_prop, tokens propagated per block (an int, or one int per block; 0
    disables GTP there); graph / num_neighbours, the token graph (spec 2); selection, the score
    (spec 3.4); propagation, "graph" (GTP), "mean" or "none"; sparsity, theta in (0, 1]; alpha,
    the propagation weight; token_scale, proportional attention with token sizes; backend,
    "dense" (the reference), "sparse" or "fast".  Prefix tokens ([CLS], a distillation token,
    registers) are never nodes of the graph, never selected or propagated, and keep size 1;
    ``cls_attn_*`` reads the first prefix token's row.

    The GTP settings are one frozen object, ``model.settings`` (``gtp_ref.settings.GTPSettings``),
    and each is an attribute too; assigning either is validated by the constructor's rules.
    ``model.ops`` is the backend object the model runs (set by ``backend``).
    """

    block_classes = {False: GTPBlock, True: GTPPostNormBlock}

    def __init__(
        self,
        config: ViTConfig,
        *,
        stem: torch.nn.Module | None = None,
        num_prop: int | list[int] = 0,
        graph: str = "mixed",
        num_neighbours: int = 4,
        selection: str = "mixed_attn_max",
        propagation: str = "graph",
        sparsity: float = 1.0,
        alpha: float = 0.1,
        token_scale: bool = False,
        backend: str = "dense",
    ) -> None:
        super().__init__(config, stem=stem)
        self.settings = GTPSettings(
            num_prop=num_prop,
            graph=graph,
            num_neighbours=num_neighbours,
            selection=selection,
            propagation=propagation,
            sparsity=sparsity,
            alpha=alpha,
            token_scale=token_scale,
            backend=backend,
        )

    @property
    def settings(self) -> GTPSettings:
        """The GTP settings (``gtp_ref.settings.GTPSettings``); assigning them, or any one of them
        as an attribute (``model.sparsity = 0.5``, ``model.backend = "fast"``), validates them by
        the constructor's rules, and a refused value leaves the old settings."""
        return self._settings

    @settings.setter
    def settings(self, value: GTPSettings) -> None:
        if not isinstance(value, GTPSettings):
            raise TypeError(f"settings must be a gtp_ref.settings.GTPSettings, got {type(value).__name__}")
        value = value.checked(len(self.blocks), self.num_image_tokens, self.num_prefix_tokens)
        positions = self.config.positions
        if (
            (positions.rope is not None or positions.attn_bias)
            and value.propagation == "mean"
            and any(value.num_prop)
        ):
            raise ValueError(
                "propagation='mean' with rope or attn_bias: the mean token it appends has no position "
                "for its rotary embedding or relative-position bias; use propagation='graph' or 'none'"
            )
        if getattr(self, "_settings", None) is None or value.backend != self._settings.backend:
            self.ops = get_backend(value.backend)  # the ops of that backend (a Backend object)
        self._settings = value

    num_prop = _setting("num_prop", "tokens propagated in each block (P), one int per block")
    graph = _setting("graph", "the token graph: spatial, semantic or mixed")
    num_neighbours = _setting("num_neighbours", "the semantic neighbours M")
    selection = _setting("selection", "the score that selects the tokens to propagate")
    propagation = _setting("propagation", "graph (GTP), mean or none")
    sparsity = _setting("sparsity", "the attention sparsity theta in (0, 1]")
    alpha = _setting("alpha", "the propagation weight")
    token_scale = _setting("token_scale", "proportional attention with token sizes")
    backend = _setting("backend", "the backend whose ops the model runs: dense, sparse or fast")

    def forward_trace(
        self, x: Tensor, generator: torch.Generator | None = None, record: bool = False
    ) -> GTPTrace:
        """Logits and, per block, the tokens entering it, the sparsity k, the scores and the selection.

        ``record=True`` also keeps the attention maps and the graph's input, for
        ``gtp_ref.diagnostics`` (and takes the explicit attention path, which has the maps).
        """
        trace, run, x = self._run(x, generator, record)
        trace.logits = self.forward_head(x, run.token_sizes)
        return trace

    def _run(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        record: bool = False,
        tokens: bool = False,
        restore: bool = False,
        take: Collection[int] = (),
        stop: int | None = None,
    ) -> tuple[GTPTrace, GTPRun, Tensor]:
        """The blocks (up to block ``stop``): the trace, the run's final state and the tokens after
        them [B, N_L, C].  ``tokens`` tracks each token's patch, ``restore`` the restore map too;
        ``trace.taken`` gets the Tokens after each block in ``take``."""
        x = self.embed(x)  # (B, N, C)
        c = self.num_prefix_tokens
        run = GTPRun(
            self.ops,
            self.selection,
            self.sparsity,
            self.alpha,
            self.propagation,
            bool(c) if c <= 1 else c,
            generator=generator,
            record=record,
            grid=self.grid,
        )
        trace = GTPTrace(sparsity=self.sparsity)
        n = self.num_image_tokens
        if record or tokens or self.config.positions.rope is not None or self.config.positions.attn_bias:
            run.ids = torch.arange(n, device=x.device).expand(x.shape[0], n)
        if restore:
            run.restore = start(x, n)
        if record:
            run.provenance = trace.provenance = Provenance(torch.full((x.shape[0], n), -1, device=x.device))
        # graph propagation reads a graph; pruning's restore map reads the one it would have used
        if any(self.num_prop) and (self.propagation == "graph" or (restore and self.propagation == "none")):
            run.graph = self.ops.token_graph(x[:, c:], self.grid, self.graph, self.num_neighbours)
        if self.propagation == "graph" and any(self.num_prop):
            trace.num_neighbours = None if self.graph == "spatial" else self.num_neighbours
            trace.graph_input = x[:, c:] if record else None
        run.token_sizes = x.new_ones(x.shape[:2]) if self.token_scale else None  # (B, N)
        for l, (block, P) in enumerate(zip(self.blocks, self.num_prop)):
            if stop is not None and l > stop:
                break
            run.block, run.rope_rows, run.bias = l, self.rope_rows_for(l, run.ids), self.bias_for(l, run.ids)
            x, layer = block(x, P, run)  # (B, N_l - P, C)
            trace.layers.append(layer)
            if l in take:
                trace.taken.append(self._tokens_of(x, run))
        trace.final_tokens = x.shape[1]
        if record:
            sizes = x.new_ones(x.shape[:2]) if run.token_sizes is None else run.token_sizes  # (B, N_L)
            final = torch.zeros(trace.provenance.propagated_at.shape, dtype=sizes.dtype, device=x.device)
            real = run.ids >= 0
            b = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(run.ids)
            final[b[real], run.ids[real]] = sizes[:, c:][real]
            trace.provenance.final_sizes = final
        return trace, run, x

    def _tokens_of(self, x: Tensor, run: GTPRun) -> Tokens:
        """The Tokens of x [B, N_l, C] at this point of ``run``."""
        c = self.num_prefix_tokens
        patches = torch.cat([run.ids.new_full((x.shape[0], c), -1), run.ids], dim=1)  # (B, N_l)
        sizes = x.new_ones(x.shape[:2]) if run.token_sizes is None else run.token_sizes
        return Tokens(x, patches, sizes, c, self.grid, run.restore)

    def forward_blocks(
        self, x: Tensor, *, restore: bool = False, take: Collection[int] = (), stop: int | None = None
    ) -> tuple[Tokens, list[Tokens]]:
        """``ViT.forward_blocks``, with GTP in every block."""
        trace, run, x = self._run(x, tokens=True, restore=restore, take=take, stop=stop)
        return self._tokens_of(x, run), trace.taken

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """[B, in_chans, H, W] -> logits [B, num_classes]."""
        return self.forward_trace(x, generator).logits
