"""Several drivers on one study: ``effml search CONFIG --resume`` started on more machines (or
again after a crash) shares the study in its storage, as Optuna shares a study between processes.

Each driver asks, evaluates and tells its own trials. What keeps them from stepping on each other:

- **Heartbeats** (Optuna's ``RDBStorage`` heartbeat): a driver records a heartbeat of each trial
  it runs every ``search.heartbeat_s`` seconds, from a thread. A RUNNING trial whose heartbeat is
  older than ``search.grace_s`` belongs to a driver that died; any driver fails it (as Optuna's
  ``fail_stale_trials`` does), the error is recorded on it, and a new sample takes its place. A live
  driver's running trials are never touched (a resume used to fail every RUNNING trial, and a
  second driver then killed the first one's work).
- **An exact count**: a driver asks for a trial only while the finished trials and every driver's
  running ones are below ``search.trials``; when two drivers ask at once, the later trial (by
  number) finds itself surplus, is failed before any work and says so. A driver whose own trials
  are done waits for the others' to finish (or to die: then it samples replacements).
- **No computed trial lost**: if a slow heartbeat let another driver fail a trial that then
  finishes, its result is added to the study as a new finished trial with the same parameters.

A RUNNING trial no driver claims (``DRIVER`` unset: a search from before heartbeats, or a driver
that died right after asking) is failed once it is older than the grace period.
"""

from __future__ import annotations

import threading
import uuid
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import TrialState

from effml.search.study.storage import FINISHED

DRIVER = "driver"  # trial user attribute: the id of the driver process that runs it
STALE = ("interrupted: the driver running this trial stopped (no heartbeat for {grace} s); "
         "a new sample takes its place")
SURPLUS = ("surplus: other drivers were already running the study's remaining trials when this "
           "one was asked; failed before any work")


class Heartbeat:
    """Records a heartbeat of this driver's running trials every ``interval`` seconds (a daemon
    thread), and gives the driver its id."""

    def __init__(self, storage: Any, interval: int) -> None:
        self.storage, self.interval = storage, interval
        self.id = uuid.uuid4().hex[:12]
        self._trials: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="effml-heartbeat", daemon=True)
        self._thread.start()

    def add(self, trial: optuna.trial.Trial) -> None:
        """Start the heartbeat of ``trial`` (recorded now) and mark it as this driver's."""
        self.storage.record_heartbeat(trial._trial_id)
        with self._lock:
            self._trials.add(trial._trial_id)
        trial.set_user_attr(DRIVER, self.id)

    def remove(self, trial: optuna.trial.Trial) -> None:
        with self._lock:
            self._trials.discard(trial._trial_id)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                ids = list(self._trials)
            for trial_id in ids:
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period allows several
                    pass


def reap(study: optuna.Study, grace: int) -> None:
    """Fail the RUNNING trials whose driver is gone, recording why: stale heartbeats (as Optuna's
    ``fail_stale_trials`` finds them; it fails them before its callback runs, when a finished
    trial's attributes can no longer be written, so the error is written here first) and unclaimed
    trials older than ``grace`` seconds."""
    storage = study._storage
    stale = set(storage._get_stale_trial_ids(study._study_id))  # BaseHeartbeat's query, not a callback
    now = datetime.now()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start
        unclaimed = DRIVER not in t.user_attrs and started is not None and now - started > timedelta(seconds=grace)
        if t._trial_id in stale or unclaimed:
            try:
                storage.set_trial_user_attr(t._trial_id, "error", STALE.format(grace=grace))
                storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another driver failed it (or its own driver finished it) meanwhile


def occupied(study: optuna.Study) -> tuple[int, int]:
    """(finished trials, running trials of any driver) of ``study``."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


def surplus(study: optuna.Study, trial: optuna.trial.Trial, wanted: int) -> bool:
    """Whether ``trial`` (just asked) would take the study past ``wanted`` trials: the finished ones
    and the running ones asked before it already fill the count."""
    ahead = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    return sum(t.state != TrialState.RUNNING or t.number < trial.number for t in ahead) >= wanted


def tell(study: optuna.Study, trial: optuna.trial.Trial, values: list[float] | None, pruned: bool) -> int | None:
    """Tell ``study`` the result of ``trial``. If another driver failed it meanwhile (its heartbeat
    came too late), add the result as a new finished trial with the same parameters and attributes;
    that trial's number (None when told as usual)."""
    state = TrialState.PRUNED if pruned else TrialState.COMPLETE
    try:
        study.tell(trial, None if pruned else values, state=state)
        return None
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    frozen = study._storage.get_trial(trial._trial_id)
    attrs = {k: v for k, v in frozen.user_attrs.items() if k != "error"}
    study.add_trial(optuna.trial.create_trial(
        params=frozen.params, distributions=frozen.distributions, values=None if pruned else values,
        state=state, user_attrs={**attrs, "replaces": frozen.number}))
    return next(t.number for t in reversed(study.get_trials(deepcopy=False))
                if t.user_attrs.get("replaces") == frozen.number)
