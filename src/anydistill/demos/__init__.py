"""The demos: whole stories on toyworld, no arguments, no downloads (``anydistill demo [--promptable]``).

- :mod:`anydistill.demos.depth` -- the Depth Anything story (:func:`run_demo`);
- :mod:`anydistill.demos.promptable` -- the Segment Anything story (:func:`run_promptable_demo`);
- :mod:`anydistill.demos.pretrain` -- no teacher yet: self-supervised pre-training (:func:`run_pretrain_demo`);
- :mod:`anydistill.demos.common` -- the steps both share (timing, data, teacher pass, configs, report).
"""

from anydistill.demos.depth import run_demo
from anydistill.demos.pretrain import run_pretrain_demo
from anydistill.demos.promptable import run_promptable_demo

__all__ = ["run_demo", "run_pretrain_demo", "run_promptable_demo"]
