"""``python -m mscluster_cli``: the ``mscluster`` command (what a rank of the built-in trainer runs)."""
import sys

from mscluster_cli.main import main

sys.exit(main())
