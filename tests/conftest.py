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


# The files that take longest, longest first: seconds of each in `pytest -n 2 --dist loadfile` on
# the 2-core machine (AMD EPYC, 2026-12-06: the full suite at d8cab44, the experiments and the
# learning tests measured again after the fork-server workers). xdist hands out files in order as
# workers free up; by default it orders them by their number of tests, which left the experiments
# (one test, 50-90 s each) for the end and one worker idle for two minutes (908 vs 781 s of CPU).
# Longest first, the last files to start are the short ones.
LONGEST_FIRST = (
    "test_readme.py",  # ~140 (new; measured with both cores busy)
    "test_cli_supernet.py",  # 116 s
    "test_spinenet.py",  # 102
    "test_search_run.py",  # 100
    "test_search_ray_cluster.py",  # ~90 (new; the other core busy)
    "test_search_drivers.py",  # ~60 (new)
    "test_mobiledet.py",  # 99
    "test_int8.py",  # ~95 (74, then the fp32 fallback's tests)
    "test_cli.py",  # 88
    "test_experiment_autohas.py",  # 71
    "test_search_scale_permuted.py",  # 69
    "test_cli_detect.py",  # 65
    "test_experiment_mnasnet_search.py",  # 62
    "test_train.py",  # 60
    "test_train_detection.py",  # 56
    "test_openvino.py",  # ~55 (new; 53 s alone)
    "test_experiment_mobiledet_search.py",  # 53
    "test_experiment_compound_scaling.py",  # 52
    "test_parity_timm.py",  # 49
    "test_experiment_akd.py",  # 49
    "test_experiment_mixnet_kernels.py",  # 48
    "test_experiment_tunas_search.py",  # 47
    "test_experiment_supernet_strategies.py",  # ~45 (new; 92 s with the other core busy)
    "test_experiment_spinenet_search.py",  # 47
    "test_experiment_mobiledet_tunas.py",  # ~45 (new; 76-86 s with both cores busy)
    "test_tunas.py",  # 43
    "test_experiment_bignas.py",  # 35
    "test_full_disk.py",  # ~40 (new)
    "test_cli_faults.py",  # ~35 (new)
    "test_search_supernet.py",  # 32
    "test_tunas_detection.py",  # ~17 (new)
    "test_detection_supernet.py",  # ~17 (new)
    "test_autohas.py",  # 31
    "test_search_detection.py",  # 29
    "test_data_faults.py",  # 27
    "test_run_dirs.py",  # 27
)


def pytest_configure(config):
    if config.getoption("dist", "no") != "no" and hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False  # keep the order below (xdist --no-loadscope-reorder)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("PYTEST_XDIST_WORKER"):  # every worker orders its collection the same way
        rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole
