"""Regenerate the golden files after an intended change, for review.

    python tests/regen_goldens.py        # then: git diff tests/

The tests themselves only compare with the goldens and never write them, so
a golden changes only when someone runs this and commits the reviewed diff.
"""

from __future__ import annotations

import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parent / "unit"


def main() -> int:
    sys.path[:0] = [str(UNIT / "policy")]
    import test_policy_nft

    written = []
    for case in sorted(test_policy_nft.CASES):
        path = test_policy_nft.GOLDEN / f"{case}.nft"
        path.write_text(test_policy_nft.rendered(case))
        written.append(path)
    for path in written:
        print(path.relative_to(UNIT.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
