"""How well a latency lookup table predicts measured latency, on random members of the MnasNet space.

The members are drawn from the library's MnasNet space (``effml.search.spaces.catalog.mnasnet_space``:
the factorized hierarchical space of arXiv 1807.11626 as Google released it; per block conv or
MBConv, expansion, kernel, SE, filters, repeats), the space ``effml search`` searches. The table
holds every distinct layer of the sampled networks (as a table over a search space holds all of its
layers), its overhead is calibrated on some networks, and the others are measured end to end and
compared with the prediction. Prints the median, p90 and max absolute % error per runtime.

Usage: python benchmarks/latency_table_accuracy.py [--networks 30] [--calibration 10]
       [--resolution 96] [--runtimes eager,onnxruntime] [--threads 1] [--seed 0] [--rounds 50]
       [--json F] [--save-tables DIR]
(onnxruntime: every distinct layer is exported with the dynamo exporter, seconds each; use a few
networks.)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _timing import machine  # noqa: E402

from effml.measure.latency_table import Settings, build_latency_table, validate_table  # noqa: E402
from effml.search.spaces.catalog import mnasnet_space  # noqa: E402
from effml.spec import NetworkSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--networks", type=int, default=30, help="validation networks (held out of calibration)")
    ap.add_argument("--calibration", type=int, default=10, help="networks that calibrate the overhead")
    ap.add_argument("--resolution", type=int, default=96)
    ap.add_argument("--runtimes", default="eager")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=Settings().rounds, help="interleaved calls per part")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--save-tables", type=Path, default=None, help="folder to save each table in")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    space = mnasnet_space(resolution=args.resolution)
    seen: set[NetworkSpec] = set()
    members: list[NetworkSpec] = []
    while len(members) < args.networks + args.calibration:
        spec = space.random_member(rng).spec
        if spec not in seen:
            seen.add(spec)
            members.append(spec)
    calibration, validation = members[:args.calibration], members[args.calibration:]

    print(f"machine: {machine()}")
    print(f"{len(validation)} validation + {len(calibration)} calibration networks at "
          f"{args.resolution} px, {args.threads} thread(s), batch 1, seed {args.seed}")
    results = {}
    for runtime in args.runtimes.split(","):
        start = time.perf_counter()
        last = [0.0]

        def progress(done: int, total: int, what: str) -> None:
            if time.perf_counter() - last[0] > 20:
                last[0] = time.perf_counter()
                print(f"  [{runtime} {time.perf_counter() - start:5.0f}s] {what}", flush=True)

        table = build_latency_table(validation, runtime=runtime, threads=args.threads,
                                    calibration_specs=calibration, validation_specs=validation,
                                    settings=Settings(rounds=args.rounds), progress=progress)
        built = time.perf_counter() - start
        v = table.validation
        later = validate_table(table, validation, progress=progress)  # re-measured: sees the drift too
        if args.save_tables:
            table.save(args.save_tables / f"latency_table_{runtime}.json")
        measured = sorted(v.measured_ms)
        print(f"{runtime}: {len(table.entries)} distinct parts, table built in {built:.0f}s "
              f"(+{time.perf_counter() - start - built:.0f}s re-validation); networks "
              f"{measured[0]:.2f}-{measured[-1]:.2f} ms; overhead {table.overhead_ms:+.3f} ms "
              f"(calibration residuals {min(table.calibration.residuals_ms):+.3f}.."
              f"{max(table.calibration.residuals_ms):+.3f})")
        for name, val in (("same rounds as the table", v), ("re-measured after", later)):
            signed = sorted((p - m) / m * 100 for p, m in zip(val.predicted_ms, val.measured_ms))
            print(f"{runtime} ({name}): abs error median {val.median_abs_pct:.2f}%  p90 "
                  f"{val.p90_abs_pct:.2f}%  max {val.max_abs_pct:.2f}%  (n={val.n}); signed "
                  f"{signed[0]:+.1f}%..{signed[-1]:+.1f}%, median {signed[len(signed) // 2]:+.1f}%")
        results[runtime] = {"entries": len(table.entries), "overhead_ms": table.overhead_ms,
                            "validation": vars(v),
                            "revalidation": vars(later), "build_s": built}
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "machine": machine(), "results": results}, indent=1, default=list))


if __name__ == "__main__":
    main()
