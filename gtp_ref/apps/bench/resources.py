"""``python -m gtp_ref.apps.bench resources``: registers, spills and shared memory of every kernel
variant the fast backend's CUDA path can launch, compiled ahead of time for a Hopper GPU (sm_90a)
on this machine -- no GPU needed, only Triton with its bundled ptxas.

A variant is a kernel with its compile-time constants: the dtype (float16 / bfloat16 under
autocast, float32, float64), the head dimension's block (``cuda.HEAD_BLOCKS``: 64 for heads up
to 64 wide, 128 up to 128), and the tile and chunk sizes.  For each,
Triton's compiler lowers it to PTX and cubin for sm_90a, ``ptxas -v`` reports registers, stack
and spills, and Triton's metadata the shared memory it allocates.  A variant fails where it
spills or needs more shared memory than a block may have (232,448 bytes on an H100 / H200);
``gtp_ref.backends.fast.attention_path`` routes only variants that pass to the kernels (the test
of this command checks that every one it routes passes).  Each variant also compiles with the
interpreter's type checks off, so a kernel that only the GPU compiler rejects is caught here.
"""

import argparse
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gtp_ref.apps.bench import common

SHARED_LIMIT = 232_448  # bytes of shared memory one block may use on sm_90 (227 KB)
# name -> (q/k/v element type, ROUND_TO, F64)
DTYPES = {
    "fp16": ("fp16", True, False),
    "bf16": ("bf16", True, False),
    "fp32": ("fp32", False, False),
    "fp64": ("fp64", False, True),
}


@dataclass
class Variant:
    kernel: str
    dtype: str
    block_d: int | None  # None for the per-head kernels, which have no head dimension
    constants: dict[str, Any]
    signature: dict[str, str]

    @property
    def name(self) -> str:
        d = "" if self.block_d is None else f" D{self.block_d}"
        return f"{self.kernel} {self.dtype}{d}"


def variants(dtypes: list[str]) -> list[Variant]:
    """Every variant the CUDA path launches for these dtypes, at every head block
    (``cuda.HEAD_BLOCKS``; the flags that only switch work off -- no token sizes, no threshold --
    are subsets of these)."""
    from gtp_ref.backends.fast import cuda

    blocks = cuda.HEAD_BLOCKS
    out = []
    for name in dtypes:
        elem, round_to, f64 = DTYPES[name]
        acc = "fp64" if f64 else "fp32"
        tiles = dict(ROWS=cuda.ROWS, KEYS=cuda.KEYS)
        flags = dict(HAS_LOG_S=True, ROUND_TO=round_to, F64=f64, **tiles)
        ptr = {"q_ptr": f"*{elem}", "k_ptr": f"*{elem}", "v_ptr": f"*{elem}", "out_ptr": f"*{elem}"}
        for kernel, extra in (
            ("_stats_kernel", dict(SAMPLED=True)),
            ("_collect_kernel", {}),
            ("_fallback_kernel", {}),
            ("_output_kernel", dict(HAS_TAU=True)),
        ):
            for block_d in blocks:
                constants = {**flags, **extra, "BLOCK_D": block_d}
                out.append(
                    Variant(
                        kernel,
                        name,
                        block_d,
                        constants,
                        _signature(getattr(cuda, kernel), constants, ptr, acc),
                    )
                )
        if name in ("fp32", "fp64"):  # the per-head kernels depend on the accumulation dtype only
            for kernel, constants in (
                ("_bracket_kernel", dict(F64=f64, CHUNK=cuda.CHUNK)),
                ("_select_kernel", dict(F64=f64, CHUNK=cuda.CHUNK)),
            ):
                out.append(
                    Variant(
                        kernel, acc, None, constants, _signature(getattr(cuda, kernel), constants, {}, acc)
                    )
                )
    return out


def _signature(kernel: Any, constants: dict[str, Any], pointers: dict[str, str], acc: str) -> dict[str, str]:
    """Triton's signature of a kernel: pointers of the accumulation dtype unless named, int32 counts
    and the two int32 buffers of the selection, floats of the accumulation dtype."""
    sig = {}
    for arg in kernel.arg_names:
        if arg in constants:
            sig[arg] = "constexpr"
        elif arg in pointers:
            sig[arg] = pointers[arg]
        elif arg.endswith("_ptr"):
            sig[arg] = "*i32" if arg in ("counts_ptr", "settled_ptr") else f"*{acc}"
        elif arg == "spread":
            sig[arg] = "fp32"
        else:
            sig[arg] = "i32"
    return sig


