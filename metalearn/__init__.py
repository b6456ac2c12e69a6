"""``import metalearn``: the distribution's own name for the package ``metalearn_cli``.

``import metalearn`` gives the same module object (``metalearn.load``, ``metalearn.__version__``);
submodules are imported under their real name, ``metalearn_cli.<module>``.
"""

import sys

import metalearn_cli

sys.modules[__name__] = metalearn_cli
