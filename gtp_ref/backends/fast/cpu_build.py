"""How the fast backend's CPU kernels (``cpu_kernels.c``) are built and what is loaded.

They are built on first use (``cc -O3 -march=native -fopenmp -shared``, about a second) into the user's cache
(``$XDG_CACHE_HOME/gtp_ref`` or ``~/.cache/gtp_ref``), under a name keyed by the source, the
compiler, the flags and the CPU.  What is loaded must be trusted and intact:

* **trusted**: the cache directory belongs to this user and nobody else can write to it, nor
  replace it (``untrusted`` says why not).  Where that does not hold -- a shared or
  world-writable ``XDG_CACHE_HOME``, a directory of another user, no home directory -- nothing
  is loaded from there: the library is built in a private temporary directory (``mkdtemp``,
  mode 0700) for this process, with a warning that says why;
* **intact**: the build records the SHA-256 of the built file beside it (``NAME.so.sha256``);
  a file whose digest does not match (truncated, overwritten, half-written) is never loaded but
  built again and replaced atomically;
* **working**: after loading, a self-test asks the library a few questions with known exact
  answers; a library without the functions or with a wrong answer is not used.

``load()`` returns the library or raises; ``gtp_ref.backends.fast.cpu.available`` turns any
failure into a warning and torch ops.
"""

import ctypes
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ("-O3", "-shared", "-fPIC")
# tried in this order: vector instructions of this CPU and threads; threads; neither
VARIANTS = (["-march=native", "-fopenmp"], ["-fopenmp"], [])
NOTE: str | None = None  # where it was built, when that is not the user's cache (why not)


def cache_dir() -> Path | None:
    """``$XDG_CACHE_HOME/gtp_ref`` (an absolute ``XDG_CACHE_HOME``, as the XDG spec asks), else
    ``~/.cache/gtp_ref``; None where the user has no home directory."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):
        return Path(xdg) / "gtp_ref"
    try:
        return Path.home() / ".cache" / "gtp_ref"
    except (RuntimeError, KeyError, OSError):  # HOME unset and no passwd entry for this uid
        return None


def untrusted(directory: Path) -> str | None:
    """Why a library in ``directory`` could come from someone else, or None if it cannot.

    The directory (symbolic links resolved) must be owned by this user and writable by nobody
    else; every folder above it must be owned by this user or root and be writable by nobody
    else, or have the sticky bit (as /tmp has: others cannot rename or replace what is ours).
    """
    real = Path(os.path.realpath(directory))
    uid = os.getuid()
    for level, path in enumerate([real, *real.parents]):
        try:
            st = os.lstat(path)
        except OSError as e:
            return f"{path} cannot be examined ({e.strerror})"
        if not stat.S_ISDIR(st.st_mode):
            return f"{path} is not a directory"
        writable_by_others = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if level == 0:
            if st.st_uid != uid:
                return f"{path} belongs to uid {st.st_uid}, not to this user (uid {uid})"
            if writable_by_others:
                return f"{path} is writable by its group or by others (mode {stat.S_IMODE(st.st_mode):o})"
        elif st.st_uid not in (uid, 0):
            return f"{path} belongs to uid {st.st_uid}"
        elif writable_by_others and not st.st_mode & stat.S_ISVTX:
            return (
                f"{path} is writable by its group or by others without the sticky bit "
                f"(mode {stat.S_IMODE(st.st_mode):o})"
            )
    return None


def _compiler() -> str:
    cc = os.environ.get("CC") or next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if cc is None:
        raise OSError("no C compiler found (cc, gcc or clang; or set CC)")
    return cc


def _key(cc: str) -> str:
    """What the built file depends on: the source, the compiler and its version, the flags and
    the machine (a library built for another CPU is not loaded here)."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha256(SOURCE.read_bytes())
    flags = " ".join(FLAGS) + repr(VARIANTS)
    for part in (cc, version, flags, platform.machine(), platform.processor(), _cpu_flags()):
        h.update(b"\0" + part.encode())
    return h.hexdigest()[:16]


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return ""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _compile(cc: str, directory: Path, name: str) -> Path:
    """Compile SOURCE into ``directory/name`` (a temporary name first, then an atomic rename, with
    the digest of the built file beside it as ``name.sha256``)."""
    target = directory / name
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        out = Path(tmp) / name
        for flags in VARIANTS:  # without OpenMP the rows and heads run one after another
            r = subprocess.run(
                [cc, *FLAGS, *flags, str(SOURCE), "-o", str(out)], capture_output=True, text=True
            )
            if r.returncode == 0:
                break
        else:
            raise OSError(f"{cc} could not compile {SOURCE.name}: {r.stderr.strip()[:300]}")
        digest = Path(tmp) / (name + ".sha256")
        digest.write_text(_digest(out) + "\n")
        os.replace(out, target)  # atomic: another process may be building the same file
        os.replace(digest, target.with_name(name + ".sha256"))
    return target


