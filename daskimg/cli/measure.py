"""``daskimg bench``: the loader's throughput on this machine against the raw read limit,
and the codecs compared."""

from __future__ import annotations

import argparse

__all__ = ["bench_cmd"]


def bench_cmd(args: argparse.Namespace) -> int:
    from ..bench import (
        CodecResult,
        bench_store,
        compare_codecs,
        measure_hdf5,
        recommend,
        sample_count,
        size_summary,
    )

    ok = True
    for cold in (False, True) if args.cold else (False,):
        res = bench_store(
            args.store,
            batch_size=args.batch_size,
            epochs=args.epochs,
            threads=args.threads,
            cold=cold,
        )
        cache = "cold: from disk" if cold else "warm: page cache"
        print(f"[{cache}]")
        print(
            f"  raw read + decompress limit ({args.threads} threads): {res['limit']:,.0f} samples/s"
        )
        print(
            f"  BatchIterator, shuffled: {res['rate']:,.0f} samples/s "
            f"({res['ratio']:.2f} of the limit, median of per-epoch ratios); "
            f"first batch after {res['first_batch_s'] * 1000:.0f} ms"
        )
        if args.target:
            keeps = res["rate"] >= args.target
            ok = ok and keeps
            print(
                f"  target {args.target:,.0f} img/s: {'keeps up' if keeps else 'DOES NOT keep up'} "
                f"({res['rate'] / args.target:.2f}x)"
            )
    if not (args.codecs or args.codec_list is not None or args.goal is not None):
        return 0 if ok else 1

    # --codecs: HDF5 LZF first (for comparison), then a row per codec as it is measured
    n, total = sample_count(args.store, args.samples)
    print(
        f"\ncodecs, each re-encoded from the first {n} of the store's {total} samples "
        f"({'all of them' if n == total else 'the whole store projected from them'}); "
        "shuffled samples/s from the page cache (warm) and from disk (cold), "
        "samples/s written:",
        flush=True,
    )
    print(
        f"  {'codec':9s} {'ratio':>7s} {'warm':>9s} {'cold':>9s} {'write':>8s} {'PSNR':>9s}"
        "  whole store"
    )
    hdf5 = None
    try:
        lzf = measure_hdf5(args.store, samples=args.samples)
    except ImportError as e:
        print(f"  {'hdf5-lzf':9s} not measured: {e}")
    else:
        hdf5 = lzf
        print(
            f"  {'hdf5-lzf':9s} {lzf.ratio:6.2f}x {'-':>9s} {'-':>9s} {lzf.write:8,.0f} "
            f"{'lossless':>9s}  {lzf.store_bytes / 2**30:.3f} GiB  "
            f"(h5py, {lzf.chunk_len} samples a chunk: for comparison)",
            flush=True,
        )

    def progress(codec: str, r: CodecResult | None) -> None:
        if r is None:  # starting: the row is finished when it is measured
            print(f"  {codec:9s}", end="", flush=True)
            return
        lossless = r.psnr == float("inf") and not r.codec.startswith("jpeg")
        psnr = "lossless" if lossless else f"{r.psnr:.1f} dB"
        print(
            f" {r.ratio:6.2f}x {r.warm:9,.0f} {r.cold:9,.0f} {r.write:8,.0f} {psnr:>9s}  "
            f"{r.store_bytes / 2**30:.3f} GiB",
            flush=True,
        )

    rows = compare_codecs(
        args.store,
        codecs=list(args.codec_list or ()) or None,
        samples=args.samples,
        batch_size=args.batch_size,
        epochs=max(1, min(args.epochs, 2)),
        threads=args.threads,
        progress=progress,
    )
    print(f"smallest lossless: {size_summary(rows, hdf5)}")
    goal = args.goal or "speed"
    rec = recommend(rows, target=args.target, goal=goal, hdf5=hdf5)
    print(f"recommended: {rec.text}")
    if goal == "speed":
        smallest = recommend(rows, target=args.target, goal="size", hdf5=hdf5)
        if smallest.codec != rec.codec:
            print(f'for the smallest store: --goal size ("{smallest.codec}")')
    if rec.meets_target is not None:
        ok = rec.meets_target
    return 0 if ok else 1
