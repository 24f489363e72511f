"""Studies that survive: an Optuna study in a SQLite file or any database URL, with every trial's
spec, overrides, metrics and seed recorded, resumable after a crash or ``kill -9``.

``optuna-dashboard sqlite:///search.db`` shows a study as it is: the architecture decisions are
ordinary Optuna parameters and the metrics ordinary user attributes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from effml.errors import SearchError
from effml.search.spaces.search_space import SearchSpace
from effml.search.study.config import SearchConfig, search_config_to_dict
from effml.search.study.detection_proxy import score_metric

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def storage_url(storage: str) -> str:
    """A database URL: ``storage`` as it is when it is one, else a SQLite file (its folder made)."""
    if "://" in storage:
        return storage
    path = Path(storage).expanduser().absolute()
    if path.is_dir():
        raise SearchError(f"search.storage {path} is a folder; give a file name such as {path / 'search.db'}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SearchError(f"search.storage {path}: cannot create its folder ({err.strerror})") from None
    return f"sqlite:///{path}"


def open_storage(storage: str, heartbeat: tuple[int, int] | None = None) -> optuna.storages.RDBStorage:
    """The study storage at ``storage`` (file or URL); a clear error when it cannot be opened.
    ``heartbeat``: (interval, grace period) in seconds, for a driver (``drivers``)."""
    import warnings

    url = storage_url(storage)
    beat = {} if heartbeat is None else {"heartbeat_interval": heartbeat[0], "grace_period": heartbeat[1]}
    # several drivers (processes) write one SQLite file: wait for its lock rather than fail at 5 s
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            store = _created(lambda: optuna.storages.RDBStorage(url, engine_kwargs=engine, **beat))
        if url.startswith("sqlite:"):
            _write_ahead(store.engine)
        return store
    except Exception as err:  # noqa: BLE001 - SQLAlchemy and drivers raise many types
        full = full_disk(url)
        if full:
            raise SearchError(f"cannot open the study storage {url}: {full}") from None
        reason = " ".join(str(err).split())[:300]
        raise SearchError(f"cannot open the study storage {url}: {reason}; give a writable SQLite file "
                          f"(search.storage=search.db) or a database URL Optuna accepts "
                          f"(postgresql://user:pass@host/db, with its driver installed)") from None


def _created(make: Any, attempts: int = 8) -> optuna.storages.RDBStorage:
    """``make()``, again when another process was creating the same storage's tables at that moment
    (drivers started together on a new study, or a report opened while the search starts): its
    ``CREATE TABLE`` or version row then fails ("already exists", a unique constraint); once that
    process is done, opening finds the tables."""
    import time

    import sqlalchemy

    for attempt in range(attempts):
        try:
            return make()
        except sqlalchemy.exc.DBAPIError as err:
            text = str(err)
            racing = isinstance(err, sqlalchemy.exc.IntegrityError) or "already exists" in text or "locked" in text
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))
    raise AssertionError("unreachable")


def full_disk(url: str) -> str:
    """For a SQLite study on a disk with no space left: that, in words (SQLite itself may say only
    'disk I/O error'); else ''."""
    import shutil

    if not url.startswith("sqlite:///"):
        return ""
    folder = Path(url.removeprefix("sqlite:///")).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return (f"the disk of {folder} is full ({free // 1024} KiB free); free some space, then continue with "
            f"--resume (the trials already in the study are kept)") if free < 1 << 20 else ""


def storage_failed(url: str, err: BaseException) -> SearchError:
    """A study storage that failed while the search wrote to it (a full disk, a lost database
    connection), in one line: the cause at the bottom of the chain, and how to go on."""
    full = full_disk(url)
    if full:
        return SearchError(f"the study storage {url} could not be written: {full}")
    while err.__cause__ is not None:
        err = err.__cause__
    reason = " ".join(str(err).split())[:300]
    return SearchError(f"the study storage {url} failed: {type(err).__name__}: {reason}; the trials already in the "
                       f"study are kept: continue with --resume once it works again")


def _write_ahead(engine: Any) -> None:
    """SQLite in write-ahead-log mode with ``synchronous=NORMAL``: a commit no longer waits for the
    disk (Optuna commits every suggested parameter, 40-odd commits a trial: 0.3 s of fsyncs, which
    bound a search whose trials take a second, as with ``objective.accuracy=supernet``, to a few
    thousand trials an hour). Still safe from a killed process, which resume relies on; an OS crash
    can lose the last commits, never the file."""
    import sqlalchemy

    def pragmas(connection: Any, _record: Any) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    sqlalchemy.event.listen(engine, "connect", pragmas)
    engine.dispose()  # the connection RDBStorage opened to create its tables lacks them


def study_exists(storage: str, name: str) -> bool:
    """Whether the storage at ``storage`` holds a study ``name``."""
    return name in {s.study_name for s in optuna.get_all_study_summaries(open_storage(storage))}


def directions(cfg: SearchConfig) -> list[str]:
    """maximize the reward, or maximize accuracy and minimize latency."""
    return ["maximize"] if cfg.objective.kind == "reward" else ["maximize", "minimize"]


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    """Optuna's median or successive-halving pruner over the per-epoch accuracy, or none."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=1)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def grace_period(cfg: SearchConfig) -> int:
    """``search.grace_s`` (default 3 x ``search.heartbeat_s``), checked against the interval."""
    s = cfg.search
    grace = s.grace_s if s.grace_s is not None else 3 * s.heartbeat_s
    if grace <= s.heartbeat_s:
        raise SearchError(f"search.grace_s={grace} must be longer than search.heartbeat_s={s.heartbeat_s} "
                          f"(a live driver's trial would look dead between two heartbeats); e.g. "
                          f"search.grace_s={3 * s.heartbeat_s}")
    return grace


