"""The commands and experiments built on the library -- never imported by it.

    bench/         python -m gtp_ref.apps.bench    benchmarks (throughput, threshold, attention, ...)
    eval.py        python -m gtp_ref.apps.eval     top-1 / top-5 on an image folder, sweeps
    vis.py         python -m gtp_ref.apps.vis      a picture of what GTP did to one image
    digits.py      python -m gtp_ref.apps.digits   the supplement's accuracy experiments, small
    support.py     python -m gtp_ref.apps.support  which timm ViTs from_timm converts, and why not
    images.py      the image folder and its batches (for eval)
    loading.py     models and checkpoints for the commands
    preprocess.py  a model's evaluation preprocessing (Pillow and torch)

Each command also runs as ``python -m gtp_ref.apps.<name>`` and as a console script
(``gtp-bench``, ``gtp-eval``, ``gtp-vis``, ``gtp-digits``, ``gtp-support``).  ``AUTOCAST`` is the
commands' one table of dtypes.
"""

import torch

# --dtype / --dtypes: fp32 runs as it is; fp16 / bf16 under autocast
AUTOCAST = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}
