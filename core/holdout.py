"""The trusted holdout's settings and the mark of its verdict (issue 16 part 5b; the gate
itself is ``pipeline.holdout``)."""
from typing import Mapping, Optional

# A custom property (1) of the trusted holdout's ModelBlessing: its verdict never makes a
# model "blessed" for reuse, and a refusal excludes the model (core.mlmd.blessed_model_artifacts).
BLESSING_MARK = "trusted_holdout"


def settings_problem(values: Mapping) -> Optional[str]:
    """What is wrong with the trusted holdout's settings among ``values`` (None: nothing)."""
    if not 0 <= values.get("holdout_max_auc_drop", 0.0) <= 1:
        return "setting 'holdout_max_auc_drop' must be between 0 and 1 (an AUC difference)"
    if values.get("holdout_min_examples", 1) < 1:
        return "setting 'holdout_min_examples' must be at least 1"
    return None
