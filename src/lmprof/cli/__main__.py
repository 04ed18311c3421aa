from lmprof.cli import main

raise SystemExit(main())
