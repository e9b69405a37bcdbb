from realalloc.tools.cli import main

raise SystemExit(main())
