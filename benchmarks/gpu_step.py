"""Steady-state time of one retrieval training step, and the kernel floor it is compared with.

    python -m benchmarks.gpu_step [--batch-size 2048] [--steps 200] [--device cuda]
                                  [--kinds eager graphs compile] [--data-dir DIR] [--out DIR]

Each step kind (``torch_impl.train.make_step``: ``eager``; ``compile``, the forward pass and the
loss ``torch.compile``d; ``graphs``, the whole step captured as one CUDA graph; ``graphs-bf16``)
trains a fresh retrieval model of the seed configuration on ml-100k batches of
``--batch-size`` rows (full batches only). After a warm-up (capture, compilation, allocator),
``--steps`` steps are timed in blocks of 20 between device synchronisations; the figure is the
median block time per step.

The floors (CUDA only): the summed device time of the kernels one step launches, from
``torch.profiler`` (every kernel, memset and copy, one after another with no gap and no launch
cost): ``floor`` for the eager step's kernels, ``floor-compiled`` for those of the compiled
step (inductor fuses the elementwise chains, so fewer and larger kernels). It is what the same
forward + backward + update takes as one chain of these kernels with the host out of the way;
a hand-written fused chain could beat it only by launching fewer kernels or moving fewer bytes
than these do (the top kernels are listed). ``x floor`` = step time / ``floor`` (issue 12's
target: at most 2 for the steady-state step at batch 2,048).

Prints a table and writes ``gpu_step.json``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from twostage import env, io
from twostage.config import Config

KINDS = ("eager", "compile", "graphs", "graphs-bf16", "graphs-compile")
BLOCK = 20  # steps between two device synchronisations


def _config(kind: str, base: Config) -> Config:
    return base.replace(compile=kind.endswith("compile"), cuda_graphs=kind.startswith("graphs"),
                        precision="bf16" if kind.endswith("bf16") else "fp32")


def _parts(dataset, config: Config):
    import torch
    from torch_impl.models import build_retrieval_model
    from torch_impl.train import make_step, retrieval_parts

    torch.manual_seed(config.seed)
    model = build_retrieval_model(dataset.spec, config, device=torch.device(config.train.device))
    parts, train = retrieval_parts(model, dataset, config, validate=False)
    return parts, make_step(parts, train, config, config.train.batch_size)


def _batches(n: int, batch_size: int, count: int, device: str, seed: int) -> list:
    """``count`` full batches of positions into the training split, on ``device``."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    per_epoch = n // batch_size
    out = []
    while len(out) < count:
        order = torch.randperm(n, generator=gen)[:per_epoch * batch_size]
        out += list(order.to(device).split(batch_size))
    return out[:count]


def _sync(device: str) -> None:
    import torch
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def step_seconds(step, batches: list, device: str, warmup: int) -> list[float]:
    """Per-step seconds of each block of :data:`BLOCK` steps, after ``warmup`` steps."""
    for rows in batches[:warmup]:
        step(rows)
    _sync(device)
    blocks = []
    timed = batches[warmup:]
    for start in range(0, len(timed) - BLOCK + 1, BLOCK):
        t = time.perf_counter()
        for rows in timed[start:start + BLOCK]:
            step(rows)
        _sync(device)
        blocks.append((time.perf_counter() - t) / BLOCK)
    return blocks


