import sys

if "--lm" in sys.argv[1:]:  # the language-model track (lm_catalogue.py)
    from tests.realbugs.lm_catalogue import main
    raise SystemExit(main([arg for arg in sys.argv[1:] if arg != "--lm"]))

from tests.realbugs.catalogue import main

raise SystemExit(main())
