"""Imported once in the cell zygote: an IPython shell for the cells it forks.

``display()``, rich reprs and the display formatter need an initialized
:class:`~IPython.core.interactiveshell.InteractiveShell`. Making one costs
~50 ms, so the cell zygote makes it once at start-up and every cell's
process gets it by fork. Its history is off: the history manager would open
a sqlite file and start a saving thread, and the zygote must stay
single-threaded and touch no file of the user's profile.
"""

from __future__ import annotations

from IPython.core.interactiveshell import InteractiveShell
from traitlets.config import Config

if not InteractiveShell.initialized():
    _config = Config()
    _config.HistoryManager.enabled = False
    InteractiveShell.instance(config=_config)
