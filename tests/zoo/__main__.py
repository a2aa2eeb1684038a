"""`python -m tests.zoo`: run the zoo and print its detection matrix."""
from tests.zoo.catalogue import main

raise SystemExit(main())
