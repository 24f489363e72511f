"""Under pytest-xdist (CI: one worker per core, ``-n 2``) every test process computes with one torch
thread, and so do the commands it starts (OMP_NUM_THREADS, which torch reads at start-up); and the
longest test files start first (LONGEST_FIRST below), so that the two workers end together.

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


# The files that take longest, longest first: CPU seconds of each in a fresh `pytest -n 2 --dist
# loadfile` on the 2-core machine (commit 0722609, other work beside it). xdist hands out files in
# order as workers free up; by default it orders them by their number of tests, which left the
# experiments (one test, 50-90 s each) for the end and one worker idle for two minutes (908 vs
# 781 s of CPU). Longest first, the last files to start are the short ones.
LONGEST_FIRST = (
    "test_mobiledet.py",  # 137 s
    "test_cli_supernet.py",  # 100
    "test_search_run.py",  # 100
    "test_spinenet.py",  # 92
    "test_experiment_mnasnet_search.py",  # 92
    "test_experiment_compound_scaling.py",  # 77
    "test_int8.py",  # 73
    "test_experiment_akd.py",  # 73
    "test_cli.py",  # 69
    "test_experiment_autohas.py",  # 69
    "test_experiment_mixnet_kernels.py",  # 68
    "test_experiment_spinenet_search.py",  # 60
    "test_experiment_mobiledet_search.py",  # 60
    "test_train.py",  # 59
    "test_cli_detect.py",  # 59
    "test_parity_timm.py",  # 57
    "test_search_scale_permuted.py",  # 56
    "test_experiment_bignas.py",  # 52
    "test_train_detection.py",  # 51
)


def pytest_configure(config):
    if config.getoption("dist", "no") != "no" and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the order below (xdist --no-loadscope-reorder)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker orders its collection the same way
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