def _intact(path: Path) -> bool:
    """The file exists and is the one built: its digest is the one recorded beside it."""
    try:
        return path.with_name(path.name + ".sha256").read_text().strip() == _digest(path)
    except OSError:
        return False


# The library's functions, each for float32 and float64 (<name>_f32 / <name>_f64) but select_max;
# the attention also for bfloat16 and float16 inputs (attention_bf16 / attention_f16, computed in
# float32), with the conversions they use (convert_bf16 / convert_f16).
FUNCTIONS = ("kth_smallest", "mask_heads", "attention", "propagate", "select_tokens", "work_kept")
HALF_TYPES = ("bf16", "f16")
# every name the library exports
NAMES = (
    *(f"{function}_{dtype}" for function in FUNCTIONS for dtype in ("f32", "f64")),
    *(f"{function}_{dtype}" for function in ("attention", "convert") for dtype in HALF_TYPES),
    "select_max",
)
SELECT_MAX = (
    64  # select_tokens' largest num_prop: the C source's SELECT_MAX (the self-test checks they agree)
)
# What the functions return (the C source's codes): sizes or ranks out of range; for propagate,
# indices that are no partition, no memory, a graph row beyond A0, a token size not finite and > 0;
# for the attention, a log token size that is not finite
BAD_ARGUMENTS, PARTITION_ERROR, NO_MEMORY, GRAPH_ROW, BAD_SIZE = -1, 1, 2, 3, 4
BAD_LOG_SIZE = -2


def _bind(path: Path) -> ctypes.CDLL:
    """Load the library and declare its functions; OSError / AttributeError where it lacks them."""
    lib = ctypes.CDLL(str(path))
    # data pointers as addresses (cheaper than casts)
    ptr, i64, i32 = (ctypes.c_void_p, ctypes.c_int64, ctypes.c_int)

    # q, k, v, log s, bias, strides, B, H, N, d, dv, kth, scale (the map's float), out, col sums,
    # diagonal, first row, taus, threads
    def attention(c_float):
        return [ptr] * 5 + [ctypes.POINTER(i64)] + [i64] * 6 + [c_float] + [ptr] * 5 + [i32]

    for name in HALF_TYPES:
        fn, convert = getattr(lib, f"attention_{name}"), getattr(lib, f"convert_{name}")
        fn.argtypes, fn.restype = attention(ctypes.c_float), i64
        convert.argtypes, convert.restype = [ptr, i64, ptr, ptr], None
    for name, c_float in (("f32", ctypes.c_float), ("f64", ctypes.c_double)):
        signatures = {
            "kth_smallest": [ptr, i64, i64, i64, ptr, i32],
            "mask_heads": [ptr, i64, i64, i64, ptr, ptr, ptr, ptr, ptr, i32],
            "attention": attention(c_float),
            "propagate": [ptr] * 6 + [i64] * 7 + [c_float, ptr, ptr, ptr, i32],
            "select_tokens": [ptr, i64, i64, i64, ptr, ptr, i32],
            "work_kept": [],
        }
        for function in FUNCTIONS:
            fn = getattr(lib, f"{function}_{name}")
            fn.argtypes, fn.restype = signatures[function], i64
    lib.select_max.argtypes, lib.select_max.restype = [], i64
    return lib


