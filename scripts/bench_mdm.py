#!/usr/bin/env python
"""Benchmark MDM: the paper's schedule vs ours. Same as `protomdm bench`; see `protomdm bench --help`.

Examples:
  python scripts/bench_mdm.py                                             # 2 CPU cores, < 5 minutes
  python scripts/bench_mdm.py --backbone resnet18 --img-size 224 --ref-steps 100 --images 1
  python scripts/bench_mdm.py --backbone resnet50 --img-size 224 --ref-steps 2000 --device cuda --images 8
  python scripts/bench_mdm.py --backbone densenet121 --img-size 512 --ref-steps 2000 --device cuda --precision bf16
"""

import sys

from protomdm.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
