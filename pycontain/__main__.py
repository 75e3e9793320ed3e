"""``python -m pycontain`` is the ``pycontain`` command line."""

from pycontain.cli import main

raise SystemExit(main())
