"""The random baseline of a study report: best-of-N resampling against its closed form, the MACs
ranking, the verdict sentence, the JSON and text reports, and which searches score a baseline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest

from effml.search.study.baseline import (
    baseline_config,
    baseline_name,
    best_of_n,
    compare_with_random,
    macs_pick,
    wants_baseline,
)
from effml.search.study.config import load_search_config
from effml.search.study.report import text_report, write_report
from effml.search.study.storage import load_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _exact_quantile(m: int, n: int, q: float) -> int:
    """The q-quantile (1-based rank) of the best of n draws with replacement from m distinct sorted
    scores: the smallest rank k with P(best <= k) = (k / m)^n >= q."""
    return math.ceil(m * q ** (1 / n) - 1e-12)


@pytest.mark.parametrize("m, n", [(100, 20), (40, 10), (7, 3), (1000, 1)])
def test_best_of_n_matches_its_closed_form(m, n):
    scores = np.random.default_rng(1).permutation(np.arange(1, m + 1, dtype=float))  # order must not matter
    dist = best_of_n(list(scores), n)
    assert dist.n == n and dist.resamples == 10_000 and dist.seed == 0
    for got, q in ((dist.low, 0.1), (dist.median, 0.5), (dist.high, 0.9)):
        # 10,000 draws put an empirical quantile within about one rank of the exact one
        assert abs(got - _exact_quantile(m, n, q)) <= max(1, 0.01 * m), (q, got, _exact_quantile(m, n, q))
    assert best_of_n(list(scores), n) == dist  # seeded: the same numbers every time
    assert best_of_n(list(scores), n, seed=1).seed == 1


def test_best_of_n_edge_cases():
    constant = best_of_n([0.3] * 5, 4)
    assert (constant.low, constant.median, constant.high) == (0.3, 0.3, 0.3)
    # a coin: the best of one draw is 0 or 1, half the time each
    coin = best_of_n([0.0, 1.0], 1)
    assert (coin.low, coin.high) == (0.0, 1.0)
    # members outside the target (-inf) never win; when most draws hold only those, no point
    half = best_of_n([-math.inf] * 5 + [1.0] * 5, 1)
    assert half.low is None and half.high == 1.0
    assert best_of_n([], 5).median is None and best_of_n([1.0], 0).median is None


# ---------------------------------------------------------------------------------------------
# Studies with fake scores: a strategy's study and its random baseline in one storage


def _add(study: optuna.Study, value: float, *, macs: float, cost: float, acc: float | None = None,
         cost_key: str = "latency_mmacs", values: list[float] | None = None) -> None:
    acc = value if acc is None else acc
    metrics = {"accuracy": acc, "macs": int(macs), "params": 1000, cost_key: cost,
               "reward": value if values is None else None}
    study.add_trial(optuna.trial.create_trial(values=values or [value], user_attrs={"metrics": metrics}))


def _pair(storage, strategy: str, own: list[float], random: list[tuple[float, float]] | None,
          name: str = "s") -> optuna.Study:
    """A reward study of ``own`` scores (latency = MACs in millions, T = 2) and, unless None, its
    random baseline of (score, MMACs) members."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    study.set_user_attr("objective", {"kind": "reward", "latency": "flops", "target": 2.0})
    study.set_user_attr("config", {"search": {"strategy": strategy, "space": "bignas", "trials": len(own)},
                                   "objective": {"accuracy": "supernet"}})
    for i, v in enumerate(own):
        _add(study, v, macs=1e6 + 1e4 * i, cost=1.0 + 0.01 * i)
    if random is not None:
        base = optuna.create_study(study_name=baseline_name(name), storage=storage, direction="maximize")
        base.set_user_attr("baseline_of", name)
        for v, mmacs in random:
            _add(base, v, macs=mmacs * 1e6, cost=mmacs)
    return study


# 40 random members: scores 0.01 .. 0.40 and MACs that make trial 33 (3.4 M) the largest within
# T = 2 M only after 15 (1.95 M): the most MACs within the target is member 15.
RANDOM = [(0.01 * (i + 1), 1.95 if i == 15 else (3.4 if i == 33 else 0.5 + 0.03 * i)) for i in range(40)]


