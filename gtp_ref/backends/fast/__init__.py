"""The fast backend: the op-level API of ``gtp_ref.backends.dense``, built for speed on the CPU and the GPU.

    ops.py           the ops, and the attention's choice of path
    cpu.py           the CPU kernels as torch custom ops (threshold, masking, attention, ...)
    cpu_kernels.c    their C source
    cpu_build.py     how they are built on first use, and what is loaded
    cuda.py          the CUDA path: what its kernels do, and their launches
    cuda_kernels.py  its Triton kernels (compiled on CUDA, or run by Triton's interpreter on the CPU)

Same results as the dense reference (the property tests and the conformance suite check it,
``GTP_IMPL=gtp_ref.backends.fast``); what differs is how they are computed:

* **No host synchronisation and no data-dependent shapes.**  Every tensor's shape follows from
  the input's shape and the schedule (no ``nonzero``, ``masked_select`` or ``.item()``), so
  the host never waits for the GPU and a whole forward can be captured in a CUDA graph
  (``gtp_ref.cuda_graphs.cuda_graphed``).  A CUDA test runs the forward under
  ``torch.cuda.set_sync_debug_mode``.
* **An exact threshold in about two passes, not a sort.**  The k-th smallest of each head's N^2
  attention entries: on the CPU (float32 / float64) a compiled radix selection
  (``gtp_ref.backends.fast.cpu``: a histogram of the top bits, a copy of the few values in the k-th
  value's bin, the same again on the next bits, a quickselect among what is left); on CUDA
  ``torch.topk`` (a multi-block radix selection) instead of ``torch.kthvalue`` (one block per
  head); inside the attention paths below, a bracket from a sample's order statistics, then the
  right order statistic of the entries inside it (a radix selection where the bracket misses).
  All give kthvalue's value.
* **The graph is never shrunk.**  A ``LazyGraph`` keeps the first layer's Â and, per image, the
  original index of every current token; each layer gathers only Â[K, P] ((n - P) x P entries
  per image) and never copies Â[K, K].  Memory: B (n + 1)^2 graph entries, fine at ViT
  resolutions (n = 196 or 576); for very large grids use ``gtp_ref.backends.sparse``.
* **The attention without separate passes over its map.**  ``attention`` (which ``GTPViT``
  calls with this backend, with the block's q, k, v) computes the attention and the selection's
  scores by one of two paths (``PATHS``, chosen by ``attention_path``), for the selections
  scored from columns, diagonal or the [CLS] row (``COLUMN_SELECTIONS``, the paper's
  ``mixed_attn_max`` among them, and ``cls_attn_*``):

  ``cpu`` (with the compiled kernels: float32 / float64 without autocast, bfloat16 / float16
  with a float32 map, a relative-position bias or none): one compiled call per block
  (``cpu.attention_op``) that takes each image's head from q k^T to Att v in the cache of one
  core: the softmax, the threshold (from a sampled bracket, exactly), the masking and the
  column sums, diagonal and first row on the way.

  ``cuda`` (N <= 1024, float32 / float64 or autocast, no bias): a few Triton kernels that recompute the
  map tile by tile, never storing it (``cuda.attention``): its row statistics, a sampled bracket
  around the threshold, the entries inside it collected and sorted (an exact radix selection
  where the bracket misses), then the masked map's Att v, column sums, diagonal and first row.

  Elsewhere (other selections; on CUDA N > 1024, a bias, float16 without autocast; on the CPU
  autocast of another dtype than q's, no C compiler) it returns
  None and the model takes the explicit path with the ops of this module.  Under Triton's
  interpreter (``TRITON_INTERPRET=1`` set before ``gtp_ref`` is imported) the ``cuda`` path runs
  on CPU tensors instead, slowly: how the test suite checks it without a GPU.

* **No per-op overhead where the work is small.**  On the CPU (float32 / float64, no gradients
  needed) the propagation is one compiled call (``cpu.propagate``: the kept tokens' new features,
  sizes and graph rows, and the check that kept and propagated tokens partition the image
  tokens), the selection is one compiled call without a sort (``cpu.select_tokens``, O(n P),
  the reference's order of ties), and the token graph is built in place with the spatial graph
  kept between calls: at batch 1 these small steps, not the arithmetic, decide the time.

Token scores are the dense reference's; elsewhere the selection is its sort (static shapes
already).
"""

from gtp_ref.backends.fast.ops import *  # noqa: F401,F403  (the op-level API and the attention)
from gtp_ref.backends.fast.ops import TRITON_DEVICE, __all__  # noqa: F401
