"""The kernel boundary: the only code in pycontain that calls ctypes or reads
and writes ``/proc`` and ``/sys``. Everything above it speaks Python and gets
typed errors (:mod:`pycontain.errors`) instead of raw errno values.
"""
