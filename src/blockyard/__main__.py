from blockyard.cli import main

raise SystemExit(main())
