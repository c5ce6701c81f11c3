"""Write the synthetic-world contact sheet shown in the README (docs/images/synthetic.png).

    python -m benchmarks.make_contact_sheet [--out docs/images/synthetic.png] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from engine.synth import contact_sheet

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "docs" / "images" / "synthetic.png"), help="PNG to write")
    p.add_argument("--seed", type=int, default=0, help="world seed (the classes of `ppssl synth --seed`)")
    p.add_argument("--tile", type=int, default=128, help="pixel size of each rendered picture")
    args = p.parse_args()
    path = contact_sheet(args.out, seed=args.seed, tile=args.tile)
    print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
