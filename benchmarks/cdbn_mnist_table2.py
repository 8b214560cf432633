"""Lee et al. 2009 Table 2 on full MNIST: runs the ``cdbn-mnist`` recipe and records its numbers.

    python benchmarks/cdbn_mnist_table2.py [--out runs/cdbn-mnist] [--quick] [--set KEY=VALUE ...]

Prints our Table 2 beside the paper's and writes ``benchmarks/results/cdbn_mnist_table2.json``
(the recipe's results.json plus the command line). Takes tens of minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from genconv.cli import _parse_set
from genconv.device import resolve_device
from genconv.io import write_json
from genconv.recipes import load_recipe, runner


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/cdbn-mnist")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    config = load_recipe("cdbn-mnist", quick=args.quick, overrides=_parse_set(args.sets))
    config["recipe"]["resume"] = args.resume
    results = runner(config)(config, Path(args.out), device=resolve_device(args.device), seed=args.seed,
                             quick=args.quick)
    results["command"] = " ".join(["python", *sys.argv])
    name = "cdbn_mnist_table2_quick.json" if args.quick else "cdbn_mnist_table2.json"
    path = Path(__file__).parent / "results" / name
    write_json(path, results)
    print(f"wrote {path}")
    print(json.dumps(results["table2"], indent=1))


if __name__ == "__main__":
    main()
