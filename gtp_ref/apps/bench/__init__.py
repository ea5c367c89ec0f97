"""Benchmarks: ``python -m gtp_ref.apps.bench COMMAND ...`` (``--help`` on each).

scaling     the dense reference vs the sparse backend as the grid grows (time, memory)
throughput  images / s of the unreduced model, GTP (each backend) and ToMe; speed-ups
threshold   GTP's sparsity threshold alone, by every exact method
attention   one block's attention: the fused one without GTP vs GTP's explicit and kernel paths
profile     a torch.profiler table of one configuration's forward
plot        the throughput figure, redrawn from saved ``--json-out`` files
costmodel   one block's attention on paper, per design of the CUDA path: bytes, FLOPs, exp, int ops
resources   every CUDA kernel variant compiled for sm_90a without a GPU: registers, spills, shared memory

Every argument and output path is checked before anything is measured (a bad one is one line
and exit status 2); results are printed before they are written, so a failing write cannot
lose a finished measurement.  Timing: ``gtp_ref.apps.bench.common.measure``.  docs/performance.md
has the results, each with its command.
"""