def open_study(cfg: SearchConfig, space: SearchSpace, *, resume: bool, sampler: Any = None) -> optuna.Study:
    """Create the study, or with ``resume`` load it (several drivers may share it: ``drivers``),
    check it is the same search, and fail the trials a dead driver left running (they are sampled
    anew); a live driver's running trials are left to it."""
    from effml.search.study.drivers import reap

    grace = grace_period(cfg)
    storage = open_storage(cfg.search.storage, heartbeat=(cfg.search.heartbeat_s, grace))
    name = cfg.search.study
    exists = name in {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if exists and not resume:
        raise SearchError(f"study {name!r} already exists in {storage_url(cfg.search.storage)}; continue it with "
                          f"--resume, or choose another search.study")
    if resume and not exists:
        raise SearchError(f"cannot resume study {name!r}: {storage_url(cfg.search.storage)} has no such study "
                          f"(studies there: {sorted(s.study_name for s in optuna.get_all_study_summaries(storage))})")
    study = optuna.create_study(storage=storage, study_name=name, directions=directions(cfg), sampler=sampler,
                                pruner=make_pruner(cfg.search.pruner), load_if_exists=resume)
    record = {"space": space.to_dict(), "objective": _objective_record(cfg), "proxy": _proxy_record(cfg)}
    if cfg.search.strategy == "tunas":
        record["tunas"] = search_config_to_dict(cfg)["tunas"]
    if not exists:
        for key, value in record.items():
            study.set_user_attr(key, value)
        study.set_user_attr("config", search_config_to_dict(cfg))
        return study
    for key, value in record.items():
        value, stored = json.loads(json.dumps(value)), study.user_attrs.get(key)
        if stored is None and key in LATER_RECORDS:  # a study from before effml recorded it
            study.set_user_attr(key, value)
            continue
        if value != stored:
            raise SearchError(f"study {name!r} was made with another {key}{_first_difference(key, stored, value)}; "
                              f"a resumed search must search the same {key}, or its trials would be scored two "
                              f"ways (start a new study with another search.study)")
    reap(study, grace)
    return study


# What a resumed study checks that older studies did not record (they take this run's record).
LATER_RECORDS = ("proxy", "tunas")
# Proxy settings that change no score: where the run goes, threads, logging.
_PROXY_IGNORED = (("run",), ("train", "threads"), ("train", "log_interval"), ("data", "workers"))


def _proxy_record(cfg: SearchConfig) -> dict[str, Any]:
    """The proxy training recipe as the study records it (less what changes no score)."""
    proxy = search_config_to_dict(cfg)["proxy"]
    for path in _PROXY_IGNORED:
        parent = proxy
        for key in path[:-1]:
            parent = parent.get(key, {})
        parent.pop(path[-1], None)
    return proxy


def _first_difference(where: str, a: Any, b: Any) -> str:
    """' (proxy.train.epochs: 1 before, 3 now)' for the first key whose values differ, or ''."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted({*a, *b}):
            if a.get(key) != b.get(key):
                return _first_difference(f"{where}.{key}", a.get(key), b.get(key))
        return ""
    return f" ({where}: {_short(a)} before, {_short(b)} now)" if a != b else ""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _objective_record(cfg: SearchConfig) -> dict[str, Any]:
    o = cfg.objective
    record = {"kind": o.kind, "latency": o.latency, "runtime": o.runtime, "target": o.target,
              "constraint": o.constraint, "alpha": o.alpha, "beta": o.beta, "accuracy": o.accuracy,
              "threads": o.threads, "batch_size": o.batch_size}
    if cfg.search.detector is not None:  # only then: a classification study's record stays as it was
        record.update(detector=cfg.search.detector, metric=score_metric(cfg))
    if o.accuracy == "supernet":  # a resumed study must be scored by the same supernet
        record["supernet"] = o.supernet
    return record


def finished_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Trials that count towards the study's trial count: complete and pruned."""
    return study.get_trials(deepcopy=False, states=FINISHED)


def load_study(storage: str, name: str | None = None) -> optuna.Study:
    """An existing study (when ``name`` is None, the only one in the storage besides random
    baselines, which the runner marks ``baseline_of``). A SQLite file that is not there is an error
    (opening it would create an empty one)."""
    if "://" not in storage and not Path(storage).expanduser().is_file():
        raise SearchError(f"{storage}: no such study file; give the search.storage file that `effml search` "
                          f"wrote (e.g. runs/search/search.db), or a database URL")
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store)
    names = [s.study_name for s in summaries]
    if name is None:
        searches = [s.study_name for s in summaries if "baseline_of" not in s.user_attrs] or names
        if len(searches) != 1:
            raise SearchError(f"{storage_url(storage)} holds {len(names)} studies ({names}); name one with --study")
        name = searches[0]
    if name not in names:
        raise SearchError(f"{storage_url(storage)} has no study {name!r} (studies there: {names})")
    return optuna.load_study(study_name=name, storage=store)


