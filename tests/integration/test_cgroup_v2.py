"""Cgroups on a pure cgroup v2 kernel (run in the VM: ``./dev test-v2``).

The shared cases of ``_cgroup_cases`` run here under the v2 mark, plus what
differs on v2: net_cls/net_prio are refused with a clear Unsupported, and
stats carry pressure (PSI) values.
"""

from __future__ import annotations

import uuid

import pytest

from pycontain.cgroup import Cgroup, cgroups
from pycontain.errors import Unsupported
from tests.integration._cgroup_cases import *  # noqa: F403  (the shared cases run here under the v2 mark)
from tests.integration._cgroup_cases import spin

pytestmark = pytest.mark.v2


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


@pytest.mark.parametrize("kw", [{"net_classid": 0x100010}, {"net_prio": {"lo": 5}}])
def test_net_cls_and_net_prio_are_unsupported(kw: dict) -> None:
    before = set(cgroups()["name"])
    with pytest.raises(Unsupported, match="only in cgroup v1") as info:
        Cgroup(_name(), **kw)
    assert info.value.field in kw
    assert set(cgroups()["name"]) == before  # refused before anything was created


def test_pressure_stats() -> None:
    with Cgroup(_name(), cpus=0.2) as cg:
        cg.call(spin, 1.0, timeout=120)
        s = cg.stats()
    for res in ("cpu", "memory", "io"):
        for key in ("some_avg10_pct", "some_avg60_pct", "some_avg300_pct", "some_total_s"):
            assert f"{res}_pressure_{key}" in s.index
    # Throttled to 0.2 CPU, the spinner waited for CPU: pressure was recorded.
    assert s["cpu_pressure_some_total_s"] > 0


def test_v1_only_choice_is_refused_here() -> None:
    with pytest.raises(Unsupported, match="v2"):
        Cgroup(_name(), version="v1")