def _self_test(lib: ctypes.CDLL) -> None:
    """A few exact answers from the loaded library, in both dtypes, and its refusal of arguments
    out of range; OSError where one is wrong.  numpy arrays, not torch tensors: this may run
    while torch traces (torch.compile / export), where new tensors are fake."""
    import numpy as np

    def p(a):
        return a.ctypes.data

    right = lib.select_max() == SELECT_MAX
    for dtype in (np.float32, np.float64):
        name = "f32" if dtype == np.float32 else "f64"

        def call(function, *args):
            return getattr(lib, f"{function}_{name}")(*args)

        rows = np.ascontiguousarray(np.arange(60, dtype=dtype)[::-1].reshape(2, 30))  # 59..30, 29..0
        out = np.full(2, np.nan, dtype)
        status = [call("kth_smallest", p(rows), 2, 30, 7, p(out), 1)]
        attn = (np.arange(16, dtype=dtype) / 16).reshape(4, 4)
        masked, sums, diag, first, tau = (np.full(shape, np.nan, dtype) for shape in ((4, 4), 4, 4, 4, 1))
        status.append(call("mask_heads", p(attn), 1, 4, 5, p(masked), p(sums), p(diag), p(first), p(tau), 1))
        want = np.where(attn < 0.25, 0, attn)
        # attention of two tokens scaled by 0: every entry of the map 1/2, Att v the mean of v
        q, v = np.array([[1.0], [3.0]], dtype), np.array([[2.0], [4.0]], dtype)
        mixed, cols, diag2, first2 = (np.full(2, np.nan, dtype) for _ in range(4))
        tau2 = np.full(1, np.nan, dtype)
        strides = (ctypes.c_int64 * 12)(2, 2, 1, 2, 2, 1, 2, 2, 1, 0, 0, 0)
        status.append(
            call(
                "attention",
                p(q),
                p(q),
                p(v),
                None,
                None,
                strides,
                1,
                1,
                2,
                1,
                1,
                2,
                0.0,
                p(mixed),
                p(cols),
                p(diag2),
                p(first2),
                p(tau2),
                1,
            )
        )
        # propagation: a [CLS] and three image tokens; token 1 goes to 0 and 2 with weights 1/2, 1/4
        x, sizes = np.array([[9.0], [1.0], [2.0], [4.0]], dtype), np.ones(4, dtype)
        A0, ids = np.array([[0, 0.5, 0, 0], [0, 0, 0, 0], [0, 0.25, 0, 0], [0, 0, 0, 0]], dtype), np.arange(3)
        kept, prop = np.array([0, 2]), np.array([1])
        x2, sizes2, ids2 = np.full(3, np.nan, dtype), np.full(3, np.nan, dtype), np.full(2, -1)
        status.append(
            call(
                "propagate",
                *map(p, (x, sizes, A0, ids, kept, prop)),
                1,
                4,
                1,
                1,
                4,
                2,
                1,
                0.5,
                p(x2),
                p(sizes2),
                p(ids2),
                1,
            )
        )
        # selection: the two lowest of (2, -0, 1, 0, nan): the zeros, the later one first
        kept2, prop2 = np.full(3, -1), np.full(2, -1)
        status.append(
            call("select_tokens", p(np.array([2, -0.0, 1, 0, np.nan], dtype)), 1, 5, 2, p(kept2), p(prop2), 1)
        )
        # refusals, before anything is written: k beyond the row, a threshold rank beyond the map,
        # no selection, more tokens than the sizes say, a graph row beyond A0
        refused = [
            call("kth_smallest", p(rows), 2, 30, 31, p(out), 1),
            call("mask_heads", p(attn), 1, 4, 17, p(masked), p(sums), p(diag), p(first), p(tau), 1),
            call("select_tokens", p(rows), 1, 5, 0, p(kept2), p(prop2), 1),
            call(
                "propagate",
                *map(p, (x, sizes, A0, ids, kept, prop)),
                1,
                3,
                1,
                1,
                4,
                2,
                1,
                0.5,
                p(x2),
                p(sizes2),
                p(ids2),
                1,
            ),
        ]
        far = np.array([0, 9, 2])
        row_status = call(
            "propagate",
            *map(p, (x, sizes, A0, far, kept, prop)),
            1,
            4,
            1,
            1,
            4,
            2,
            1,
            0.5,
            p(x2),
            p(sizes2),
            p(ids2),
            1,
        )
        right = right and (
            status == [0] * 5
            and refused == [BAD_ARGUMENTS] * 4
            and row_status == GRAPH_ROW
            and out.tolist() == [36.0, 6.0]
            and prop2.tolist() == [3, 1]
            and kept2.tolist() == [0, 2, 4]
            and x2.tolist() == [9.0, 1.5, 4.25]
            and sizes2.tolist() == [1.0, 1.25, 1.125]
            and ids2.tolist() == [0, 2]
            and np.array_equal(masked, want)
            and np.array_equal(sums, want.sum(0))
            and np.array_equal(diag, np.diag(want))
            and np.array_equal(first, want[0])
            and tau[0] == 0.25
            and mixed.tolist() == [3.0, 3.0]
            and cols.tolist() == [1.0, 1.0]
            and diag2.tolist() == first2.tolist() == [0.5, 0.5]
            and tau2[0] == 0.5
        )
    # the half types: 1 + 2^-8 (bf16) / 1 + 2^-11 (f16) is a tie, rounded to even (1); 65520 is
    # float16's infinity; a two-token attention with q = 0 and a bias of log 3 on key 1: the map
    # (1/4, 3/4) in each row, Att v 1/4 2 + 3/4 4 = 3.5, exact in both
    for name, tie, big in (("bf16", 1 + 2**-8, 2.0**100), ("f16", 1 + 2**-11, 65520.0)):
        values = np.array([tie, -2.5, big], np.float32)
        bits, back = np.zeros(3, np.uint16), np.zeros(3, np.float32)
        getattr(lib, f"convert_{name}")(p(values), 3, p(bits), p(back))
        right = right and back.tolist() == [1.0, -2.5, big if name == "bf16" else np.inf]
        half = np.float16 if name == "f16" else None
        q = np.zeros((2, 1), np.uint16)
        v = np.array([2.0, 4.0], np.float32).astype(half) if half else np.array([0x4000, 0x4080], np.uint16)
        bias = np.array([[0, np.log(3)], [0, np.log(3)]], np.float32)
        mixed = np.full(2, 0xFFFF, np.uint16)
        cols, diag2, first2 = (np.full(2, np.nan, np.float32) for _ in range(3))
        tau2 = np.full(1, np.nan, np.float32)
        strides = (ctypes.c_int64 * 12)(2, 2, 1, 2, 2, 1, 2, 2, 1, 0, 0, 2)
        status = getattr(lib, f"attention_{name}")(
            p(q),
            p(q),
            p(v),
            None,
            p(bias),
            strides,
            1,
            1,
            2,
            1,
            1,
            0,
            1.0,
            p(mixed),
            p(cols),
            p(diag2),
            p(first2),
            p(tau2),
            1,
        )
        got_bits = mixed.tolist()
        got = (
            mixed.view(np.float16).astype(np.float32)
            if half
            else (mixed.astype(np.uint32) << 16).view(np.float32)
        )
        right = right and status == 0 and got.tolist() == [3.5, 3.5] and np.allclose(cols, [0.5, 1.5])
        # a log token size that is not finite: refused before anything is written
        log_s = np.array([0.0, -np.inf], np.float32)
        refused = getattr(lib, f"attention_{name}")(
            *map(p, (q, q, v, log_s)),
            None,
            strides,
            1,
            1,
            2,
            1,
            1,
            0,
            1.0,
            *map(p, (mixed, cols, diag2, first2, tau2)),
            1,
        )
        right = right and refused == BAD_LOG_SIZE and mixed.tolist() == got_bits
    if not right:
        raise OSError("the compiled library gave wrong answers in its self-test")


