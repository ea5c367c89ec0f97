"""The report printed by ``python -m complexity``: Eqs. 2-3 evaluated, checked, and compared
with the numbers the paper quotes, then the backbone MAC model against supplement Tables 1-2."""

from dataclasses import asdict, dataclass
from itertools import product
from typing import Any

import sympy as sp

from complexity import symbols as s
from complexity.backbone import backbone_macs
from complexity.extra import (
    eq2_correction,
    eq2_printed,
    eq3_difference,
    eq3_printed,
    g_gtp,
    g_gtp_closed,
    g_tome,
    g_tome_closed,
    m2c_coefficient,
)
from gtp_ref.config import PRESETS
from gtp_ref.schedule import prop_schedule, tome_schedule


@dataclass(frozen=True)
class Backbone:
    name: str
    N: int
    L: int
    C: int
    H: int
    class_token: bool = True  # N counts the [CLS] token when there is one


# Supplement C.4's settings.  C.4 counts EVA-L without [CLS]: N = the 14x14 = 196 image tokens (the
# authors' code, and the eva_large_style preset, have a [CLS] token: N = 197).
BACKBONES = [
    Backbone("DeiT-S", N=197, L=12, C=384, H=6),
    Backbone("DeiT-B", N=197, L=12, C=768, H=12),
    Backbone("ViT-L", N=197, L=24, C=1024, H=16),
    Backbone("EVA-L", N=196, L=24, C=1024, H=16, class_token=False),
]
PAPER_M = 8

# The values the supplement quotes (MMACs), with the settings it states for them.
QUOTED = [
    ("DeiT-S", "GTP", 20.1),
    ("DeiT-S", "ToMe", 28.3),
    ("DeiT-B", "GTP", 40.5),
    ("DeiT-B", "ToMe", 57.3),
]

# Supplement Tables 1-2: "approximate computational complexity" (GMACs) per P (= ToMe's r).
TABLES = {
    "deit_small": {8: 3.5, 11: 3.0, 14: 2.6, 16: 2.3},
    "deit_base": {4: 15.3, 8: 13.1, 11: 11.6, 14: 9.8, 16: 8.8},
}


def mmacs(x: Any) -> float:
    return float(x) / 1e6


def extra_cost_row(b: Backbone, M: int) -> dict[str, Any]:
    """Exact sums and printed closed forms for one backbone, in MACs (exact sympy numbers)."""
    return {
        "backbone": b.name,
        "N": b.N,
        "L": b.L,
        "M": M,
        "C": b.C,
        "H": b.H,
        "tome_sum": g_tome(b.N, b.L, M, b.C),
        "tome_printed": eq2_printed(b.N, b.L, M, b.C),
        "gtp_sum": g_gtp(b.N, b.L, M, b.C, b.H),
        "gtp_printed": eq3_printed(b.N, b.L, M, b.C, b.H),
    }


def reproductions(b: Backbone, method: str, quoted: float, M: int = PAPER_M) -> list[dict[str, Any]]:
    """Which of N in {N-1, N} x {exact sum, printed closed form} round to the quoted value."""
    found = []
    for N, form in product((b.N - 1, b.N), ("sum", "printed")):
        if method == "ToMe":
            value = g_tome(N, b.L, M, b.C) if form == "sum" else eq2_printed(N, b.L, M, b.C)
        else:
            value = g_gtp(N, b.L, M, b.C, b.H) if form == "sum" else eq3_printed(N, b.L, M, b.C, b.H)
        eq = "Eq. 2" if method == "ToMe" else "Eq. 3"
        found.append(
            {
                "N": N,
                "form": f"{eq} {form}",
                "mmacs": mmacs(value),
                "reproduces": round(mmacs(value), 1) == quoted,
            }
        )
    return found


def tables_check() -> list[dict[str, Any]]:
    rows = []
    for key, table in TABLES.items():
        config = PRESETS[key]
        for P, quoted in table.items():
            merged = tome_schedule(P, config.depth, config.num_tokens, int(config.prefix.class_token))
            gtp = (
                backbone_macs(config, prop_schedule(P, config.depth, config.num_image_tokens))["total"] / 1e9
            )
            tome = backbone_macs(config, merged)["total"] / 1e9
            rows.append(
                {
                    "backbone": config.name,
                    "P": P,
                    "table_gmacs": quoted,
                    "gtp_gmacs": gtp,
                    "tome_gmacs": tome,
                    "tome_r": merged,
                }
            )
    return rows


