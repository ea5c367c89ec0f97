"""The benchmark commands as a user runs them (a benchmark is not a test: no timing is asserted):
smoke runs of each command, arguments checked before anything is measured, results printed
before they are written."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

from gtp_ref.apps.bench import __main__ as bench
from gtp_ref.apps.bench import scaling
from gtp_ref.apps.bench.scaling import peak_added_bytes
from gtp_ref.config import ViTConfig
from tests.helpers import command


def run(*args):
    return subprocess.run([sys.executable, "-m", "gtp_ref.apps.bench", *args], capture_output=True, text=True)


def test_scaling_smoke():
    r = run("scaling", "--grids", "8", "16", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert (
        doc["device"] == "cpu"
        and doc["threads"] == torch.get_num_threads()
        and doc["torch"] == torch.__version__
    )
    rows = doc["rows"]
    assert [(x["grid"], x["backend"]) for x in rows] == [
        ("8x8", "dense"),
        ("8x8", "sparse"),
        ("16x16", "dense"),
        ("16x16", "sparse"),
    ]
    assert all(x["median_ms"] > 0 and x["peak_mb"] >= 0 and x["rounds"] == 1 for x in rows)
    assert "time_ratio" in rows[1] and "mem_ratio" in rows[3]


def test_peak_memory_counts_a_known_allocation():
    def work():
        a = torch.empty(1 << 20, dtype=torch.float64)  # 8 MiB
        b = torch.empty(1 << 19, dtype=torch.float64)  # 4 MiB, while a is alive
        del a, b

    assert peak_added_bytes(work, "cpu") == 12 * 2**20


@pytest.mark.parametrize(
    "args, message",
    [
        (("scaling", "--repeats", "0"), "--repeats 0: must be >= 1"),
        (("scaling", "--grids", "1"), "--grids 1: each side must be >= 8"),
        (("threshold", "--sizes", "2x1"), "--sizes '2x1': need B >= 1 and N >= 2"),
        (("threshold", "--sizes", "0x9"), "--sizes '0x9': need B >= 1"),
        (("threshold", "--sizes", "2by9"), "--sizes '2by9': write BxN"),
        (
            ("profile", "--num-prop", "1000"),
            "--num-prop 1000 for smoke: num_prop=1000 propagates 1000 of the 16 image tokens",
        ),
        (("profile", "--batch", "0"), "--batch 0: must be >= 1"),
        (("throughput", "--models", "deit_small", "--repeats", "2"), "--repeats 2: a measurement needs >= 5"),
        (("throughput", "--methods", "gtp_fast+graph"), "the +graph methods need --device cuda"),
        (("throughput", "--num-prop", "1000"), "--num-prop 1000 for smoke"),
        (("throughput", "--batches", "0"), "--batches 0: must be >= 1"),
        (("throughput", "--figure", "out.pdf"), "--figure 'out.pdf': must end in .png"),
        (
            ("throughput", "--json-out", "/no/such/folder/rows.json"),
            "its folder '/no/such/folder' does not exist",
        ),
        (("throughput", "--json-out", ""), "--json-out '': give a file path"),
        (("scaling", "--device", "cuda"), "no CUDA device")
        if not torch.cuda.is_available()
        else (("scaling", "--repeats", "-1"), "--repeats -1"),
        (("plot", "/no/such.json", "--figure", "x.png"), "cannot read throughput rows from /no/such.json"),
        (("throughput", "--img-size", "44"), "--img-size 44: a positive multiple of smoke's patch size 8"),
        (
            ("throughput", "--timm", "vit_tiny_patch16_224", "--img-size", "64"),
            "--img-size goes with the presets",
        ),
        (("attention", "--dtypes", "fp16"), "--dtypes: fp16 / bf16 autocast is measured on CUDA"),
        (("attention", "--sizes", "4x1"), "--sizes '4x1': need B >= 1 and N >= 2"),
        (("attention", "--sparsity", "0"), "--sparsity 0.0: must be in (0, 1]"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_bad_arguments_are_one_line_before_anything_is_measured(args, message):
    r = command(bench.main, *args)
    assert r.returncode == 2, (r.stdout[-500:], r.stderr[-500:])
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stdout == "", "nothing measured, nothing printed"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "cannot read throughput rows"),
        ('{"rows": []}', "not a throughput result"),
        ('{"rows": [{"model": "smoke"}]}', "row 0 lacks or mistypes method, num_prop, batch"),
        ("[1, 2]", "not a throughput result"),
    ],
)
def test_plot_refuses_malformed_rows_in_one_line(tmp_path, content, message):
    bad = tmp_path / "rows.json"
    bad.write_text(content)
    r = run("plot", str(bad), "--figure", str(tmp_path / "x.png"))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_failing_write_does_not_lose_the_measurement(tmp_path, monkeypatch, capsys):
    """The table is printed first; the write that fails afterwards is one line and exit 1."""
    folder = tmp_path / "out"
    folder.mkdir()
    measure = scaling.run

    def run_then_lose_the_folder(args):
        rows = measure(args)
        shutil.rmtree(folder)  # e.g. a disk unmounted during a long measurement
        return rows

    monkeypatch.setattr(scaling, "run", run_then_lose_the_folder)
    with pytest.raises(SystemExit) as e:
        bench.main(["scaling", "--grids", "8", "--repeats", "1", "--json-out", str(folder / "rows.json")])
    out, err = capsys.readouterr()
    assert e.value.code == 1
    assert "8x8" in out and "sparse" in out, "the finished table is on the screen"
    assert "the measurement above was not saved" in err and len(err.strip().splitlines()[-1:]) == 1


def test_throughput_smoke(tmp_path):
    fig = tmp_path / "tp.png"
    r = run("throughput", "--models", "smoke", "--repeats", "1", "--json", "--figure", str(fig))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {x["method"] for x in rows} == {
        "baseline_fused",
        "baseline_explicit",
        "gtp_dense",
        "gtp_sparse",
        "gtp_fast",
        "tome",
    }
    assert {x["num_prop"] for x in rows if x["method"] == "tome"} == {1, 2}
    assert all(x["img_per_s"] > 0 and x["speedup"] > 0 for x in rows)
    assert all(x["expected_speedup"] > 1 for x in rows if x["num_prop"])
    assert int.from_bytes(fig.read_bytes()[16:20], "big") >= 800


def test_throughput_table_says_plainly_how_each_method_compares():
    r = run("throughput", "--models", "smoke", "--repeats", "1", "--methods", "baseline_fused", "gtp_fast")
    assert r.returncode == 0, r.stderr
    assert "device=cpu" in r.stdout and f"{torch.get_num_threads()} threads" in r.stdout
    verdict = [line for line in r.stdout.splitlines() if line.startswith("smoke, batch 2, fp32: gtp_fast is")]
    assert len(verdict) == 1 and (
        "SLOWER than the unreduced model" in verdict[0]
        or "faster than the unreduced model at every P" in verdict[0]
    )


def test_threshold_smoke():
    r = run("threshold", "--sizes", "2x9", "1x12", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert {x["method"] for x in rows} == {"kthvalue", "topk", "fast.kth_smallest"}
    assert all(x["exact"] for x in rows) and {(x["B"], x["N"]) for x in rows} == {(2, 9), (1, 12)}


def test_attention_smoke():
    """On the CPU the fused attention, GTP's explicit one and the fast backend's CPU path, which agrees."""
    r = run("attention", "--sizes", "2x17", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [x["method"] for x in rows] == ["sdpa", "explicit", "cpu"]
    assert rows[0]["max_abs_diff_out"] is None and rows[1]["max_abs_diff_out"] == 0.0
    assert rows[2]["max_abs_diff_out"] < 1e-5 and rows[2]["max_abs_diff_scores"] < 1e-5
    assert all(x["median_us"] > 0 and (x["B"], x["N"], x["dtype"]) == (2, 17, "fp32") for x in rows)


def test_pruned_free_drops_tokens_at_gtps_schedule():
    """Free pruning keeps GTP's token count per block, and at P = 0 it is the plain model."""
    from gtp_ref.apps.bench.throughput import PrunedViT
    from gtp_ref.vit import ViT

    kw = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=3, num_heads=2)
    torch.manual_seed(0)
    plain = ViT(ViTConfig.of(**kw), fused_attn=True).eval()
    x = torch.randn(2, 3, 32, 32)
    same, pruned = PrunedViT(plain, num_prop=0).eval(), PrunedViT(plain, num_prop=4).eval()
    seen = []
    hook = plain.blocks[2].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[1]))
    with torch.no_grad():
        pruned(x)
        hook.remove()
        assert torch.allclose(same(x), plain(x), atol=1e-6)
    assert seen == [1 + 16 - 3 * 4]


