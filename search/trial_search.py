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

from ray.tune.search.optuna import OptunaSearch

from search.trainable import own_error


class TrialOptunaSearch(OptunaSearch):
    """`OptunaSearch` for this project's trials.

    - A trial whose own code raised ends with an error result (search/trainable.py) rather
      than as a Tune failure, so that Tune does not retry it. Optuna must still record it as
      FAIL (as it would a Tune failure), not as a completed trial, and must not take the
      result's NaN placeholders as an intermediate value.
    - `save_to_dir` writes its temporary file beside the experiment folder instead of inside
      it (see there).
    """

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if own_error(result):
            return
        super().on_trial_result(trial_id, result)

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
