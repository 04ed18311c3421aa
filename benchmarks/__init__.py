"""GPU benchmarks of lmprof: scripts, and the named suites that chain them (`python -m benchmarks`)."""
