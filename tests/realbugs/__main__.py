from tests.realbugs.catalogue import main

raise SystemExit(main())
