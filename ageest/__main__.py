"""``python -m ageest`` is the same as the ``ageest`` console command."""

from ageest.cli import main

raise SystemExit(main())
