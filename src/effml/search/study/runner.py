"""Running a search: one ask/tell loop, trials evaluated in parallel by local worker processes or
by Ray tasks.

The driver alone asks the strategy for trials and tells it their results, so the study reaches
exactly its trial count and no finished trial is written twice, whichever runner evaluates them;
a worker only trains and measures, and reports per-epoch accuracy to the storage for the pruner.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy

from effml.errors import EffmlError, SearchError
from effml.search.spaces.search_space import Sample, SearchSpace
from effml.search.study.baseline import baseline_config, wants_baseline
from effml.search.study.config import SearchConfig
from effml.search.study.cost import LatencyModel
from effml.search.study.detection_proxy import search_network
from effml.search.study.drivers import SURPLUS, Heartbeat, occupied, reap, surplus, tell
from effml.search.study.proxy import check_proxy, evaluate_sample
from effml.search.study.storage import (
    finished_trials,
    grace_period,
    open_storage,
    open_study,
    storage_failed,
    storage_url,
    study_exists,
)


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs to run one trial: ``network`` is what it trains (the sampled spec, or
    with ``search.detector`` the detector on it, wrapped once by the driver)."""

    cfg: SearchConfig
    sample: Sample
    network: Any
    number: int
    trial_id: int
    seed: int


# A worker's state, built at its first trial and kept for the next ones (a worker process runs
# many trials of one search, and of its random baseline): the latency model, whose latency table is
# read once. Keyed by the objective, so a worker that serves another search builds its own. (With
# objective.accuracy=supernet the supernet is cached likewise: ``supernet_proxy.supernet_accuracy``.)
_WORKER: dict[str, LatencyModel] = {}


def worker_latency_model(cfg: SearchConfig) -> LatencyModel:
    """This process's latency model for ``cfg`` (built once per worker)."""
    key = repr(cfg.objective)
    if key not in _WORKER:
        _WORKER.clear()
        _WORKER[key] = LatencyModel(cfg.objective)
    return _WORKER[key]


def run_trial(job: TrialJob) -> dict[str, Any]:
    """Train and score one trial (in a worker process or Ray task), or with
    ``objective.accuracy=supernet`` score it as a supernet child; per-epoch accuracy goes to the
    study storage so that the pruner can stop it."""
    import torch

    cpu_start = time.process_time()  # this worker's CPU (all its threads), which its driver cannot see
    torch.set_num_threads(job.cfg.search.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report: Callable[[int, float], bool] | None = None
    if job.cfg.search.pruner != "none":
        from effml.search.study.storage import make_pruner

        study = optuna.load_study(study_name=job.cfg.search.study, storage=open_storage(job.cfg.search.storage),
                                  pruner=make_pruner(job.cfg.search.pruner))
        trial = optuna.trial.Trial(study, job.trial_id)

        def to_pruner(epoch: int, accuracy: float) -> bool:
            if math.isfinite(accuracy):
                trial.report(accuracy, epoch)
            return trial.should_prune()

        report = to_pruner

    accuracy = None  # the proxy training
    if job.cfg.objective.accuracy == "supernet":
        from effml.search.study.supernet_proxy import supernet_accuracy

        accuracy = supernet_accuracy(job.cfg)
    outcome = evaluate_sample(job.cfg, job.sample, job.network, job.seed, worker_latency_model(job.cfg), report,
                              accuracy)
    return {"values": outcome.values, "metrics": outcome.metrics, "duration_s": outcome.duration_s,
            "cpu_s": time.process_time() - cpu_start, "pruned": outcome.pruned, "history": outcome.history}


def _exit_with_parent() -> None:
    """A worker whose search was killed (``kill -9`` leaves no one to stop it) exits at once instead
    of training on for nobody: its parent process's sentinel (a pipe the search holds) closes."""
    parent = multiprocessing.parent_process()

    def watch() -> None:
        if parent is not None:
            parent.join()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="effml-parent-watch").start()


