"""Which model the Evaluator compares the candidate with.

TFX's LatestBlessedModelStrategy picks the latest blessed model. On a rerun with
unchanged data and code, that is the candidate itself (blessed last time), so the
Evaluator's inputs change, caching misses, and the same model is evaluated against
itself and pushed again. This strategy looks at the candidate first:

* a candidate the Evaluator has judged before gets the same baseline it had then
  (so a rerun's Evaluator and Pusher are cached, and nothing is pushed twice);
* a new candidate gets the latest blessed model other than itself.
"""
from typing import Dict, List, Optional

import ml_metadata
from tfx import types
from tfx.dsl.components.common import resolver

from core import mlmd

BLESSED = "blessed"
CURRENT_MODEL_ID = "current_model_id"
CANDIDATE, MODEL, BLESSING = "candidate", "model", "model_blessing"
BASELINE_INPUT_KEY = "baseline_model"


class BaselineModelStrategy(resolver.ResolverStrategy):
    """Inputs: ``candidate`` (the Trainer's model), ``model`` and ``model_blessing``
    (all of them). Outputs the same keys, ``model``/``model_blessing`` holding the
    baseline (or nothing)."""

    def resolve_artifacts(self, store: ml_metadata.MetadataStore,
                          input_dict: Dict[str, List[types.Artifact]]
                          ) -> Optional[Dict[str, List[types.Artifact]]]:
        candidates = input_dict.get(CANDIDATE, [])
        models = {m.id: m for m in input_dict.get(MODEL, [])}
        blessings = input_dict.get(BLESSING, [])
        result = {CANDIDATE: candidates, MODEL: [], BLESSING: []}
        candidate_id = candidates[0].id if candidates else None

        def blessing_of(model_id):
            found = [b for b in blessings if b.get_int_custom_property(CURRENT_MODEL_ID) == model_id
                     and b.get_int_custom_property(BLESSED) == 1]
            return max(found, key=lambda b: b.id) if found else None

        judged = [b for b in blessings if b.get_int_custom_property(CURRENT_MODEL_ID) == candidate_id]
        if candidate_id is not None and judged:
            baseline_id = self._baseline_used_for(store, max(judged, key=lambda b: b.id).id)
            if baseline_id in models and blessing_of(baseline_id) is not None:
                result[MODEL] = [models[baseline_id]]
                result[BLESSING] = [blessing_of(baseline_id)]
            return result

        for model_id in sorted(models, reverse=True):
            if model_id != candidate_id and blessing_of(model_id) is not None:
                result[MODEL] = [models[model_id]]
                result[BLESSING] = [blessing_of(model_id)]
                break
        return result

    @staticmethod
    def _baseline_used_for(store: ml_metadata.MetadataStore, blessing_id: int) -> Optional[int]:
        """The baseline model id the Evaluator execution that wrote ``blessing_id`` read."""
        evaluator = mlmd.producer(store, blessing_id)
        if evaluator is None:
            return None
        baselines = mlmd.input_artifacts(store, evaluator.id).get(BASELINE_INPUT_KEY)
        return baselines[0].id if baselines else None