def load() -> ctypes.CDLL:
    """The compiled library, from the user's cache when it can be trusted (``untrusted``) and is
    intact, else built anew; where the cache cannot be trusted, built in a private temporary
    directory for this process."""
    global NOTE
    cc = _compiler()
    name = f"cpu_kernels-{_key(cc)}.so"
    directory = cache_dir()
    why = "no home directory" if directory is None else None
    if directory is not None:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            why = untrusted(directory)
        except OSError as e:
            why = f"{directory} cannot be created ({e.strerror})"
    if why is not None:
        private = Path(tempfile.mkdtemp(prefix="gtp_ref-"))  # 0700, this process's own
        problem = untrusted(private)
        if problem:
            raise OSError(
                f"no private place to build the library: the cache is not usable ({why}) and {problem}"
            )
        NOTE = (
            f"built in {private} for this process: the cache{' ' + str(directory) if directory else ''} "
            f"is not used ({why})"
        )
        warnings.warn(f"gtp_ref.backends.fast: the compiled CPU kernels are {NOTE}", stacklevel=4)
        try:  # the directory goes once the library is loaded (the process keeps its mapping)
            return _checked(_compile(cc, private, name))
        finally:
            shutil.rmtree(private, ignore_errors=True)
    target = directory / name
    if not _intact(target):
        return _checked(_compile(cc, directory, name))
    try:
        return _checked(target)
    except (OSError, AttributeError):  # a library that does not work: built anew and replaced, ...
        _compile(cc, directory, name)
    # ... and loaded from a private copy: this process has the broken one open under that path,
    # and loading the same path again would hand it back
    private = Path(tempfile.mkdtemp(prefix="gtp_ref-"))
    try:
        shutil.copy2(target, private / name)
        return _checked(private / name)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def _checked(path: Path) -> ctypes.CDLL:
    lib = _bind(path)
    _self_test(lib)
    return lib
