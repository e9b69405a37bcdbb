from realalloc._cli import main

raise SystemExit(main())
