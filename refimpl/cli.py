"""The ``refimpl`` command: ``list``, ``check``, ``bench``, ``demo``.

``refimpl check`` runs every registry op on every available backend against the reference and
prints max abs/rel errors per op x backend x dtype; it exits 1 on any mismatch.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import sys
from collections import defaultdict

import backends
from refimpl import _harness as H
from refimpl import _ops


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = lambda r: "  ".join(str(x).ljust(w) for x, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


class Progress:
    """A one-line progress bar on stderr (silent when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool | None = None):
        self.total, self.done = max(total, 1), 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled

    def __call__(self, label: str) -> None:
        self.done += 1
        if self.enabled:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} "
                             f"{label[:60]:<60}")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 110 + "\r")
            sys.stderr.flush()


def _backend_lines() -> list[str]:
    out = []
    for name, why in backends.available().items():
        if why is None:
            out.append(f"  {name:<11} available: {backends.get(name).describe()}")
        else:
            out.append(f"  {name:<11} unavailable: {why}")
    return out


def cmd_list(args) -> int:
    rows = [[op.name, op.family, op.paper, op.grad_of or "", ",".join(op.wrt),
             "host solve" if op.host_solver else "", op.doc] for op in _ops.select(args.op, args.family)]
    print(_table(["op", "family", "arXiv", "gradient of", "autograd wrt", "note", "what"], rows))
    print("\nbackends:")
    print("\n".join(_backend_lines()))
    return 0


def _ops_from(args) -> list[_ops.Op]:
    for name in args.op or ():
        _ops.get(name)  # unknown names are an error, not an empty run
    ops = _ops.select(args.op, args.family)
    if not ops:
        raise SystemExit(f"no op matches --op {args.op} --family {args.family}")
    return ops


