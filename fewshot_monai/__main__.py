"""``python -m fewshot_monai`` is the same as the ``fewshot-monai`` command."""

import sys

from fewshot_monai.cli.main import main

sys.exit(main())
