"""The pycontain demo: what this host can do, and a first look at namespaces."""

import pycontain

print(pycontain.doctor())
print()
print("cgroup mode:", pycontain.cgroup_version())
print()
print(pycontain.namespaces().head(10).to_string())
