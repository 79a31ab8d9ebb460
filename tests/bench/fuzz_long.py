"""The fuzzers of tests/fuzz/ with many more examples than CI runs; prints JSON.

    python3 tests/bench/fuzz_long.py [EXAMPLES]     (default 2000; the operator fuzzer gets a tenth)

Runs pytest on tests/fuzz with EXPBUILD_FUZZ_EXAMPLES set, hypothesis's database on (so a failure
found here is replayed first by the next CI run on this machine), and reports the outcome and time.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    examples = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    started = time.monotonic()
    env = {**os.environ, "EXPBUILD_FUZZ_EXAMPLES": str(examples)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:warnings", "--timeout", "0",
                             "tests/fuzz", "--hypothesis-show-statistics"], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    print(json.dumps({"examples_per_property": examples, "operator_examples": max(3, examples // 10),
                      "exit_code": result.returncode, "seconds": round(time.monotonic() - started, 1),
                      "summary": result.stdout.strip().splitlines()[-1:]}, indent=2))
    if result.returncode:
        sys.stdout.write(result.stdout[-20000:])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
