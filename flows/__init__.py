"""Prefect flows of constellation (the only code that imports prefect or ray).

The library (``constellation``) never imports this package; the ``run`` and
``demo`` commands import it lazily.
"""

import os

# Under `uv run`, Ray would otherwise rebuild the uv project environment for every
# worker from the driver's working directory. Local and pre-installed clusters use
# the interpreter they have. Ray reads this when it is first imported.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
