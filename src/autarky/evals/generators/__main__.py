import sys
from pathlib import Path

from autarky.evals.generators import write_suites
from autarky.evals.suite import bundled_root, load_suite

root = Path(sys.argv[1]) if len(sys.argv) > 1 else bundled_root()
for folder in write_suites(root):
    print(f"{folder}: {len(load_suite(folder).items)} items")