class LocalExecutor:
    """``workers`` processes on this machine, forked from a fork server (Python's ``forkserver``
    start method): a single-threaded process started once per search driver that has imported
    this module (torch and effml) and computed nothing, so a worker inherits no threads or locks
    and every search after the first starts its workers in milliseconds instead of importing torch
    again (about 3 s of CPU per worker with ``spawn``). The fork server keeps the environment it
    started with: set ``OMP_NUM_THREADS`` and the like before the first search of a process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        return ProcessPoolExecutor(self.workers, mp_context=context, initializer=_exit_with_parent)

    def submit(self, job: TrialJob) -> Future:
        """Start one trial (on a fresh pool if a worker died, e.g. killed for memory)."""
        try:
            return self.pool.submit(run_trial, job)
        except BrokenProcessPool:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._start()
            return self.pool.submit(run_trial, job)

    def close(self) -> None:
        """Stop the workers now (a running trial is abandoned) and wait until they are gone. Left to
        the pool's shutdown sentinels, an idle worker could wait forever when this driver is itself
        a multiprocessing child (as ``effml.cli.forked`` runs commands): its exit handlers close the
        pool's queue before the pool's thread has sent them, and then the driver waits for the worker."""
        workers = list((self.pool._processes or {}).values())  # the pool offers no public handle on them
        self.pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:
            worker.terminate()
        self.pool.shutdown(wait=True)


class RayExecutor:
    """Trials as Ray tasks: on a local Ray instance, or on a cluster at ``address`` (`ray start`).
    A task is not retried: a trial whose node dies fails, recorded, and a new one is sampled."""

    def __init__(self, address: str | None, threads: int) -> None:
        try:
            import ray
        except ImportError:
            raise SearchError("search.runner=ray needs Ray: pip install 'effml[ray]' (or ray)") from None
        self.ray = ray
        if not ray.is_initialized():
            # "local": a new instance, never a cluster that `ray start` left running on this machine
            kwargs: dict[str, Any] = {"address": address} if address else {"address": "local",
                                                                         "include_dashboard": False}
            try:
                ray.init(log_to_driver=False, configure_logging=False, **kwargs)
            except Exception as err:  # noqa: BLE001 - Ray raises many kinds (connection, authentication)
                where = f"the Ray cluster at search.ray_address={address!r}" if address else "a local Ray instance"
                raise SearchError(f"cannot connect to {where}: {_describe(err)}; check that `ray start --head` "
                                  f"runs there, and that RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH gives this "
                                  f"driver the cluster's token when it uses token authentication") from None
        self.remote = ray.remote(num_cpus=threads, max_retries=0)(run_trial)

    def submit(self, job: TrialJob) -> Future:
        """Start one trial as a Ray task; its result arrives as a ``Future``."""
        return self.remote.remote(job).future()

    def close(self) -> None:
        """Disconnect (a local instance stops; a cluster goes on)."""
        self.ray.shutdown()


@dataclass
class SearchResult:
    """How a search ended; ``baseline``: its random baseline study (``search.baseline``), if any."""

    study: optuna.Study
    finished: int
    failed: int
    baseline: optuna.Study | None = None


# Called with one line per event (trial finished or failed), for progress output.
Echo = Callable[[str], None]


def check_classes(cfg: SearchConfig, space: SearchSpace) -> None:
    """The space's networks have as many outputs as the proxy data set has classes (a network with
    more would train, but its cost and latency would be those of another network)."""
    from effml.train.data import num_classes

    want, have = num_classes(cfg.proxy), space.base.num_classes
    if have != want:
        raise SearchError(f"space {space.name!r} was built for {have} classes but proxy.data "
                          f"({cfg.proxy.data.dataset}) has {want}; build it with build_space(cfg), "
                          f"which takes the proxy's class count")


def run_search(cfg: SearchConfig, space: SearchSpace, *, resume: bool = False, echo: Echo = print,
               sampler: Any = None) -> SearchResult:
    """Run (or with ``resume`` continue) the search of ``cfg`` over ``space`` until the study has
    ``search.trials`` finished trials; then, when ``search.baseline`` asks for it, fill the random
    baseline study ``<study>-random`` with as many random samples, scored the same way."""
    from effml.search.study.strategies import make_sampler, replays_by_trial

    _refuse_a_worker_rerunning_the_script()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = cfg.search
    if cfg.objective.kind == "reward" and cfg.objective.target is None:
        raise SearchError("objective.kind=reward needs objective.target: the latency target T "
                          "(ms, or millions of MACs with objective.latency=flops)")
    if cfg.objective.accuracy == "supernet":
        from effml.search.study.supernet_proxy import check_supernet

        check_supernet(cfg, space)  # the supernet loads and the space is its own (before any trial)
    else:
        check_proxy(cfg)
        search_network(cfg, space.base)  # the detector fits the space's members (a clear error, before any trial)
        check_classes(cfg, space)
    LatencyModel(cfg.objective).check_space(space)  # a bad latency table fails here, before any trial starts
    multi = cfg.objective.kind == "multi"
    ours = sampler is None
    if ours:
        sampler = make_sampler(s.strategy, seed=s.seed, multi_objective=multi, **s.strategy_options)
    random_cfg = baseline_config(cfg) if wants_baseline(cfg) else None
    if random_cfg is not None and not resume and study_exists(s.storage, random_cfg.search.study):
        raise SearchError(f"study {random_cfg.search.study!r} (the random baseline of {s.study!r}) already exists in "
                          f"{storage_url(s.storage)}; continue with --resume, or choose another search.study")
    study = open_study(cfg, space, resume=resume, sampler=sampler)
    if ours and study.trials and not replays_by_trial(sampler):
        # a second or resumed driver: Optuna's own samplers would replay the first driver's draws
        sampler.reseed_rng()
    baseline = None
    if random_cfg is not None:
        name = random_cfg.search.study
        baseline = open_study(random_cfg, space, resume=resume and study_exists(s.storage, name),
                              sampler=make_sampler("random", seed=random_cfg.search.seed, multi_objective=multi))
        if baseline.trials:
            baseline.sampler.reseed_rng()  # as above: do not replay the first driver's random draws
        study.set_user_attr("baseline", name)
        baseline.set_user_attr("baseline_of", s.study)
    executor = RayExecutor(s.ray_address, s.threads) if s.runner == "ray" else LocalExecutor(s.workers)
    try:
        finished, failed = _fill(cfg, space, study, executor, echo)
        if baseline is not None and random_cfg is not None:
            echo(f"random baseline: {s.trials} random samples scored the same way, in study {baseline.study_name!r}")
            _fill(random_cfg, space, baseline, executor, lambda line: echo(f"random baseline {line}"))
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as err:
        raise storage_failed(storage_url(s.storage), err) from None
    finally:
        executor.close()
    return SearchResult(study, finished, failed, baseline)


def _fill(cfg: SearchConfig, space: SearchSpace, study: optuna.Study, executor: LocalExecutor | RayExecutor,
          echo: Echo) -> tuple[int, int]:
    """Ask, evaluate and tell trials of ``study`` until it has ``search.trials`` finished ones:
    (finished, failed in this run)."""
    s = cfg.search
    running: dict[Future, tuple[optuna.trial.Trial, float]] = {}
    failed_in_a_row = failed = 0
    start = time.monotonic()
    done_at_start = len(finished_trials(study))
    grace = grace_period(cfg)
    heartbeat = Heartbeat(study._storage, s.heartbeat_s)
    waiting, reaped = False, -math.inf
    try:
        while True:
            if time.monotonic() - reaped >= s.heartbeat_s:  # a dead driver's trials, once per heartbeat
                reap(study, grace)
                reaped = time.monotonic()
            done, busy = occupied(study)
            while len(running) < s.workers and done + busy < s.trials:
                with warnings.catch_warnings():  # Optuna's heartbeat expects study.optimize; ours beats here
                    warnings.filterwarnings("ignore", message="Heartbeat of storage")
                    trial = study.ask()
                heartbeat.add(trial)
                busy += 1
                if surplus(study, trial, s.trials):  # another driver asked at the same moment
                    trial.set_user_attr("error", SURPLUS)
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    heartbeat.remove(trial)
                    break
                try:
                    sample = space.sample(trial)
                except EffmlError as err:  # an invalid sample: recorded as failed, the study goes on
                    _fail(study, trial, f"invalid sample: {err}", echo)
                    heartbeat.remove(trial)
                    busy -= 1
                    failed += 1
                    continue
                network = search_network(cfg, sample.spec)
                trial.set_user_attr("spec", _spec_dict(network))
                trial.set_user_attr("overrides", list(sample.overrides))
                seed = s.seed + trial.number
                trial.set_user_attr("seed", seed)
                job = TrialJob(cfg, sample, network, trial.number, trial._trial_id, seed)
                running[executor.submit(job)] = (trial, time.monotonic())
            if not running:
                if done >= s.trials:
                    break
                # the study's remaining trials run in other drivers: wait for them to finish, or to
                # die (their trials then go stale and are sampled anew here)
                if not waiting:
                    echo(f"waiting for {busy} trial(s) that other drivers run (study {study.study_name!r}: "
                         f"{done}/{s.trials} finished)")
                    waiting = True
                time.sleep(min(s.heartbeat_s, 5))
                continue
            waiting = False
            ready, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in ready:
                trial, _started = running.pop(future)
                heartbeat.remove(trial)
                try:
                    result = future.result()
                except Exception as err:  # noqa: BLE001 - a failed trial is recorded, the study goes on
                    _fail(study, trial, _describe(err), echo)
                    failed += 1
                    failed_in_a_row += 1
                    if failed_in_a_row > s.max_failures:
                        raise SearchError(f"{failed_in_a_row} trials failed in a row (the last: {_describe(err)}); "
                                          f"the study stops (search.max_failures={s.max_failures})") from None
                    continue
                failed_in_a_row = 0
                trial.set_user_attr("metrics", result["metrics"])
                trial.set_user_attr("duration_s", round(result["duration_s"], 2))
                trial.set_user_attr("cpu_s", round(result["cpu_s"], 2))
                again = tell(study, trial, result["values"], result["pruned"])
                if again is not None:
                    echo(f"trial {trial.number} had been failed by another driver (its heartbeat came late); "
                         f"its result is kept as trial {again}")
                echo(_progress(study, trial.number, result, s.trials, start, done_at_start))
    finally:
        heartbeat.close()
        for future in running:
            future.cancel()
    return len(finished_trials(study)), failed


def _spec_dict(spec: Any) -> dict[str, Any]:
    from effml.zoo.kinds import spec_to_dict

    return spec_to_dict(spec)


SCRIPT_GUARD = ("a search run from a Python script must sit under `if __name__ == \"__main__\":` (each worker "
                "process imports the script, and would start the search again)")


def _refuse_a_worker_rerunning_the_script() -> None:
    """In a worker process that is importing the user's script (multiprocessing runs it as
    ``__mp_main__``), a search started at the script's top level would start again: refuse it."""
    importing = sys.modules.get("__mp_main__")  # there while the script runs, __main__ once it has
    if importing is not None and importing is not sys.modules.get("__main__"):
        raise SearchError(f"run_search was called in a search worker: {SCRIPT_GUARD}")