def recommended_trial(study: optuna.Study) -> optuna.trial.FrozenTrial:
    """The trial a search recommends: the best value; for accuracy-vs-latency studies the most
    accurate trial on the Pareto front within the target (when one was set)."""
    if len(study.directions) == 1:
        return study.best_trial
    target = (study.user_attrs.get("objective") or {}).get("target")
    front = study.best_trials
    within = [t for t in front if target is None or t.values[1] <= target] or front
    return max(within, key=lambda t: (t.values[0], -t.number))


@dataclass(frozen=True)
class Chosen:
    """A trial picked for export: its number, spec and metrics."""

    number: int
    spec: Any
    metrics: dict[str, Any]


def choose_trial(study: optuna.Study, number: int | None = None) -> Chosen:
    """Trial ``number``, or the best: the highest reward; for accuracy-vs-latency studies the most
    accurate trial on the Pareto front within the target (when one was set)."""
    from effml.zoo.kinds import spec_from_dict

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "spec" in t.user_attrs]
    if not done:
        raise SearchError(f"study {study.study_name!r} has no finished trial yet; run or resume the search first")
    if number is not None:
        match = [t for t in done if t.number == number]
        if not match:
            raise SearchError(f"study {study.study_name!r} has no finished trial {number} "
                              f"(finished: {sorted(t.number for t in done)[:20]}...)")
        trial = match[0]
    else:
        trial = recommended_trial(study)
    return Chosen(trial.number, spec_from_dict(trial.user_attrs["spec"], f"trial {trial.number}"),
                  trial.user_attrs.get("metrics", {}))
