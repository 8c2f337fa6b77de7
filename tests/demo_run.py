"""A shortened demo run shared by the demo test files: module constants patched, the panels'
return values captured, ``run`` writing into a temporary folder."""

from __future__ import annotations

import pytest


def shortened_run(demo, short: dict, panels: tuple[str, ...], out):
    """``(out, summary, captured)``: ``demo.run(out)`` with ``short`` patched into the module
    and the return value of each function named in ``panels`` kept in ``captured``."""
    captured = {}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in short.items():
            mp.setattr(demo, k, v)
        for name in panels:
            fn = getattr(demo, name)

            def keep(*a, _fn=fn, _name=name, **kw):
                captured[_name] = _fn(*a, **kw)
                return captured[_name]

            mp.setattr(demo, name, keep)
        summary = demo.run(out)
    return out, summary, captured
