"""``python -m mqttv5 ...``: the same as the ``mqttv5`` command."""

import sys

from mqttv5.cli import main

sys.exit(main())
