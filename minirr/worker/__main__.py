"""`python -m minirr.worker MODULE:ATTR`: an app as an external worker (frames on stdin/stdout)."""

from .loop import main

raise SystemExit(main())