def executed_rows(M: int = PAPER_M) -> list[dict[str, Any]]:
    """Per backbone: the matrix products GTP and ToMe execute (complexity.exact, equal to
    torch.utils.flop_counter on gtp_ref) and the element work no MAC count sees."""
    from complexity.exact import g_gtp_exact, g_tome_exact
    from complexity.uncounted import gtp_uncounted, tome_uncounted, total

    rows = []
    for b in BACKBONES:
        cls = b.class_token
        rows.append(
            {
                "backbone": b.name,
                "gtp_executed": g_gtp_exact(b.N - int(cls), [M] * b.L, b.C, token_scale=True),
                "gtp_uncounted": asdict(total(gtp_uncounted(b.N, b.L, M, b.C, b.H, class_token=cls))),
                "tome_executed": g_tome_exact(b.N, [M] * b.L, b.C, b.H, class_token=cls),
                "tome_uncounted": asdict(total(tome_uncounted(b.N, b.L, M, b.C, b.H, class_token=cls))),
            }
        )
    return rows


def executed_table(report: dict[str, Any]) -> str:
    """Eqs. 2-3 (from the extra-cost rows) beside what a forward pass executes."""
    header = [
        "backbone",
        "GTP Eq.3",
        "GTP executed",
        "GTP cmp",
        "GTP add",
        "GTP MB",
        "ToMe Eq.2",
        "ToMe executed",
        "ToMe cmp",
        "ToMe add",
        "ToMe MB",
    ]
    rows = []
    for r, paper in zip(report["executed"], report["extra_cost"]):
        g, t = r["gtp_uncounted"], r["tome_uncounted"]
        rows.append(
            [
                r["backbone"],
                f"{mmacs(paper['gtp_sum']):.2f}",
                f"{mmacs(r['gtp_executed']):.2f}",
                f"{g['comparisons'] / 1e6:.2f}",
                f"{g['additions'] / 1e6:.2f}",
                f"{g['bytes'] / 1e6:.2f}",
                f"{mmacs(paper['tome_sum']):.2f}",
                f"{mmacs(r['tome_executed']):.2f}",
                f"{t['comparisons'] / 1e6:.2f}",
                f"{t['additions'] / 1e6:.2f}",
                f"{t['bytes'] / 1e6:.2f}",
            ]
        )
    return _table(header, rows)


def build_report(backbones: list[Backbone] | None = None, M: int = PAPER_M) -> dict[str, Any]:
    """Everything the report prints, as plain data (exact values as sympy numbers)."""
    paper = backbones is None
    backbones = BACKBONES if paper else backbones
    report = {
        "M_meaning": "tokens removed per layer (the method's P), not semantic neighbours",
        "extra_cost": [extra_cost_row(b, M) for b in backbones],
        "derived": {
            "g_tome_closed": g_tome_closed(),
            "g_gtp_closed": g_gtp_closed(),
            "eq2_printed_minus_derived": eq2_correction(),
            "eq3_printed_minus_derived": eq3_difference(),
            "eq2_m2c_printed": m2c_coefficient(eq2_printed(s.N, s.L, s.M, s.C)),
            "eq2_m2c_derived": sp.factor(m2c_coefficient(g_tome_closed())),
        },
    }
    if paper:
        by_name = {b.name: b for b in BACKBONES}
        report["quoted"] = [
            {
                "backbone": name,
                "method": method,
                "quoted_mmacs": q,
                "candidates": reproductions(by_name[name], method, q),
            }
            for name, method, q in QUOTED
        ]
        report["tables"] = tables_check()
        report["executed"] = executed_rows(M)
    return report


# ---- text --------------------------------------------------------------------------------
def _table(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*r) for r in rows])


def extra_cost_table(report: dict[str, Any]) -> str:
    """The main numbers table (also embedded in docs/complexity.md and checked by a test)."""
    header = [
        "backbone",
        "N",
        "L",
        "M",
        "C",
        "H",
        "ToMe sum",
        "ToMe Eq.2 printed",
        "GTP sum",
        "GTP Eq.3 printed",
        "GTP/ToMe",
    ]
    rows = [
        [
            r["backbone"],
            r["N"],
            r["L"],
            r["M"],
            r["C"],
            r["H"],
            f"{mmacs(r['tome_sum']):.2f}",
            f"{mmacs(r['tome_printed']):.2f}",
            f"{mmacs(r['gtp_sum']):.2f}",
            f"{mmacs(r['gtp_printed']):.2f}",
            f"{float(r['gtp_sum'] / r['tome_sum']):.3f}",
        ]
        for r in report["extra_cost"]
    ]
    return _table(header, rows)


def quoted_table(report: dict[str, Any]) -> str:
    header = [
        "backbone",
        "method",
        "quoted",
        "N=196 sum",
        "N=196 printed",
        "N=197 sum",
        "N=197 printed",
        "reproduced by",
    ]
    rows = []
    for q in report["quoted"]:
        c = q["candidates"]
        hits = [f"N={x['N']}, {x['form']}" for x in c if x["reproduces"]]
        rows.append(
            [
                q["backbone"],
                q["method"],
                f"{q['quoted_mmacs']:.1f}",
                *(f"{x['mmacs']:.2f}" for x in c),
                "; ".join(hits) or "none",
            ]
        )
    return _table(header, rows)