def _describe(err: BaseException) -> str:
    if isinstance(err, BrokenProcessPool):
        script = getattr(sys.modules.get("__main__"), "__file__", None)
        hint = f"; if {script} starts the search, note that {SCRIPT_GUARD}" if script and not script.endswith(
            ("effml", "effml.exe", "__main__.py")) else ""
        return f"BrokenProcessPool: the worker process died (killed, out of memory?); a new trial is sampled{hint}"
    if type(err).__name__ in ("NodeDiedError", "WorkerCrashedError", "LocalRayletDiedError"):
        return f"{type(err).__name__}: the Ray node or worker running the trial died; a new trial is sampled"
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:500]


def _fail(study: optuna.Study, trial: optuna.trial.Trial, why: str, echo: Echo) -> None:
    try:
        trial.set_user_attr("error", why)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass  # another driver failed it already (a late heartbeat)
    echo(f"trial {trial.number} failed: {why}")


def _progress(study: optuna.Study, number: int, result: dict[str, Any], total: int, start: float,
              done_at_start: int) -> str:
    """'trial n/N ...: reward, accuracy, latency, best so far, ETA'."""
    done = len(finished_trials(study))
    m = result["metrics"]
    cost = f"{m['macs'] / 1e6:.1f} MMACs"  # the latency too, when it is counted in MACs
    lat = f"{m['latency_ms']:.2f} ms, {cost}" if "latency_ms" in m else cost
    name = m.get("metric", "acc")  # AP50 for a detection proxy
    what = "pruned" if result["pruned"] else (
        f"reward {m['reward']:.4f}" if m.get("reward") is not None else f"{name} {100 * m['accuracy']:.1f}%")
    best = ""
    if len(study.directions) == 1:
        try:
            best = f", best {study.best_value:.4f} (trial {study.best_trial.number})"
        except ValueError:
            best = ""
    else:
        best = f", Pareto front {len(study.best_trials)}"
    elapsed = time.monotonic() - start
    new = max(1, done - done_at_start)
    eta = elapsed / new * max(0, total - done)
    acc = f"{100 * m['accuracy']:.1f}%" if "accuracy" in m else "-"
    return (f"trial {done}/{total} (#{number}): {what}, {name} {acc}, {lat}"
            f"{best}, ETA {int(eta // 60)}:{int(eta % 60):02d}")
