"""Tune's Optuna searcher, told which trials failed in their own code, and saved so that Tune's
copy of its experiment folder never meets a half-written file.

A module of its own: Tune pickles the searcher into the experiment's state, by module path,
and `search/run.py` may also run as a script (where its classes would be `__main__`'s).
"""

from __future__ import annotations

import contextlib
import os
import uuid
from typing import Any

import optuna
from ray.tune.search.optuna import OptunaSearch

from search.faults import fault_point
from search.trainable import TRIAL_NUMBER, own_error


class TrialOptunaSearch(OptunaSearch):
    """`OptunaSearch` for this project's trials.

    - A trial whose own code raised ends with an error result (search/trainable.py) rather
      than as a Tune failure, so that Tune does not retry it. Optuna must still record it as
      FAIL (as it would a Tune failure), not as a completed trial, and must not take the
      result's NaN placeholders as an intermediate value.
    - Intermediate values are not written per epoch (see `on_trial_result`).
    - `save_to_dir` writes its temporary file beside the experiment folder instead of inside
      it (see there).
    - The study is the sweep's ledger: each config carries its trial's number
      (``TRIAL_NUMBER``), which the ordered ASHA and MLflow use, and a trial the study has as
      running that no Tune trial owns (asked by a driver killed before Tune saved its state)
      is handed out again, under its number and with its parameters, before anything new is
      asked: a resumed sweep then numbers and suggests as the uninterrupted one, and no
      stale RUNNING trial sits in the study (see `suggest`).
    """

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if callable(self._space) and trial_id not in self._ot_trials:
            lost = self._lost_trial()
            if lost is not None:
                self._ot_trials[trial_id] = optuna.trial.Trial(self._ot_study, lost)
        config = super().suggest(trial_id)
        if config is None or trial_id not in self._ot_trials:
            return config
        number = self._ot_trials[trial_id].number
        # Tests kill the driver here: the study has the trial RUNNING, Tune has not saved it.
        fault_point("trial_suggested", number)
        return {**config, TRIAL_NUMBER: number}

    def _lost_trial(self) -> int | None:
        """The storage id of the oldest RUNNING trial of the study that no trial of this
        searcher owns (None if there is none). Such trials exist only from before this
        searcher was built or restored, so the study is looked at once, not per suggestion."""
        from optuna.trial import TrialState

        if getattr(self, "_lost", None) is None:
            owned = {t._trial_id for t in self._ot_trials.values()}
            running = self._ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            lost = sorted((t.number, t._trial_id) for t in running if t._trial_id not in owned)
            self._lost = [trial_id for _, trial_id in lost]
        return self._lost.pop(0) if self._lost else None

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self._lost = None  # a restored searcher looks at the study anew

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        """Not stored: Ray's OptunaSearch writes every epoch's value into the study (one RDB
        write per result, and rows every later suggestion reads back: at 64 concurrent trials
        that was most of the driver's time, bench/bench_scale.py). TPE reads only the final
        values; the rung values ASHA decides on are in the study already (search.ordered)."""

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        if own_error(result):
            result, error = None, True
        super().on_trial_complete(trial_id, result=result, error=error)

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        """As `Searcher.save_to_dir` (write a temporary file, then rename it into place), but
        with the temporary file in the parent folder. Tune copies the whole folder to its
        storage path in a background thread while the next save may already run; a temporary
        file inside it can vanish (renamed) between the copy's listing and its read, and the
        copy then fails with a FileNotFoundError traceback. Pickling this searcher is the slow
        part of a save, so its file was the one caught."""
        final = os.path.join(checkpoint_dir, self.CKPT_FILE_TMPL.format(session_str))
        parent = os.path.dirname(os.path.abspath(checkpoint_dir))
        tmp = os.path.join(parent, f".{uuid.uuid4()}-tmp-{os.path.basename(final)}")
        try:
            self.save(tmp)
            os.replace(tmp, final)  # same file system: the parent folder's
        except OSError:
            # A parent on another file system (the folder is a mount point) or not writable:
            # Ray's own way, temporary file inside.
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            super().save_to_dir(checkpoint_dir, session_str)
