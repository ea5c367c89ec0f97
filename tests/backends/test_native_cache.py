"""What the fast backend loads from its cache of compiled CPU kernels: only a library built by
this user, in a directory nobody else can write to, whose digest matches and which answers its
self-test; anything else is built anew (or, where the cache cannot be trusted, built in a private
directory) -- never loaded, never a crash, never a wrong number.  Each case runs in a fresh
process with its own cache directory."""

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gtp_ref.backends.fast import cpu_build

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC") or "cc") is None and not shutil.which("gcc"),
    reason="needs a C compiler",
)

# A stranger's library: a constructor that leaves a mark, and every one of the kernel's names as a
# no-op (whose outputs would stay uninitialised: NaN logits, silently).
FOREIGN_C = """
#include <stdio.h>
#include <stdint.h>
__attribute__((constructor)) static void mark(void) { FILE *f = fopen("MARK", "w"); if (f) fclose(f); }
int64_t select_max(void) { return 64; }
""" + "".join(f"int64_t {name}(void) {{ return 0; }}\n" for name in cpu_build.NAMES if name != "select_max")
NO_NAMES_C = "int something_else(void) { return 1; }\n"

# The child: the fast backend's threshold and masking on the CPU must be exact, whatever the cache held.
CHILD = textwrap.dedent("""
    import warnings, torch
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from gtp_ref.backends import dense, fast
        from gtp_ref.backends.fast import cpu, cpu_build
        x = torch.rand(3, 500, generator=torch.Generator().manual_seed(0))
        attn = torch.rand(2, 3, 9, 9, generator=torch.Generator().manual_seed(1)).softmax(-1)
        assert torch.equal(fast.kth_smallest(x, 123), x.kthvalue(123, -1).values)
        assert torch.equal(fast.sparsify_attention(attn, 0.6), dense.sparsify_attention(attn, 0.6))
    print("available", cpu.available())
    print("note", cpu_build.NOTE)
    print("reason", cpu.REASON)
    for w in caught:
        print("warning", w.message)
""")


