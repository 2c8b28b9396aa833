from sentio.cli import main

raise SystemExit(main())
