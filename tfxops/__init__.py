"""tfxops: the front door. The ``tfxops`` command (``cli.py``) and the whole-loop demo
(``demo.py``) call the stage packages (pipeline, serving, monitoring, lineage), which
stand on the base layer ``core``. Nothing of the project imports this package; importing
it has no side effects (entry points call ``core.env.set_process_environment()`` themselves).

It also names the project's custom artifact types as a compiled pipeline's container
imports them: KFP v2 wants a type name ``<namespace>.<Name>``, TFX's container entrypoint
imports that name as a class path, so ``tfxops.ModelCard`` must be an attribute of this
package. The classes are imported on first access only (``__getattr__``).
"""
__version__ = "0.1.0"

# Name -> the module defining the artifact class whose TYPE_NAME is "tfxops.<Name>".
ARTIFACT_MODULES = {"ModelCard": "pipeline.model_card", "FeatureAttributions": "pipeline.attribution",
                    "InputDomain": "pipeline.domain"}


def artifact_class(name: str):
    """The artifact class of type ``tfxops.<name>``; AttributeError if there is none."""
    import importlib
    import inspect

    from tfx.types.artifact import Artifact

    module = importlib.import_module(ARTIFACT_MODULES[name]) if name in ARTIFACT_MODULES else None
    for _, cls in inspect.getmembers(module, inspect.isclass) if module else ():
        if issubclass(cls, Artifact) and cls.__module__ == module.__name__ and cls.TYPE_NAME == f"tfxops.{name}":
            return cls
    raise AttributeError(f"module 'tfxops' has no attribute {name!r}")


def __getattr__(name: str):
    return artifact_class(name)
