"""codegemma: CodeGemma end to end, from data to evaluation."""

import os

# Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads made a
# 2-thread decode step take 1-2 s instead of 40 ms (bench/NOTES-inference.md). Must be set
# before torch is imported; a user's own setting wins, and one who sets GOMP_SPINCOUNT (a brief
# spin, faster on an idle machine) gets no wait policy from us.
if "GOMP_SPINCOUNT" not in os.environ:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
