"""Backends: small protocols picked by probing the host (cgroup v1/v2,
storage drivers, seccomp, networking). They speak Python to the layers above
and call the kernel only through :mod:`pycontain.kernel`.
"""