def kernel_floor(step, batches: list, top: int = 8) -> dict:
    """Summed device time of every kernel, memset and copy of one step (CUDA), the mean over
    ``batches``: the step with no launch cost and no gap between kernels -> {"step_s", "kernels"
    (launches per step), "top": the ``top`` costliest kernels [name, ms per step, calls]}."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    for rows in batches[:3]:  # warm (cuBLAS handles, allocator)
        step(rows)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for rows in batches:
            step(rows)
        torch.cuda.synchronize()
    rows = []
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", getattr(event, "self_cuda_time_total", 0.0))
        if us > 0:
            rows.append((event.key[:70], us * 1e-3 / len(batches), event.count / len(batches)))
    rows.sort(key=lambda r: -r[1])
    return {"step_s": sum(r[1] for r in rows) * 1e-3,
            "kernels": sum(r[2] for r in rows), "top": rows[:top]}


def measure(dataset, base: Config, kinds: list[str], steps: int) -> dict:
    device = base.train.device
    n = len(dataset.split.train)
    if n < base.train.batch_size:
        raise SystemExit(f"the training split has {n} rows, fewer than one batch of "
                         f"{base.train.batch_size}; use a smaller --batch-size")
    warmup = 10
    batches = _batches(n, base.train.batch_size, warmup + steps, device, base.seed)
    out: dict = {}
    for kind in kinds:
        print(f"measuring {kind} ...", file=sys.stderr)
        t = time.perf_counter()
        _, step = _parts(dataset, _config(kind, base))
        blocks = step_seconds(step, batches, device, warmup)
        out[kind] = {"step_s": statistics.median(blocks), "blocks": blocks,
                     "setup_and_warmup_s": time.perf_counter() - t - sum(blocks) * BLOCK}
    if device.startswith("cuda"):  # the kernels of the eager step, and of the compiled one
        for kind, name in (("eager", "floor"), ("compile", "floor-compiled")):
            if kind == "eager" or any(k.endswith("compile") for k in kinds):
                _, step = _parts(dataset, _config(kind, base))
                out[name] = kernel_floor(step, batches[:BLOCK])
    return out


def table(results: dict) -> str:
    floor = results.get("floor", {}).get("step_s")
    lines = [f"{'step':<14}{'ms/step':>10}{'x floor':>9}{'setup s':>9}", "-" * 42]
    for kind, r in results.items():
        ratio = f"{r['step_s'] / floor:.2f}" if floor and kind != "floor" else "-"
        setup = f"{r['setup_and_warmup_s']:.1f}" if "setup_and_warmup_s" in r else "-"
        lines.append(f"{kind:<14}{r['step_s'] * 1e3:>10.3f}{ratio:>9}{setup:>9}")
    if floor is None:
        lines.append("floor: not measured (needs a CUDA device and its profiler)")
    for name in ("floor", "floor-compiled"):
        if name in results:
            r = results[name]
            lines.append(f"{name}: {r['kernels']:.0f} kernels a step; costliest (ms a step, "
                         "calls):")
            lines += [f"  {ms:8.4f} {calls:5.1f}  {key}" for key, ms, calls in r["top"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_step", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--steps", type=int, default=200, help=f"timed steps (blocks of {BLOCK})")
    p.add_argument("--device", default="cuda")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=["eager", "graphs"])
    p.add_argument("--out", default="runs/gpu_step")
    args = p.parse_args(argv)
    if args.steps < BLOCK:
        p.error(f"--steps must be >= {BLOCK}")
    env.setup_process()
    import torch
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device visible to torch here; use --device cpu")
    if not args.device.startswith("cuda") and any(k.startswith("graphs") for k in args.kinds):
        p.error("--kinds graphs needs --device cuda (CUDA graphs)")
    from twostage.dataset import load_dataset

    base = Config.of(data_dir=args.data_dir, batch_size=args.batch_size, device=args.device,
                     quiet=True)
    dataset = load_dataset(base, progress=False)
    results = measure(dataset, base, args.kinds, args.steps)
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    report = {"device": name, "torch": torch.__version__, "batch_size": args.batch_size,
              "steps": args.steps, "date": time.strftime("%Y-%m-%d %H:%M"), "results": results}
    print(f"retrieval step at batch {args.batch_size} on {name} (median of "
          f"{args.steps // BLOCK} blocks of {BLOCK} steps)")
    print(table(results))
    print(f"wrote {io.write_json(Path(args.out) / 'gpu_step.json', report)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
