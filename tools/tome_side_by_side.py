"""The official ToMe and gtp_ref's ToMe side by side on the timm models of the support matrix.

    python tools/tome_side_by_side.py --tome PATH/TO/facebookresearch/ToMe

PATH is a checkout of https://github.com/facebookresearch/ToMe (not part of this project; it is
imported from there, unmodified).  For every supported timm model without register tokens, with
random float64 weights (tests/backbone/test_timm.py), and r = 0, 2, 8: the official ToMe applied by
``tome.patch.timm`` against ``gtp_ref.tome_from_timm``, and the official ToMe at r = 0 against the
timm model itself.  Needs timm (and so a torchvision that matches torch) and tqdm (ToMe's).
"""

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from peers import foreign  # noqa: E402  (tools/peers.py, beside this file: the foreign code runs in a scratch folder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tome", required=True, help="a checkout of facebookresearch/ToMe")
    args = parser.parse_args()
    foreign(args.tome)
    import timm
    import tome

    from gtp_ref import tome_from_timm
    from tests.backbone.test_timm import SUPPORTED, images, rel_err, timm_model

    print(f"timm {timm.__version__}, torch {torch.__version__}; relative max differences of the logits")
    print(f"{'model':48s} {'r':>2}  official vs gtp_ref  official (r=0) vs timm")
    for what, name, kwargs in SUPPORTED:
        # ToMe's parse_r needs 2
        model = timm_model(name, {**kwargs, "depth": max(2, kwargs.get("depth", 2))})
        if getattr(model, "num_reg_tokens", 0):
            continue
        x = images(model)
        for r in (0, 2, 8):
            official = copy.deepcopy(model)
            tome.patch.timm(official)
            official.r = r
            with torch.no_grad():
                theirs, ours = official(x), tome_from_timm(model, r=r)(x)
                vs_timm = rel_err(theirs, model(x)) if r == 0 else float("nan")
            print(f"{what:48s} {r:>2}  {rel_err(ours, theirs):18.1e}  {vs_timm:22.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
