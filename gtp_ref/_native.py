"""The fast backend's CPU threshold and masking: ``_select.c`` compiled with the system's C
compiler and called through ctypes.  ``kth_smallest_rows``: the exact k-th smallest of every row
in two streaming passes (``_select.c`` says how), against a sort-like ``torch.topk`` /
``kthvalue``; ``mask_heads``: per head, that threshold, then the masked map with its column
sums, diagonal and first row in one more pass while the head's map is in cache.

It is built on first use (``cc -O3 -fopenmp -shared``, about a second) into the user's cache
(``$XDG_CACHE_HOME/gtp_ref`` or ``~/.cache/gtp_ref``), keyed by the source's hash.  It needs no
Python package, only a C compiler; where there is none (or the build fails), ``REASON`` says why,
a warning says so once, and the fast backend uses torch ops on the CPU instead (``torch.topk``
for the threshold) -- the same values, more slowly.  Both functions are torch custom ops, so
``torch.compile`` sees one op each and keeps the whole model in one graph.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("_select.c")
_LIB: ctypes.CDLL | None = None
REASON: str | None = None  # why the compiled selection is not available, once that is known


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gtp_ref"


def _build() -> ctypes.CDLL:
    source = SOURCE.read_bytes()
    target = _cache_dir() / f"select-{hashlib.sha256(source).hexdigest()[:16]}.so"
    if not target.exists():
        cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
        if cc is None:
            raise OSError("no C compiler found (cc, gcc or clang; or set CC)")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            for flags in (["-fopenmp"], []):  # without OpenMP the rows run one after another
                r = subprocess.run([cc, "-O3", "-shared", "-fPIC", *flags, str(SOURCE), "-o", str(out)],
                                   capture_output=True, text=True)
                if r.returncode == 0:
                    break
            else:
                raise OSError(f"{cc} could not compile {SOURCE.name}: {r.stderr.strip()[:300]}")
            os.replace(out, target)  # atomic: another process may be building the same file
    lib = ctypes.CDLL(str(target))
    for name, c_float in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        ptr, i64 = ctypes.POINTER(c_float), ctypes.c_int64
        getattr(lib, f"kth_smallest_{name}").argtypes = [ptr, i64, i64, i64, ptr, ctypes.c_int]
        getattr(lib, f"mask_heads_{name}").argtypes = [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, ctypes.c_int]
        getattr(lib, f"kth_smallest_{name}").restype = getattr(lib, f"mask_heads_{name}").restype = None
    return lib


def available() -> bool:
    """Whether the compiled selection can be used (builds it on the first call)."""
    global _LIB, REASON
    if _LIB is None and REASON is None:
        try:
            _LIB = _build()
        except OSError as e:
            REASON = str(e)
            warnings.warn(f"gtp_ref.fast: the compiled CPU threshold is not available ({REASON}); the CPU "
                          "threshold uses torch.topk instead (the same values, slower)", stacklevel=3)
    return _LIB is not None


def _call(name: str, *tensors: Tensor, ints: tuple[int, ...], outputs: tuple[Tensor, ...]) -> None:
    """lib.<name>_<dtype>(tensors..., ints..., outputs..., threads) on contiguous CPU tensors."""
    if not available():
        raise RuntimeError(f"the compiled CPU selection is not available: {REASON}")
    dtype = tensors[0].dtype
    c_float = ctypes.c_float if dtype == torch.float32 else ctypes.c_double
    fn = getattr(_LIB, f"{name}_{'f32' if dtype == torch.float32 else 'f64'}")
    ptr = ctypes.POINTER(c_float)
    fn(*(ctypes.cast(t.data_ptr(), ptr) for t in tensors), *ints,
       *(ctypes.cast(t.data_ptr(), ptr) for t in outputs), torch.get_num_threads())


@torch.library.custom_op("gtp_ref::kth_smallest_rows", mutates_args=())
def kth_smallest_rows(rows: Tensor, k: int) -> Tensor:
    """The exact k-th smallest (1-based) of every row of a CPU float32 / float64 [R, L] tensor -> [R]."""
    rows = rows.contiguous()
    out = rows.new_empty(rows.shape[:1])
    if rows.shape[0]:
        _call("kth_smallest", rows, ints=(rows.shape[0], rows.shape[1], k), outputs=(out,))
    return out


@kth_smallest_rows.register_fake
def _(rows: Tensor, k: int) -> Tensor:
    return rows.new_empty(rows.shape[:1])


@torch.library.custom_op("gtp_ref::mask_heads", mutates_args=())
def mask_heads(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """GTP's sparsified map and the selection's inputs, per head, in one call: attn [B, H, N, N]
    (CPU float32 / float64) and k (the threshold's rank in the head's N^2 entries; 0: none) ->
    (masked map [B, H, N, N] with the entries below the head's k-th smallest set to 0, its column
    sums, diagonal and first row [B, H, N], the thresholds [B, H] (-inf for k = 0)).  Gradients
    flow to the kept entries, as through the reference's masked_fill."""
    attn = attn.contiguous()
    B, H, N, _ = attn.shape
    masked, col_sums, diagonal, first_row = torch.empty_like(attn), *(attn.new_empty(B, H, N) for _ in range(3))
    tau = attn.new_empty(B, H)
    if B * H:
        _call("mask_heads", attn, ints=(B * H, N, k), outputs=(masked, col_sums, diagonal, first_row, tau))
    return masked, col_sums, diagonal, first_row, tau


@mask_heads.register_fake
def _(attn: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    B, H, N, _ = attn.shape
    return torch.empty_like(attn), *(attn.new_empty(B, H, N) for _ in range(3)), attn.new_empty(B, H)


def _save(ctx, inputs, output) -> None:
    ctx.save_for_backward(inputs[0], output[4])


def _backward(ctx, g_masked, g_col_sums, g_diagonal, g_first_row, g_tau):
    attn, tau = ctx.saved_tensors
    g = g_masked + g_col_sums[:, :, None, :]  # (B, H, N, N)
    g = g + torch.diag_embed(g_diagonal)
    g[:, :, 0, :] += g_first_row
    return g.masked_fill(attn < tau[..., None, None], 0.0), None  # the threshold passes no gradient


mask_heads.register_autograd(_backward, setup_context=_save)