def test_a_strategy_that_beats_random_beyond_its_spread():
    study = _pair(optuna.storages.InMemoryStorage(), "evolution", [0.30, 0.45, 0.20, 0.41, 0.10, 0.05, 0.33,
                                                                   0.12, 0.25, 0.44], RANDOM)
    b = compare_with_random(study, kind="reward", target=2.0, strategy="evolution", unit="M MACs")
    assert b["available"] and b["source"] == "s-random" and b["members"] == 40 and b["n"] == 10
    assert b["strategy_best"] == 0.45 and b["random_best"] == pytest.approx(0.40)
    assert b["random_scores"] == pytest.approx({"min": 0.01, "median": 0.205, "max": 0.40})
    d = b["best_of_n"]
    # best of 10 from 40 equally likely scores 0.01k: exact 10/50/90% ranks 32, 38, 40
    assert [round(d[k] * 100) for k in ("low", "median", "high")] == pytest.approx([32, 38, 40], abs=1)
    assert b["beat"] is True and b["margin"] == pytest.approx(0.45 - d["high"])
    assert b["sentence"] == (f"evolution beat random search beyond its spread: best 0.4500 is {0.45 - d['high']:.4f} "
                             f"above random's 90th percentile (random's median {d['median']:.4f}, 10-90% "
                             f"{d['low']:.4f}-{d['high']:.4f}).")
    pick = b["macs_pick"]
    assert (pick["from"], pick["trial"], pick["macs"], pick["cost"]) == ("random baseline", 15, 1_950_000, 1.95)
    assert pick["reward"] == pytest.approx(0.16) and pick["accuracy"] == pytest.approx(0.16)


def test_a_strategy_within_random_spread_did_not_beat_it():
    study = _pair(optuna.storages.InMemoryStorage(), "tpe", [0.38, 0.1, 0.2], RANDOM)
    b = compare_with_random(study, kind="reward", target=2.0, strategy="tpe", unit="M MACs")
    d = b["best_of_n"]
    assert b["beat"] is False and b["n"] == 3 and d["high"] >= 0.38
    assert b["sentence"] == (f"tpe did not beat random search beyond its spread (best 0.3800 vs random's median "
                             f"{d['median']:.4f}, 10-90% {d['low']:.4f}-{d['high']:.4f}).")


def test_without_a_baseline_the_report_says_how_to_get_one():
    study = _pair(optuna.storages.InMemoryStorage(), "evolution", [0.3, 0.1, 0.2], None)
    b = compare_with_random(study, kind="reward", target=2.0, strategy="evolution", unit="M MACs")
    assert b["available"] is False and b["source"] is None
    assert "No random baseline" in b["sentence"] and "search.baseline=on" in b["sentence"]
    assert "'s-random'" in b["sentence"] and "3 random samples" in b["sentence"]
    # the MACs ranking falls back to the study's own trials: all within T = 2, the last has the most
    assert b["macs_pick"]["from"] == "study" and b["macs_pick"]["trial"] == 2
    # a baseline study that a stopped search left empty is not a baseline either
    empty = _pair(optuna.storages.InMemoryStorage(), "evolution", [0.3, 0.1, 0.2], [])
    b = compare_with_random(empty, kind="reward", target=2.0, strategy="evolution", unit="M MACs")
    assert b["available"] is False and b["source"] == "s-random" and "--resume" in b["sentence"]


def test_a_random_study_is_its_own_baseline():
    scores = [0.01 * (i + 1) for i in range(40)]
    study = _pair(optuna.storages.InMemoryStorage(), "random", scores, None)
    b = compare_with_random(study, kind="reward", target=2.0, strategy="random", unit="M MACs")
    d = b["best_of_n"]
    assert b["source"] == "s" and b["members"] == b["n"] == 40 and b["beat"] is None
    # best of 40 drawn again from its own 40: exact 10/50/90% ranks 38, 40, 40
    assert round(d["low"] * 100) in (37, 38, 39) and d["median"] == d["high"] == pytest.approx(0.40)
    assert b["sentence"].startswith("random search is this study's own baseline: best 0.4000")