def run_child(cache: Path | None, *, env_extra=None, prelude: str = "", cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("XDG_CACHE_HOME",)}
    if cache is not None:
        env["XDG_CACHE_HOME"] = str(cache)
    env.update(env_extra or {})
    env = {k: v for k, v in env.items() if v is not None}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    r = subprocess.run(
        [sys.executable, "-c", prelude + CHILD], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def library_name() -> str:
    return f"cpu_kernels-{cpu_build._key(cpu_build._compiler())}.so"


def compile_c(code: str, out: Path, tmp: Path) -> None:
    src = tmp / "foreign.c"
    src.write_text(code)
    subprocess.run([cpu_build._compiler(), "-shared", "-fPIC", str(src), "-o", str(out)], check=True)


def forge_digest(path: Path) -> None:
    path.with_name(path.name + ".sha256").write_text(cpu_build._digest(path) + "\n")


def test_a_library_in_a_world_writable_cache_is_never_loaded(tmp_path):
    """Another user's library, digest and all, planted in a shared cache: it does not run."""
    shared = tmp_path / "shared"
    (shared / "gtp_ref").mkdir(parents=True)
    for d in (shared, shared / "gtp_ref"):
        d.chmod(0o777)
    planted = shared / "gtp_ref" / library_name()
    compile_c(FOREIGN_C, planted, tmp_path)
    forge_digest(planted)
    work = tmp_path / "work"
    work.mkdir()
    out = run_child(shared, cwd=work)
    assert not (work / "MARK").exists(), "the planted library's constructor ran"
    assert "available True" in out and "writable by its group or by others" in out, out
    assert "built in" in out and "for this process" in out, out


def test_a_library_of_no_ops_with_the_right_names_and_digest_is_not_used(tmp_path, monkeypatch):
    """Even in a private cache, with a matching digest: the self-test refuses it; it is rebuilt."""
    cache = tmp_path / "cache"
    (cache / "gtp_ref").mkdir(parents=True, mode=0o700)
    planted = cache / "gtp_ref" / library_name()
    compile_c(FOREIGN_C, planted, tmp_path)
    forge_digest(planted)
    copy = tmp_path / "copy" / "foreign.so"  # the same library, looked at here before the child replaces it
    copy.parent.mkdir()
    shutil.copy2(planted, copy)
    monkeypatch.chdir(tmp_path)  # its constructor's mark lands here
    foreign = cpu_build._bind(copy)  # every name is there: what refuses it is the self-test
    with pytest.raises(OSError, match="wrong answers in its self-test"):
        cpu_build._self_test(foreign)
    out = run_child(cache, cwd=tmp_path)
    assert "available True" in out and "reason None" in out and "warning" not in out, out
    cpu_build._checked(planted)  # replaced by a real build, which passes the self-test here too
    assert cpu_build._intact(planted)


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "no kernel functions"])
def test_a_damaged_library_is_rebuilt_not_loaded(tmp_path, damage):
    """A half-written file would kill the process with SIGBUS if loaded; random bytes fail to load;
    a library without the functions would fail in the forward: each is built again and replaced."""
    cache = tmp_path / "cache"
    first = run_child(cache, cwd=tmp_path)
    assert "available True" in first, first
    built = cache / "gtp_ref" / library_name()
    size = built.stat().st_size
    if damage == "truncated":
        with open(built, "r+b") as f:
            f.truncate(size // 2)  # the recorded digest no longer matches
    elif damage == "random bytes":
        built.write_bytes(os.urandom(size))
        forge_digest(built)  # even with a matching digest: it does not load
    else:
        compile_c(NO_NAMES_C, built, tmp_path)
        forge_digest(built)
    out = run_child(cache, cwd=tmp_path)
    assert "available True" in out and "reason None" in out and "warning" not in out, out
    assert cpu_build._intact(built) and built.stat().st_size == size


def test_no_home_directory_and_no_passwd_entry(tmp_path):
    """HOME unset and a uid without a passwd entry: XDG_CACHE_HOME is used when set; without it the
    library is built in a private directory, with a warning -- no crash either way."""
    prelude = "import pwd\ndef _none(uid): raise KeyError(uid)\npwd.getpwuid = _none\n"
    with_xdg = run_child(tmp_path / "xdg", env_extra={"HOME": None}, prelude=prelude, cwd=tmp_path)
    assert "available True" in with_xdg and "note None" in with_xdg, with_xdg
    assert (tmp_path / "xdg" / "gtp_ref" / library_name()).exists()
    without = run_child(None, env_extra={"HOME": None}, prelude=prelude, cwd=tmp_path)
    assert "available True" in without and "no home directory" in without, without


def test_a_relative_xdg_cache_home_is_ignored(tmp_path, monkeypatch):
    """The XDG spec: a relative XDG_CACHE_HOME is invalid (it would name a folder of the working
    directory, wherever that is)."""
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cpu_build.cache_dir() == tmp_path / ".cache" / "gtp_ref"


def test_the_trust_rule(tmp_path):
    """Owned by this user and writable by nobody else; folders above may be shared only with the
    sticky bit (as /tmp)."""
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    assert cpu_build.untrusted(mine) is None
    mine.chmod(0o770)
    assert "writable by its group or by others" in cpu_build.untrusted(mine)
    mine.chmod(0o700)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    (shared / "inner").mkdir(mode=0o700)
    assert "without the sticky bit" in cpu_build.untrusted(shared / "inner")
    shared.chmod(0o777 | stat.S_ISVTX)
    assert cpu_build.untrusted(shared / "inner") is None
    link = tmp_path / "link"
    link.symlink_to(shared / "inner")
    assert cpu_build.untrusted(link) is None, "judged where the link leads"
    (tmp_path / "file").write_text("")
    assert "is not a directory" in cpu_build.untrusted(tmp_path / "file")
    if os.getuid() == 0:  # only root can give a folder away
        other = tmp_path / "other"
        other.mkdir(mode=0o700)
        os.chown(other, 12345, 12345)
        assert "belongs to uid 12345" in cpu_build.untrusted(other)


def test_torch_compile_as_the_first_call_builds_the_library_and_keeps_one_graph(tmp_path):
    """torch.compile(model, fullgraph=True) as a process's first call, with an empty cache: the
    library is built while the model is traced (torch.compile takes its availability as a
    constant), with no graph break, and the compiled model runs the kernels."""
    prelude = textwrap.dedent("""
        import torch
        from gtp_ref import GTPViT, ViTConfig
        cfg = ViTConfig.of(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, num_classes=3)
        model = GTPViT(cfg, num_prop=3, sparsity=0.6, token_scale=True, backend="fast").eval()
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            compiled = torch.compile(model, fullgraph=True, backend="eager")(x)
            assert torch.allclose(compiled, model(x), rtol=1e-5, atol=1e-6)
        print("compiled once")
    """)
    out = run_child(tmp_path / "cache", prelude=prelude, cwd=tmp_path)
    assert "compiled once" in out and "available True" in out, out
    assert (tmp_path / "cache" / "gtp_ref" / library_name()).exists()
