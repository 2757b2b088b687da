"""runtime.warm_imports(): imports in a background thread, errors left to the caller's own import, and the
thread handed back so the caller can join it before importing the same packages (see test_label_issues' hold)."""

from __future__ import annotations

import sys

from posetune.runtime import warm_imports


def test_imports_then_runs_the_follow_up_and_returns_a_joinable_thread():
    sys.modules.pop("colorsys", None)
    ran = []
    thread = warm_imports(["colorsys"], then=lambda: ran.append("colorsys" in sys.modules))
    thread.join(30)
    assert not thread.is_alive() and thread.daemon and thread.name == "posetune-warm-imports"
    assert ran == [True]


def test_a_failing_import_is_swallowed_and_skips_the_rest():
    ran = []
    thread = warm_imports(["posetune_no_such_module", "colorsys"], then=lambda: ran.append(1))
    thread.join(30)
    assert not thread.is_alive() and ran == []
