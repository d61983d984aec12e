#!/usr/bin/env python3
"""Per-request profile of each proxy of the pair, from the FEW and MANY runs of tests/bench/callgrind.sh.

callgrind.sh prints the pair's instructions per request; this says where they go. For each proxy (the
client side and the server side, told apart by the config on its command line) it runs callgrind_annotate
on the FEW and the MANY run, subtracts per function and divides by the request difference, so start-up
and shutdown (aws-lc's entropy seeding alone is ~400M instructions) cancel out:

    per request (function) = (cost at MANY - cost at FEW) / (MANY - FEW)

It prints, per side: the total, the cost by area (the crate or library the function belongs to), the
functions with the most exclusive cost (their own instructions) and the most inclusive cost (with what
they call). Inclusive figures of recursive or re-entered functions (async poll chains) can exceed the
total; read them as "under this frame", not as shares that add up.

Usage: callgrind_profile.py [--top N] [--callers NAME]... [OUT [FEW [MANY]]]
  OUT, FEW, MANY: callgrind.sh's (default target/bench/callgrind, 200, 2200)
  --top N: functions per table [25]
  --callers NAME: also list, per request, who calls the functions whose name contains NAME (e.g.
  __memcpy_avx_unaligned_erms: which moves of futures and buffers the copying is)
Needs callgrind_annotate (valgrind).
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import subprocess
import sys

LINE = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?)(?: \[([^\]]*)\])?$")

# Areas, matched in order against the function's name (after the wrappers below are peeled off), then
# its object file. The first crate named in a symbol is the one whose code it is, generics aside.
AREAS = [
    ("allocator", r"^(malloc|free|cfree|realloc|calloc|_int_malloc|_int_free|_int_realloc|malloc_consolidate|"
                  r"tcache_|__libc_malloc|__libc_free|__libc_realloc|__libc_calloc|unlink_chunk|"
                  r"__rust_alloc|__rust_dealloc|__rust_realloc|__rdl_|alloc::alloc::|_rjem_|je_|mi_|_mi_)"),
    ("memcpy/memset", r"^(__mem|mem(cpy|move|set|cmp)|__memcpy|__memmove|__memset|__memcmp|bcmp)"),
    ("crypto (aws-lc)", r"^(aws_lc|aes_|gcm_|GFp|aesni|_aesni|ecp_nistz|bn_|sha|EVP_|CRYPTO_|OPENSSL_|"
                        r"x25519|ChaCha|poly1305|aws_lc_0_)"),
    ("h2", r"^h2::"),
    ("hyper", r"^hyper::"),
    ("hyper-util", r"^hyper_util::"),
    ("http (HeaderMap)", r"^http::"),
    ("http-body", r"^http_body(_util)?::"),
    ("rustls", r"^rustls::"),
    ("tokio-rustls", r"^tokio_rustls::"),
    ("tokio", r"^tokio::"),
    ("tokio-util", r"^tokio_util::"),
    ("bytes", r"^bytes::"),
    ("tracing", r"^tracing(_core|_subscriber)?::"),
    ("prometheus-client", r"^prometheus_client::"),
    ("weft-proxy", r"^weft_proxy::"),
    ("weft-certs", r"^weft_certs::"),
    ("futures", r"^futures_(util|core|channel)::"),
    ("tower", r"^tower::"),
    ("std (core/alloc/std)", r"^(core|alloc|std|hashbrown)::"),
    ("libc (syscall wrappers etc.)", r"^(__|epoll|read|write|recv|send|clock_gettime|syscall|pthread|futex)"),
]
AREA_RES = [(name, re.compile(rx)) for name, rx in AREAS]


def area(func: str, obj: str) -> str:
    name = func
    # Peel generic wrappers so `core::ptr::drop_in_place<h2::...>` counts as h2's, `<hyper::X as Y>` as hyper's.
    for _ in range(4):
        m = re.match(r"^(core::ptr::drop_in_place<|<|&|\*mut |\*const |mut |dyn |core::ptr::drop_in_place::<)(.*)$", name)
        if not m:
            break
        name = m.group(2)
    for label, rx in AREA_RES:
        if rx.search(name):
            return label
    if "libc.so" in obj:
        return "libc (syscall wrappers etc.)"
    if "ld-linux" in obj or "vgpreload" in obj:
        return "loader/valgrind"
    return "other"


def annotate(path: str, inclusive: bool) -> dict[str, tuple[int, str]]:
    args = ["callgrind_annotate", f"--inclusive={'yes' if inclusive else 'no'}", "--threshold=100",
            "--auto=no", path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    costs: dict[str, list] = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m or "PROGRAM TOTALS" in line:
            continue
        cost = int(m.group(1).replace(",", ""))
        fileline, obj = m.group(2), m.group(3) or ""
        func = fileline.split(":", 1)[1] if ":" in fileline else fileline
        # One function can show under several files (inlined code); its cost is the sum.
        slot = costs.setdefault(func, [0, obj])
        slot[0] += cost
    return {k: (v[0], v[1]) for k, v in costs.items()}


def summary(path: str) -> int:
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("summary:"):
                return int(line.split()[1])
    return 0


def side_of(path: str) -> str:
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("cmd:"):
                return "client" if "client.yaml" in line else "server" if "server.yaml" in line else "?"
    return "?"


def files(run_dir: str) -> dict[str, str]:
    return {side_of(p): p for p in glob.glob(os.path.join(run_dir, "cg.*"))}


def per_request(few: dict, many: dict, n: int) -> dict[str, tuple[float, str]]:
    out = {}
    for k in set(few) | set(many):
        b, obj = many.get(k, (0, ""))
        a, obj_a = few.get(k, (0, ""))
        out[k] = ((b - a) / n, obj or obj_a)
    return out


CALLER = re.compile(r"^\s*([\d,]+) \(\s*[\d.]+%\)\s+([*<>])\s+(.*?)(?: \(\d+x\))?(?: \[[^\]]*\])?$")


def callers(path: str, target: str) -> collections.Counter:
    """Cost of the calls into functions named like `target`, by caller (callgrind_annotate --tree=caller)."""
    args = ["callgrind_annotate", "--tree=caller", "--threshold=100", "--auto=no", path]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    res: collections.Counter = collections.Counter()
    block: list[tuple[int, str]] = []
    for line in out.splitlines():
        m = CALLER.match(line)
        if not m:
            block = []
            continue
        cost, kind, name = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        if kind == "*":
            if target in name:
                for c, caller in block:
                    res[caller] += c
            block = []
        elif kind == "<":
            block.append((cost, name.split(":", 1)[1] if ":" in name else name))
    return res


# Frames every task runs under (the runtime, threads, poll adaptors): 100% inclusive, nothing learnt.
ROOTS = re.compile(r"^(<?(tokio::runtime|std::|core::ops|core::future|core::pin|<core::pin|<core::future)|start_thread|main$|weft_proxy::main$|\(below main\)|__libc_start|0x[0-9a-f]+$)")


def table(title: str, rows: list[tuple[str, float]], total: float) -> None:
    print(f"\n{title}")
    for name, v in rows:
        print(f"  {v:9,.0f}  {100 * v / total:5.1f}%  {name[:140]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out", nargs="?", default="target/bench/callgrind")
    ap.add_argument("few", nargs="?", type=int, default=200)
    ap.add_argument("many", nargs="?", type=int, default=2200)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--callers", action="append", default=[])
    opts = ap.parse_args()
    out, few_n, many_n, top = opts.out, opts.few, opts.many, opts.top
    n = many_n - few_n
    few_files, many_files = files(f"{out}/run-{few_n}"), files(f"{out}/run-{many_n}")
    pair_total = 0.0
    for side in ("client", "server"):
        if side not in few_files or side not in many_files:
            print(f"no {side}-side callgrind file in {out}/run-{few_n} and run-{many_n}", file=sys.stderr)
            return 1
        total = (summary(many_files[side]) - summary(few_files[side])) / n
        pair_total += total
        excl = per_request(annotate(few_files[side], False), annotate(many_files[side], False), n)
        incl = per_request(annotate(few_files[side], True), annotate(many_files[side], True), n)
        print(f"\n=== {side} side: {total:,.0f} instructions per request ===")
        by_area: collections.Counter = collections.Counter()
        for func, (v, obj) in excl.items():
            by_area[area(func, obj)] += v
        table("by area (exclusive)", by_area.most_common(), total)
        table(f"top {top} functions, exclusive", [(k, v) for k, (v, _) in
                                                  sorted(excl.items(), key=lambda kv: -kv[1][0])[:top]], total)
        inner = [(k, v) for k, (v, _) in incl.items() if not ROOTS.match(k)]
        table(f"top {top} functions, inclusive (runtime and thread frames left out)",
              sorted(inner, key=lambda kv: -kv[1])[:top], total)
        for name in opts.callers:
            a, b = callers(few_files[side], name), callers(many_files[side], name)
            rows = sorted(((k, (b[k] - a[k]) / n) for k in set(a) | set(b)), key=lambda kv: -kv[1])
            table(f"callers of {name}", rows[:top], total)
    print(f"\npair: {pair_total:,.0f} instructions per request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
