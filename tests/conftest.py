"""Under pytest-xdist (CI: one worker per core, ``-n 2``) every test process computes with one torch
thread, and so do the commands it starts (OMP_NUM_THREADS, which torch reads at start-up).

Without this a worker's in-process training took torch's default of one thread per core, two
workers asked for four threads on two cores, and the spinning threads cost CPU time: the digits
fit of tests/test_train.py took 45 s of CPU with the default threads beside another worker and
9.7 s with one (same result, 89.7% val top-1). Tests that check a thread count is restored set
their own count first, so they do not depend on this one.
"""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
