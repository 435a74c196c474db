"""The whole loop (`tfxops demo`) on the bundled data with few training steps: each
step's outcome, as the demo reports it and as MLMD records it."""
import os

from monitoring import record
from core.pushdir import existing_versions
from core import config, mlmd
from tfxops import demo


def test_the_loop_trains_serves_watches_and_retrains(tmp_path, capfd):
    """As ``tfxops demo`` runs it: no ``out``, the steps on the terminal (fd 1)."""
    settings = config.load({"home": str(tmp_path), "train_steps": "150", "eval_steps": "10"}, environ={})
    result = demo.run_demo(settings)
    text = capfd.readouterr().out
    assert result["ok"], text
    assert "== 9. summary" in text and "model v2:" in text

    # 1. a model pushed; 2-3. traffic served without failures
    first = int(result["first_version"])
    assert result["healthy"]["sent"] > 500 and result["healthy"]["failed"] == 0
    assert result["shifted"]["sent"] > 500 and result["shifted"]["failed"] == 0
    # 4. the healthy window is quiet; the shifted one flags the fare and retrains once
    assert result["quiet"].decision.triggered is False
    loud = result["loud"].decision
    assert loud.action == "retrain" and loud.outcome.pushed
    flagged = {f for v in result["loud"].versions for f in v.flagged_features}
    assert "fare" in flagged
    # 5. the new version is served, without a restart, and is the newest push
    new = int(result["new_version"])
    assert result["switched"] and new > first
    demo_settings = result["settings"]
    assert existing_versions(str(demo_settings.model_push_dir))[-1] == new
    # 6. lineage: both monitoring runs judged the first model; the graph file exists
    store = mlmd.open_store(demo_settings)
    monitors = store.get_executions_by_type(record.EXECUTION_TYPE)
    assert len(monitors) == 2
    pushed_first = [a for a in store.get_artifacts_by_type("PushedModel")
                    if mlmd.custom(a, "pushed_version") == str(first)]
    inputs = {e.artifact_id for e in store.get_events_by_execution_ids([m.id for m in monitors])
              if e.type == e.INPUT}
    assert pushed_first and pushed_first[0].id in inputs
    assert os.path.getsize(result["lineage_graph"]) > 1000
    assert "Changes since the previous pushed version" in text
    # issue 15: the fairness gate's results, both drifts per window, the card, the audit trail
    assert "fairness: passed" in text and "pickup_community_area" in text
    assert text.count("bias drift, version") >= 2 and text.count("attribution drift, version") >= 2
    assert result["model_card"] and os.path.exists(result["model_card"])
    assert result["audit_trail_intact"] and "hash chain intact" in text
    for action in ("run_started", "pushed", "monitor_decision", "retrain", "served_version_changed"):
        assert action in text, action