def cmd_check(args) -> int:
    ops = _ops_from(args)
    names = args.backend or list(backends.NAMES)
    total = sum(len(H.cases(op, args.scale or H.default_scale(n)))
                * len([d for d in H.run_dtypes(op, backends.get(n)) if not args.dtype or d in args.dtype])
                for n in names if backends.reason(n) is None for op in ops)
    print("backends:\n" + "\n".join(_backend_lines()) + "\n")
    bar = Progress(total)
    rows, skipped = H.check(ops, names, scale=args.scale, dtypes=args.dtype, progress=bar)
    bar.close()
    groups = defaultdict(list)
    for r in rows:
        groups[(r.op, r.backend, r.dtype)].append(r)
    table = []
    for (op, bk, dt), rs in groups.items():
        if rs[0].note == H.MISSING:
            table.append([op, bk, "-", 0, "-", "-", "missing", "not offered by this backend"])
            continue
        ok = all(r.ok for r in rs)
        host = " (host solve)" if _ops.get(op).host_solver and bk != "numpy" else ""
        host += " (simulator)" if bk.startswith("numba_cuda") and backends.simulator() else ""
        notes = "; ".join(sorted({f"{r.case}/{r.output}: {r.note or 'out of tolerance'}"
                                  for r in rs if not r.ok}))[:200]
        table.append([op, bk + host, dt, len({r.case for r in rs}), f"{max(r.max_abs for r in rs):.2e}",
                      f"{max(r.max_rel for r in rs):.2e}", "pass" if ok else "FAIL", notes])
    print(_table(["op", "backend", "dtype", "cases", "max abs err", "max rel err", "result", "detail"],
                 table))
    for name, why in skipped.items():
        print(f"{name}: not checked — {why}")
    n_bad = sum(1 for r in table if r[6] == "FAIL")
    n_missing = sum(1 for r in table if r[6] == "missing")
    print(f"\n{len(table) - n_bad - n_missing} passed, {n_bad} failed, {n_missing} missing "
          f"({len(rows)} comparisons; backends skipped: {', '.join(skipped) or 'none'})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps([r.__dict__ for r in rows], indent=1, default=str))
    return 1 if n_bad else 0


def cmd_bench(args) -> int:
    ops = _ops_from(args)
    names = [n for n in (args.backend or backends.NAMES) if backends.reason(n) is None]
    if "numba_cuda" in names and backends.simulator():
        names.remove("numba_cuda")
        print("numba_cuda: not timed (the CUDA simulator measures Python, not kernels)")
    if args.full:  # forward + backward: each op's gradient partner, on the partner's own cases
        ops = list(dict.fromkeys(op if op.grad_of else H.partner(op) for op in ops))
        ops = [op for op in ops if op.grad_of]
        if not ops:
            raise SystemExit("--full: none of the selected ops has a gradient partner")
    jobs = []
    for op in ops:
        for name in names:
            bk = backends.get(name)
            scale = args.scale
            if not H.offers(bk, op):
                continue
            for case in H.cases(op, scale):
                if scale == "bench" and not H.runs_here(case, bk):
                    continue
                for dtype in H.run_dtypes(op, bk):
                    if case.runs_in(dtype) and (args.dtype is None or dtype in args.dtype):
                        jobs.append((op, bk, dtype, case))
    bar = Progress(len(jobs))
    baseline, table = {}, []
    for op, bk, dtype, case in jobs:
        bar(f"{op.name} {bk.NAME} {dtype} {case.label}")
        inputs = case.inputs()
        call = H.prepare(op, bk, dtype, inputs)
        med, iqr = H.median_time(call, repeat=args.repeat)
        if bk.NAME == "numpy":
            baseline[(op.name, case.label)] = med
        nbytes = H.compulsory_bytes(inputs, dtype, call())
        bw = H.bandwidth_of(bk)
        floor = nbytes / bw if bw else None
        ref = baseline.get((op.name, case.label))
        table.append([op.name, bk.NAME, case.label, dtype, f"{med * 1e3:.3f}", f"{iqr * 1e3:.3f}",
                      f"{nbytes / med / 1e9:.2f}", f"{floor * 1e3:.3f}" if floor else "-",
                      f"{med / floor:.1f}" if floor else "-",
                      f"{ref / med:.1f}x" if ref else "-"])
    bar.close()
    print(_table(["op", "backend", "case", "dtype", "median ms", "IQR ms", "GB/s (compulsory)",
                  "floor ms", "time/floor", "vs reference"], table))
    print("\nfloor = compulsory bytes (inputs read once, outputs written once) / device bandwidth, "
          "where known; speed-up is over the numpy reference on the same case.")
    return 0


DEMOS = ("softdtw", "ot", "squeezing", "cross-tokenizer", "inf-ssm", "causal", "antibody", "ibdr",
         "recsys-vae", "gnn-pdm", "clip-uda-ot")
DTYPE_NAMES = tuple(dict.fromkeys(d for op in _ops.OPS for d in op.dtypes))


def cmd_demo(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name.replace("-", "_")            # module and file names use underscores
    summary = importlib.import_module(f"refimpl.demos.{name}").run(out)
    print(f"wrote {out / (name + '.png')} and {out / (name + '.json')}")
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (list, dict))}
    print(json.dumps({**scalars, **summary.get("headline", {})}, indent=1, default=str))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="refimpl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def selection(sp):
        sp.add_argument("--op", action="append", help="op name (repeatable); default: all")
        sp.add_argument("--family", action="append", choices=_ops.FAMILIES, help="family (repeatable)")

    sp = sub.add_parser("list", help="ops, papers and backends")
    selection(sp)
    sp.set_defaults(func=cmd_list)

    sp = sub.add_parser("check", help="every op x backend x dtype against the reference")
    selection(sp)
    sp.add_argument("--backend", action="append", choices=backends.NAMES)
    sp.add_argument("--dtype", action="append", choices=DTYPE_NAMES)
    sp.add_argument("--scale", choices=("tiny", "small"), help="default: small (tiny in the Numba simulator)")
    sp.add_argument("--json", help="also write every comparison to this file")
    sp.set_defaults(func=cmd_check)

    sp = sub.add_parser("bench", help="quick timing table with speed-up over the reference")
    selection(sp)
    sp.add_argument("--backend", action="append", choices=backends.NAMES)
    sp.add_argument("--dtype", action="append", choices=DTYPE_NAMES)
    sp.add_argument("--scale", default="bench", choices=("tiny", "small", "bench"))
    sp.add_argument("--full", action="store_true",
                    help="time forward+backward: each selected op's gradient partner")
    sp.add_argument("--repeat", type=int, default=10)
    sp.set_defaults(func=cmd_bench)

    sp = sub.add_parser("demo", help="reproduce a paper's qualitative claim; writes NAME.png + NAME.json")
    sp.add_argument("name", choices=DEMOS)
    sp.add_argument("--out", default=".", help="output directory (default: current)")
    sp.set_defaults(func=cmd_demo)

    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
