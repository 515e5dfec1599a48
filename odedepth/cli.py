"""The `odedepth` command.

Subcommands:

- `odedepth demo`: the main job. Trains continuous-depth classifiers with learned stopping rules
  on scikit-learn's digits, evaluates them against the fixed-horizon baseline and writes plots.
- `odedepth solver-demo`: a neural ODE integrated by `solvers.ode` and by torchdiffeq side by
  side (NFE, error, time) with a work-precision plot.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="odedepth", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="train and evaluate depth-stopping rules on digits")
    p.add_argument("--out", default="outputs/demo", help="folder for plots and the results table")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a much shorter run (for smoke tests)")

    p = sub.add_parser("solver-demo", help="our ODE solver vs torchdiffeq on a neural ODE")
    p.add_argument("--out", default="outputs/solver_demo")
    p.add_argument("--quick", action="store_true")

    args = parser.parse_args(argv)
    if args.command == "demo":
        from .demos.depth import run
    else:
        from .demos.solver import run
    try:
        run(out=args.out, quick=args.quick, **({"seed": args.seed} if args.command == "demo" else {}))
    except (ValueError, OSError) as err:  # bad configuration or unwritable output
        print(f"odedepth {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
