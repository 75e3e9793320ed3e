"""Cgroups on this cgroup v1 (hybrid) host: the shared cases, plus what only v1 has."""

from __future__ import annotations

import pytest

from tests.integration._cgroup_cases import *  # noqa: F403  (the shared cases run here under the v1 mark)

pytestmark = pytest.mark.v1