def test_pruned_free_keeps_the_positions_of_its_tokens():
    """On a backbone with a relative-position bias (BEiT) or RoPE: at P = 0 the model itself; with
    P > 0 block l attends with the bias entries / RoPE rows of the patches it keeps -- the first
    n_l, so the table's leading rows and columns."""
    from gtp_ref.apps.bench.throughput import PrunedViT
    from gtp_ref.model import GTPViT

    for positions in (dict(attn_bias=True), dict(rope="interleaved", pos_embed=False)):
        kw = dict(img_size=32, patch_size=8, num_classes=5, embed_dim=16, depth=3, num_heads=2, **positions)
        torch.manual_seed(0)
        plain = GTPViT(ViTConfig.of(**kw)).eval()
        for p in plain.parameters():
            torch.nn.init.normal_(p, std=0.5)
        x = torch.randn(2, 3, 32, 32)
        seen = []
        hooks = [
            block.attn.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
            for block in plain.blocks
        ]
        with torch.no_grad():
            assert torch.allclose(PrunedViT(plain, num_prop=0)(x), plain(x), atol=1e-5), positions
            seen.clear()
            PrunedViT(plain, num_prop=3)(x)
        for h in hooks:
            h.remove()
        for l, kwargs in enumerate(seen):
            n_l = 16 - 3 * l  # image tokens entering block l
            if "attn_bias" in positions:
                want = plain.attn_bias_table[l][:, : 1 + n_l, : 1 + n_l]
                assert torch.equal(kwargs["bias"][0], want), (l, kwargs["bias"].shape)
            else:
                want = plain.rope_table[min(l, len(plain.rope_table) - 1)][:, :n_l]
                assert torch.equal(kwargs["rope_rows"][0], want), (l, kwargs["rope_rows"].shape)


