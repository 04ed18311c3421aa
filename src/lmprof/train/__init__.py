"""Training: one run from a config to its results row (`lmprof.train.run.run`); the `training`,
`system`, `logging` and `checkpoint` sections of the config (`config.py`).

Nothing is imported here: `lmprof.config` imports `lmprof.train.config` without torch, and
without the trainer, which imports `lmprof.config` itself.
"""