def test_accuracy_latency_studies_rank_by_accuracy_within_the_target():
    storage = optuna.storages.InMemoryStorage()
    study = optuna.create_study(study_name="m", storage=storage, directions=["maximize", "minimize"])
    base = optuna.create_study(study_name="m-random", storage=storage, directions=["maximize", "minimize"])
    for acc, lat in [(0.9, 20.0), (0.7, 9.0), (0.6, 5.0)]:  # 0.9 is over T = 10 ms: it does not count
        _add(study, acc, macs=lat * 1e6, cost=lat, cost_key="latency_ms", values=[acc, lat])
    for i in range(20):  # accuracies 0.30 .. 0.87; the odd ones are over the target
        lat = 12.0 if i % 2 else 8.0
        _add(base, 0.3 + 0.03 * i, macs=(lat + i) * 1e6, cost=lat, cost_key="latency_ms", values=[0.3 + 0.03 * i, lat])
    b = compare_with_random(study, kind="multi", target=10.0, strategy="nsga2", unit="ms")
    assert b["score"] == "accuracy within the target" and b["within_target"] == 10
    assert b["strategy_best"] == 0.7 and b["random_best"] == pytest.approx(0.3 + 0.03 * 18)
    assert b["macs_pick"]["trial"] == 18 and b["macs_pick"]["cost"] == 8.0  # most MACs among those within 10 ms
    assert "nsga2 did not beat random search" in b["sentence"] and "%" in b["sentence"]


def test_macs_pick_ties_and_no_target():
    trials = [optuna.trial.create_trial(value=0.1, user_attrs={"metrics": {"macs": m, "latency_ms": c}})
              for m, c in [(5, 1.0), (9, 3.0), (9, 2.0)]]
    assert macs_pick(trials, None).user_attrs["metrics"]["latency_ms"] == 3.0  # most MACs, earliest of a tie
    assert macs_pick(trials, 1.5).user_attrs["metrics"]["macs"] == 5
    assert macs_pick(trials, 0.5) is None


# ---------------------------------------------------------------------------------------------
# The reports, from a SQLite storage as the runner leaves it


def test_the_json_and_text_reports_carry_the_baseline(tmp_path: Path):
    db = tmp_path / "search.db"
    own = [0.30, 0.45, 0.20, 0.41, 0.10, 0.05, 0.33, 0.12, 0.25, 0.44]
    _pair(f"sqlite:///{db}", "evolution", own, RANDOM)
    study = load_study(str(db))  # the study, not its baseline (marked baseline_of)
    assert study.study_name == "s"
    report = write_report(study, tmp_path / "report")
    data = json.loads(report.json.read_text())
    direct = compare_with_random(study, kind="reward", target=2.0, strategy="evolution", unit="M MACs")
    assert data["baseline"] == json.loads(json.dumps(direct))
    assert data["strategy"] == "evolution" and data["accuracy_source"] == "supernet"
    assert [r["trial"] for r in data["best_trials"]] == sorted(range(10), key=lambda i: -own[i])
    text = text_report(data)
    d = data["baseline"]["best_of_n"]
    assert f"best of N = 10 random samples (10,000 resamples, seed 0): median {d['median']:.4f}" in text
    assert "random samples (s-random, 40 scored): best 0.4000, spread 0.0100-0.4000 (median 0.2050)" in text
    assert "ranking by MACs alone picks random baseline trial 15: 1.95 M MACs (within T = 2 M MACs)" in text
    assert text.rstrip().endswith(data["baseline"]["sentence"])
    html = report.html.read_text()
    assert "Against random search" in html and "evolution beat random search beyond its spread" in html


# ---------------------------------------------------------------------------------------------
# Which searches score a baseline


def test_the_baseline_setting(tmp_path: Path):
    def cfg(*overrides: str):
        return load_search_config(None, list(overrides))

    assert not wants_baseline(cfg("search.strategy=evolution"))  # auto, proxy training: doubling it is costly
    assert wants_baseline(cfg("objective.accuracy=supernet", f"objective.supernet={tmp_path}"))
    assert wants_baseline(cfg("search.baseline=on"))  # YAML reads on/off as booleans: taken back as words
    assert not wants_baseline(cfg("objective.accuracy=supernet", "search.baseline=off"))
    assert not wants_baseline(cfg("search.strategy=random", "search.baseline=on"))  # its own baseline
    random = baseline_config(cfg("search.study=mine", "search.seed=7", "search.strategy=tpe",
                                 "search.strategy_options={n_startup_trials: 3}", "search.trials=9"))
    s = random.search
    assert (s.study, s.strategy, s.seed, s.strategy_options, s.trials, s.baseline) == (
        "mine-random", "random", 8, {}, 9, "off")