def test_throughput_at_another_image_size():
    r = run(
        "throughput",
        "--models",
        "smoke",
        "--img-size",
        "48",
        "--repeats",
        "1",
        "--methods",
        "baseline_fused",
        "pruned_free",
        "--num-prop",
        "2",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [x["method"] for x in rows] == ["baseline_fused", "pruned_free"]
    assert rows[1]["expected_speedup"] > 1


def test_profile_smoke():
    r = run("profile", "--rows", "5")
    assert r.returncode == 0, r.stderr
    assert "smoke gtp_fast P=1" in r.stdout and "Name" in r.stdout


def test_plot_redraws_from_json_out(tmp_path):
    rows = tmp_path / "rows.json"
    r = run(
        "throughput", "--methods", "baseline_fused", "gtp_fast", "--repeats", "1", "--json-out", str(rows)
    )
    assert r.returncode == 0, r.stderr
    assert {x["method"] for x in json.loads(rows.read_text())["rows"]} == {"baseline_fused", "gtp_fast"}
    fig = tmp_path / "again.png"
    r = run("plot", str(rows), "--figure", str(fig))
    assert r.returncode == 0 and f"wrote {fig}" in r.stdout, r.stderr
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    r = run("plot", str(rows), "--figure", str(fig))
    assert r.returncode == 0 and f"replaced {fig}" in r.stdout, r.stderr


@pytest.mark.skipif(
    not any(map(shutil.which, ("g++", "c++", "clang++"))),
    reason="torch.compile on the CPU needs a C++ compiler",
)
def test_throughput_compile_smoke():
    r = run(
        "throughput",
        "--models",
        "smoke",
        "--repeats",
        "1",
        "--methods",
        "gtp_fast",
        "gtp_fast+compile",
        "--json",
    )
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["rows"]
    assert [(x["method"], x["num_prop"]) for x in rows] == [
        ("gtp_fast", 1),
        ("gtp_fast", 2),
        ("gtp_fast+compile", 1),
        ("gtp_fast+compile", 2),
    ]
    assert all(x["img_per_s"] > 0 for x in rows)


def test_check_validates_a_throughput_command_without_running_it(tmp_path):
    """--check: a CUDA command's arguments are checked on a machine without CUDA, nothing is built
    or written; a bad argument is refused as the real run would refuse it."""
    out = tmp_path / "rows.json"
    args = ["throughput", "--check", "--device", "cuda", "--models", "deit_small", "--batches", "256"]
    r = run(*args, "--methods", "gtp_fast+graph", "pruned_free", "--json-out", str(out))
    assert r.returncode == 0 and "the arguments are valid" in r.stdout, r.stderr
    assert not out.exists()
    r = run(*args, "--repeats", "2")
    assert r.returncode == 2 and "--repeats 2" in r.stderr, r.stderr