def _tools() -> tuple[Path, Path]:
    import triton.backends.nvidia as nvidia

    bin_dir = Path(nvidia.__file__).parent / "bin"
    return bin_dir / "ptxas", bin_dir / "cuobjdump"


def compile_variant(v: Variant) -> dict[str, Any]:
    """{variant, registers, stack, spill_stores, spill_loads, shared, seconds, ok, why} for sm_90a."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from gtp_ref.backends.fast import cuda

    kernel = getattr(cuda, v.kernel)
    pointers = {
        (i,): [["tt.divisibility", 16]]
        for i, a in enumerate(kernel.arg_names)
        if v.signature[a].startswith("*")
    }
    t0 = time.perf_counter()
    src = ASTSource(fn=kernel, signature=v.signature, constexprs=v.constants, attrs=pointers)
    torch_dtype = {
        "fp16": torch.float16,
        "bf16": torch.bfloat16,
        "fp32": torch.float32,
        "fp64": torch.float64,
    }
    num_warps = cuda.warps(v.kernel, torch_dtype[v.dtype], v.block_d or 64)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptxas, _ = _tools()
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(compiled.asm["ptx"])
        r = subprocess.run(
            [str(ptxas), "-arch=sm_90a", "-v", str(ptx), "-o", os.devnull], capture_output=True, text=True
        )
    report = r.stdout + r.stderr

    def number(pattern):
        m = re.search(pattern, report)
        return int(m.group(1)) if m else 0

    row = {
        "variant": v.name,
        "kernel": v.kernel,
        "dtype": v.dtype,
        "block_d": v.block_d,
        "warps": num_warps,
        "registers": number(r"Used (\d+) registers"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
        "shared": int(compiled.metadata.shared),
        "seconds": time.perf_counter() - t0,
    }
    problems = []
    if r.returncode:
        problems.append(f"ptxas failed: {report.strip()[:200]}")
    if row["spill_stores"] or row["spill_loads"]:
        problems.append(f"spills {row['spill_stores']} B")
    if row["shared"] > SHARED_LIMIT:
        problems.append(f"needs {row['shared']} B of shared memory (limit {SHARED_LIMIT})")
    row.update(ok=not problems, why="; ".join(problems))
    return row


def available() -> str | None:
    """Why the variants cannot be compiled here, or None."""
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
    except ImportError as e:
        return f"Triton is not installed ({e})"
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "TRITON_INTERPRET=1: the kernels are the interpreter's, not compiled"
    ptxas, _ = _tools()
    if not ptxas.exists():
        return f"Triton's bundled ptxas is missing ({ptxas})"
    return None


def add_arguments(sub: Any) -> None:
    rs = sub.add_parser(
        "resources", help="registers, spills and shared memory of the CUDA kernels, for sm_90 (no GPU)"
    )
    rs.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    rs.add_argument("--json", action="store_true", help="print the rows as JSON instead of the table")
    rs.add_argument("--json-out", default=None, metavar="PATH", help="also write the JSON to PATH")


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    why = available()
    if why:
        parser.error(f"cannot compile the CUDA kernels here: {why}")
    args.device = "cpu"  # compiled here, for a GPU


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for v in variants(args.dtypes):
        common.progress(f"compiling {v.name}")
        rows.append(compile_variant(v))
    return rows


def table(rows: list[dict[str, Any]], env: dict[str, Any]) -> str:
    import triton

    out = [
        f"the CUDA path's kernels compiled for sm_90a by Triton {triton.__version__} (no GPU); limits: no "
        "spills, "
        f"shared memory <= {SHARED_LIMIT} B",
        common.header(env),
        "",
        f"{'variant':>28} {'warps':>5} {'registers':>9} {'stack B':>8} {'spills B':>8} {'shared B':>9} "
        f"{'compile s':>9}  verdict",
    ]
    for r in rows:
        out.append(
            f"{r['variant']:>28} {r['warps']:>5} {r['registers']:>9} {r['stack']:>8} "
            f"{r['spill_stores']:>8} {r['shared']:>9} "
            f"{r['seconds']:>9.1f}  {'ok' if r['ok'] else 'FAILS: ' + r['why']}"
        )
    failing = [r["variant"] for r in rows if not r["ok"]]
    out += [
        "",
        f"{len(rows) - len(failing)} of {len(rows)} variants fit"
        + (f"; not: {', '.join(failing)}" if failing else ""),
    ]
    return "\n".join(out) + "\n"
