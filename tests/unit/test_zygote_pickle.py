"""What the zygote gets pickled by: the C pickler, or cloudpickle where it must."""

from __future__ import annotations

import os


def test_zygote_pickles_by_name_only_what_the_zygote_can_import() -> None:
    import pickle

    from pycontain.engine.zygote import _dumps

    def local() -> int:
        return 1

    # Importable by name: the C pickler's bytes; a local function or anything
    # of __main__'s: cloudpickle's (by value), which pickle.loads reads too.
    assert _dumps((os.path.join, 3)) == pickle.dumps((os.path.join, 3), protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(_dumps(local))() == 1
    main_like = type("Thing", (), {"__module__": "__main__"})
    data = _dumps(main_like)
    assert b"__main__" in data and pickle.loads(data).__name__ == "Thing"
