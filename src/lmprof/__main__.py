from lmprof.cli import entry

entry()