def tables_table(report: dict[str, Any]) -> str:
    header = ["backbone", "P (=r)", "table", "GTP ours", "diff", "ToMe ours", "diff", "ToMe r per layer"]
    rows = []
    for r in report["tables"]:
        clamped = "" if len(set(r["tome_r"])) == 1 else ",".join(map(str, r["tome_r"]))
        rows.append(
            [
                r["backbone"],
                r["P"],
                f"{r['table_gmacs']:.1f}",
                f"{r['gtp_gmacs']:.3f}",
                f"{r['gtp_gmacs'] - r['table_gmacs']:+.3f}",
                f"{r['tome_gmacs']:.3f}",
                f"{r['tome_gmacs'] - r['table_gmacs']:+.3f}",
                clamped or f"{r['tome_r'][0]} in every layer",
            ]
        )
    return _table(header, rows)


ERRATUM = """\
Erratum (supplement Eq. 2).  Expanding sum_{{l=1..L}} 1/4 (N - (l-1) M)^2 C uses
sum_{{l=1..L}} (l-1)^2 = (L-1) L (2L-1) / 6, so the M^2 C coefficient of G_ToMe is
    derived: {derived}
    printed: {printed}
The printed closed form overstates G_ToMe by  printed - derived = {diff}
(sympy: simplify(printed - derived) != 0).  Everything else in Eq. 2 is right, and Eq. 3's
printed closed form equals its sum exactly (simplify(printed - derived) = {eq3}).
"""


def _quoted_summary(report):
    """Plain words for the quoted-values table, from its numbers (nothing typed in)."""
    lines = []
    for name in dict.fromkeys(q["backbone"] for q in report["quoted"]):
        qs = [q for q in report["quoted"] if q["backbone"] == name]
        how = "; ".join(
            f"{q['method']} {q['quoted_mmacs']:.1f} <- "
            + (
                " or ".join(f"N={c['N']} {c['form']}" for c in q["candidates"] if c["reproduces"])
                or "no candidate"
            )
            for q in qs
        )
        stated = {
            q["method"]: next(
                c["mmacs"]
                for c in q["candidates"]
                if c["N"] == max(x["N"] for x in q["candidates"]) and c["form"].endswith("sum")
            )
            for q in qs
        }
        lines.append(f"{name}: {how}.")
        lines.append(
            f"  With the stated N and the correct sums: GTP {stated['GTP']:.2f} vs "
            f"ToMe {stated['ToMe']:.2f} MMACs (ratio {stated['GTP'] / stated['ToMe']:.3f})."
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    d = report["derived"]
    out = [
        "Extra cost of ToMe and GTP beyond the backbone, supplement C.4 (Eqs. 2-3), in MMACs",
        f"(M = {report['M_meaning']}; 1 MMAC = 10^6 multiply-accumulates)",
        "",
        extra_cost_table(report),
        "",
        "Closed forms derived by sympy from the sums:",
        f"  G_ToMe = {d['g_tome_closed']}",
        f"  G_GTP  = {d['g_gtp_closed']}",
        "",
        ERRATUM.format(
            derived=d["eq2_m2c_derived"],
            printed=d["eq2_m2c_printed"],
            diff=d["eq2_printed_minus_derived"],
            eq3=d["eq3_printed_minus_derived"],
        ),
    ]
    if "quoted" in report:
        out += [
            "The paper's quoted values (MMACs, M = 8) and the assumptions that reproduce them",
            "(rounded to 0.1 as quoted; the supplement states N = 197 for both backbones):",
            "",
            quoted_table(report),
            "",
            *_quoted_summary(report),
            "",
            "Backbone MACs (GMACs) vs the 'approximate computational complexity' of supplement",
            "Tables 1-2 (P = r tokens removed per layer; ToMe's r is clamped to half of the",
            "unprotected tokens, which changes the last layer at r = 16):",
            "",
            tables_table(report),
            "",
            "What a forward pass executes (M = 8; MACs in millions, other work in millions of",
            "element operations and MB at fp16).  'executed': the matrix products gtp_ref runs,",
            "equal to torch.utils.flop_counter's count (complexity.exact).  ToMe matches keys",
            "averaged over heads (C/H channels), so Eq. 2's 1/4 N^2 C is H times its real cost;",
            "cmp / add / MB: the sparsity threshold, column sums, selections and gathers that no",
            "MAC count sees (complexity.uncounted):",
            "",
            executed_table(report),
        ]
    return "\n".join(out).rstrip() + "\n"


def to_json(report: dict[str, Any]) -> str:
    """The report as JSON-able data: exact values as strings, MACs also as float MMACs."""

    def conv(v):
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, list):
            return [conv(x) for x in v]
        if isinstance(v, sp.Basic):
            return {"exact": str(v), "mmacs": mmacs(v)} if v.is_number else str(v)
        return v

    return conv(report)
