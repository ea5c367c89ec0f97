"""``python -m gtp_ref.apps.support``: which of timm's ViT-family models ``gtp_ref.from_timm`` converts,
and why each of the others is refused; ``--hf``: the same for transformers' vision models and
``gtp_ref.from_hf``.

Every model that timm registers in its ViT-family modules (``MODULES``) -- or, with ``--hf``,
every model type of the installed transformers whose default config describes a patch-based
vision encoder (``image_size``, ``patch_size``, ``hidden_size``, ``num_hidden_layers``) -- is built
from its default config on the meta device (no weights, no memory, seconds for the whole
registry), in eval mode, and converted with ``num_prop=0``; a refusal is the ``ValueError`` the
converter raises, which names what it cannot represent.  The table counts the models per reason;
``--json-out`` keeps every model's row.  timm (the ``timm`` extra) or transformers (``hf``) is
needed.
"""

import json
import re
import sys
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from gtp_ref.cli import OneLineParser, output_path

MODULES = (
    "vision_transformer",
    "eva",
    "deit",
    "beit",
    "vision_transformer_relpos",
    "naflexvit",
    "vision_transformer_hybrid",
    "vision_transformer_sam",
)


def reason_key(message: str) -> str:
    """A refusal's reason without what varies from model to model (block numbers, sizes, names in
    parentheses): the rows of the table."""
    message = re.sub(r"blocks\.\d+", "blocks.N", message.split("; ")[0])
    return re.sub(r"(?<![A-Za-z])\d+", "N", message)  # numbers, not the digits of a class name


def survey(modules: Sequence[str] = MODULES, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per model: name, module, converted (bool), reason (the refusal; None when converted)."""
    import timm

    from gtp_ref.timm_models import from_timm

    rows = []
    for module in modules:
        try:
            registered = timm.list_models(module=module)
        except Exception as e:  # noqa: BLE001 -- a module this timm version lacks
            rows.append(
                dict(name=None, module=module, converted=False, reason=f"timm has no module {module!r} ({e})")
            )
            continue
        for name in registered if names is None else [n for n in registered if n in names]:
            row = dict(name=name, module=module, converted=False, reason=None)
            try:
                with warnings.catch_warnings(), torch.device("meta"):
                    warnings.simplefilter("ignore")
                    model = timm.create_model(name, pretrained=False).eval()
            except Exception as e:  # noqa: BLE001 -- timm itself cannot build it on the meta device
                row["reason"] = f"timm cannot build it on the meta device: {type(e).__name__}: {e}"
                rows.append(row)
                continue
            try:
                from_timm(model, num_prop=0)
                row["converted"] = True
            except ValueError as e:
                row["reason"] = str(e)
            rows.append(row)
    return rows


def survey_hf(types: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per model type of transformers (or of ``types``) with a patch-based vision config:
    name (the model type), module (the class built), converted (bool), reason (the refusal)."""
    import transformers
    from transformers import CONFIG_MAPPING, AutoModel

    from gtp_ref.hf_models import hf_backbone

    rows = []
    unknown = sorted(set(types or ()) - set(CONFIG_MAPPING.keys()))
    if unknown:
        raise ValueError(
            f"types: {', '.join(unknown)} not model types of transformers {transformers.__version__}"
        )
    for model_type in sorted(CONFIG_MAPPING.keys() if types is None else types):
        try:
            config = CONFIG_MAPPING[model_type]()
        except Exception:  # noqa: BLE001 -- a config that needs arguments: not a plain vision model
            continue
        if not all(
            hasattr(config, a) for a in ("image_size", "patch_size", "hidden_size", "num_hidden_layers")
        ):
            continue
        row = dict(name=model_type, module=None, converted=False, reason=None)
        # AutoModel's class, else the class named after the config (XVisionConfig -> XVisionModel):
        # the vision parts of larger models that AutoModel does not map alone
        named = getattr(transformers, type(config).__name__.replace("Config", "Model"), None)
        try:
            with warnings.catch_warnings(), torch.device("meta"):
                warnings.simplefilter("ignore")
                try:
                    model = AutoModel.from_config(config).eval()
                except Exception:  # noqa: BLE001 -- not mapped alone: the named class, if any
                    if named is None:
                        raise
                    model = named(config).eval()
        except Exception as e:  # noqa: BLE001 -- no model class builds from this config alone
            row.update(
                module="-",
                reason="transformers builds no model of this config alone (a part of a larger "
                f"model); {type(e).__name__}: {str(e)[:120]}",
            )
            rows.append(row)
            continue
        row["module"] = type(model).__name__
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                hf_backbone(model)
            row["converted"] = True
        except ValueError as e:
            row["reason"] = str(e)
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]], converter: str = "from_timm", source: str = "timm") -> str:
    converted = sum(r["converted"] for r in rows)
    models = [r for r in rows if r["name"] is not None]
    where = (
        f" in {', '.join(sorted({r['module'] for r in rows}))}"
        if source == "timm"
        else " as patch-based vision models"
    )
    out = [
        f"{converter} converts {converted} of the {len(models)} models {source} registers{where} "
        f"({100 * converted / max(len(models), 1):.0f} %)",
        "",
    ]
    by_module = Counter(r["module"] for r in models)
    done = Counter(r["module"] for r in models if r["converted"])
    out += [f"{'module' if source == 'timm' else 'class':>28} {'models':>6} {'converted':>9}"]
    out += [f"{m:>28} {by_module[m]:>6} {done[m]:>9}" for m in sorted(by_module)]
    reasons = Counter(reason_key(r["reason"]) for r in rows if not r["converted"])
    if reasons:
        out += ["", "refused, by reason:"]
        for reason, count in reasons.most_common():
            example = next(
                r["name"] for r in rows if not r["converted"] and reason_key(r["reason"]) == reason
            )
            out.append(f"{count:>5}  {reason}  (e.g. {example})")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m gtp_ref.apps.support", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--modules",
        nargs="+",
        default=list(MODULES),
        metavar="MODULE",
        help=f"timm's model modules to survey (default: {' '.join(MODULES)})",
    )
    parser.add_argument(
        "--json-out", default=None, metavar="PATH", help="also write every model's row as JSON"
    )
    parser.add_argument(
        "--hf", action="store_true", help="survey transformers' vision models for from_hf instead"
    )
    args = parser.parse_args(argv)
    out = output_path(parser, "--json-out", args.json_out, suffixes=[".json"])
    library = "transformers" if args.hf else "timm"
    try:
        module = __import__(library)
    except Exception as e:  # noqa: BLE001 -- a torchvision that does not match torch raises RuntimeError
        parser.error(f"needs {library} (pip install 'gtp-ref[{'hf' if args.hf else 'timm'}]'): {e}")
    rows = survey_hf() if args.hf else survey(args.modules)
    print(table(rows, "from_hf", "transformers") if args.hf else table(rows), end="")
    if out is not None:
        try:
            Path(out).write_text(
                json.dumps({library: module.__version__, "torch": torch.__version__, "rows": rows}, indent=1)
                + "\n"
            )
        except OSError as e:
            parser.exit(
                1,
                f"{parser.prog}: error: the rows were not saved: cannot write --json-out {str(out)!r}: "
                f"{e}; the table above is all that was kept\n",
            )
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
