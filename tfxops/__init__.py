"""tfxops: the front door. The ``tfxops`` command (``cli.py``) and the whole-loop demo
(``demo.py``) call the stage packages (pipeline, serving, monitoring, lineage), which
stand on the base layer ``core``. Nothing imports this package; importing it has no
side effects (entry points call ``core.env.set_process_environment()`` themselves).
"""
__version__ = "0.1.0"
