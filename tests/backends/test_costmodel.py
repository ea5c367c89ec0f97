"""``python -m gtp_ref.apps.bench costmodel``: the cost model the CUDA path was chosen by.  Its counts
are checked against what each design must do (the products of attention, the bytes of q, k, v and
the output), its forwards against their limits, and its bracket design against the constants of
the kernels it describes."""

import subprocess
import sys

import pytest

from gtp_ref.apps.bench import __main__ as bench
from gtp_ref.apps.bench import costmodel
from tests.helpers import command

B, N, H, d = 8, 197, 6, 64


def by_name(**kw):
    return {x.name: x for x in costmodel.designs(B, N, H, d, **kw)}


def test_the_fused_attention_reads_q_k_v_once_and_multiplies_twice():
    sdpa = by_name()["sdpa"]
    C = H * d
    assert sdpa.total("bytes") == 4 * B * N * C * 2  # q, k, v and the output in fp16
    assert sdpa.total("flops") == 2 * 2 * B * H * N * N * d  # q kT and Att v
    assert sdpa.total("exps") == B * H * N * N


def test_every_design_does_at_least_the_products_of_attention():
    designs = by_name()
    floor = designs["sdpa"].total("flops")
    for name, design in designs.items():
        assert design.total("flops") >= floor, name
        assert design.total("exps") >= designs["sdpa"].total("exps"), name


def test_the_maps_in_memory_cost_bytes_and_the_recomputing_designs_do_not():
    designs = by_name()
    E = B * H * N * N
    assert designs["explicit"].total("bytes") > 4 * E * 5  # five or more fp32 passes over the map
    for name in ("one_kernel", "radix8"):
        assert designs[name].total("bytes") == designs["sdpa"].total("bytes"), name
    # the bracket stores a sample and the collected entries, not the map: a fraction of the map's passes
    assert (
        designs["sdpa"].total("bytes")
        < designs["bracket"].total("bytes")
        < designs["two_kernel"].total("bytes") / 3
    )


def test_the_bracket_design_is_the_one_built():
    """The model's bracket uses the kernels' sample size, spread and tiles."""
    cuda = pytest.importorskip("gtp_ref.backends.fast.cuda", reason="the kernels need Triton")
    assert (cuda.SAMPLE, cuda.SPREAD, cuda.ROWS, cuda.KEYS) == (8192, 5.0, 32, 32)
    stride, _, _ = cuda.sizes(N)
    assert abs(N * N / stride - 8192) / 8192 < 0.1


def test_slower_tiles_slow_only_the_tile_designs():
    fast, slow = costmodel.machine("h200"), costmodel.machine("h200", tile_rate=0.25)
    for name, design in by_name().items():
        if name in ("sdpa", "explicit", "two_kernel"):
            assert design.seconds(slow) == design.seconds(fast), name
        else:
            assert design.seconds(slow) > design.seconds(fast), name


@pytest.mark.parametrize("P", [1, 8, 16])
def test_a_forward_with_gtp_is_slower_than_free_pruning_and_faster_with_more_pruning(P):
    m = costmodel.machine("h200")
    base = costmodel.forward_seconds(256, N, H, d, 12, 0, "sdpa", m)
    free = costmodel.forward_seconds(256, N, H, d, 12, P, "sdpa", m)
    gtp = costmodel.forward_seconds(256, N, H, d, 12, P, "bracket", m)
    more = costmodel.forward_seconds(256, N, H, d, 12, P + 1, "bracket", m)
    assert free < base and free < gtp and more < gtp


def test_command_prints_every_design_and_the_forwards():
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gtp_ref.apps.bench",
            "costmodel",
            "--sizes",
            "4x50",
            "--forward",
            "2",
            "4",
            "--passes",
            "--tile-rate",
            "0.5",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    for name in (
        "sdpa",
        "explicit",
        "two_kernel",
        "one_kernel",
        "radix8",
        "bracket",
        "32-row tiles at 0.5",
        "count below, collect inside",
        "GTP / free pruning",
    ):
        assert name in r.stdout, name


@pytest.mark.parametrize(
    "args, message",
    [
        (("--tile-rate", "0"), "--tile-rate 0.0: must be in (0, 1]"),
        (("--tile-rate", "nan"), "--tile-rate nan: must be in (0, 1]"),
        (("--sizes", "4x1"), "need B >= 1 and N >= 2"),
        (("--heads", "0"), "--heads 0: must be >= 1"),
    ],
)
def test_bad_arguments_are_one_line(args, message):
    r = command(bench.main, "costmodel", *args)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr
