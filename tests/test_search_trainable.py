"""The numbers the search compares: ASHA's rung value and the value TPE learns from."""

from __future__ import annotations

import math

from search.trainable import TIE_BREAK, tie_broken

ALL_NEUTRAL = 0.126108  # the demo val split's all-neutral macro-F1


def test_exact_f1_ties_are_broken_by_auroc() -> None:
    learned = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 0.81, "val_loss": 9.0}
    blind = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 0.52, "val_loss": 0.1}
    assert tie_broken(learned) > tie_broken(blind)  # val loss plays no part


def test_the_tie_break_never_outweighs_an_f1_difference() -> None:
    # About the smallest macro-F1 step one changed prediction makes on a 10,000-row val split
    # (a class F1 of 2TP / (2TP + FP + FN) moves by about 1 / (2 x support) at the most).
    step = 1 / 7 / 20_000
    better_f1 = {"val_macro_f1": ALL_NEUTRAL + step, "val_macro_auroc": 0.0}
    better_auroc = {"val_macro_f1": ALL_NEUTRAL, "val_macro_auroc": 1.0}
    assert tie_broken(better_f1) > tie_broken(better_auroc)
    assert step > TIE_BREAK


def test_undefined_auroc_leaves_f1_alone() -> None:
    assert tie_broken({"val_macro_f1": 0.4, "val_macro_auroc": math.nan}) == 0.4
    assert tie_broken({"val_macro_f1": 0.4}) == 0.4
    assert math.isnan(tie_broken({"val_macro_auroc": 0.7}))
