"""tests/vm holds the VM harness, not tests: keep pytest out of its cache.

The cache holds an unpacked kernel (thousands of module files); walking it
would slow every collection, and more so in the guest, where it is read over 9p.
"""

collect_ignore = ["cache"]
