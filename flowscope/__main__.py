from flowscope.cli import main

raise SystemExit(main())
