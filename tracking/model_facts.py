"""What MLMD knows about a trained model, for the mirror: the Trainer that made it
(code fingerprint, steps, hyperparameters) and the examples it read (the input
fingerprint, span and directory ExampleGen recorded). Read through lineage, so a
cached run or a re-push finds the execution that really trained the model."""
import dataclasses
from typing import Dict, Optional

from core import mlmd

CODE_FINGERPRINT = "code_fingerprint"     # in the Trainer's custom_config (pipeline.pipeline)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    model_id: int
    trainer_execution_id: Optional[int]
    code_fingerprint: str
    train_steps: Optional[int]
    eval_steps: Optional[int]
    hyperparameters: Dict[str, object]
    examples_id: Optional[int]
    data_fingerprint: str                 # ExampleGen's input_fingerprint
    data_span: Optional[int]
    data_dir: str                         # ExampleGen's input_base


def model_facts(store, model_id: int) -> ModelFacts:
    """The facts of the Model artifact ``model_id`` (empty where lineage is missing)."""
    trainer = mlmd.producer(store, model_id)
    props = mlmd.properties(trainer) if trainer is not None else {}
    config = dict(props.get("custom_config") or {})
    code = str(config.pop(CODE_FINGERPRINT, "") or "")
    examples = None
    if trainer is not None:
        examples = next(iter(mlmd.input_artifacts(store, trainer.id).get("examples", [])), None)
    example_gen = mlmd.producer(store, examples.id) if examples is not None else None
    data = mlmd.properties(example_gen) if example_gen is not None else {}
    return ModelFacts(
        model_id=int(model_id), trainer_execution_id=trainer.id if trainer is not None else None,
        code_fingerprint=code, train_steps=_steps(props.get("train_args")), eval_steps=_steps(props.get("eval_args")),
        hyperparameters=config, examples_id=examples.id if examples is not None else None,
        data_fingerprint=str(data.get("input_fingerprint") or ""),
        data_span=data.get("span"), data_dir=str(data.get("input_base") or ""))


def pushed_model_facts(store, pushed_model_id: int) -> Optional[ModelFacts]:
    """The facts of the model a PushedModel holds: the ``model`` input of the execution
    that wrote it (a Pusher, or the monitor's re-push); None without that lineage."""
    pusher = mlmd.producer(store, pushed_model_id)
    if pusher is None:
        return None
    model = next(iter(mlmd.input_artifacts(store, pusher.id).get("model", [])), None)
    return model_facts(store, model.id) if model is not None else None


def _steps(args) -> Optional[int]:
    return int(args["num_steps"]) if isinstance(args, dict) and args.get("num_steps") is not None else None
