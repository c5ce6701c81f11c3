from ppssl.cli import main

raise SystemExit(main())
