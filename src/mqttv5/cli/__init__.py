"""The ``mqttv5`` command: ``mqttv5 broker | pub | sub | passwd | bench | storage``.

Each subcommand lives in its own module (``mqttv5.cli.<name>``) with a ``main(argv) -> int`` that
owns its argument parser, so ``-h`` can mean *host* as in Mosquitto's tools (help is ``--help``).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

COMMANDS: dict[str, str] = {
    "broker": "run the MQTT broker",
    "pub": "publish messages (like mosquitto_pub)",
    "sub": "subscribe and print messages (like mosquitto_sub)",
    "passwd": "manage a password file (like mosquitto_passwd)",
    "bench": "load-test a broker",
    "storage": "check or compact the broker's durable store",
}


def _usage() -> str:
    lines = ["usage: mqttv5 COMMAND [options]   (mqttv5 COMMAND --help for its options)", ""]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mqttv5`` console script; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if args else 2
    if args[0] in ("-V", "--version"):
        from mqttv5 import __version__

        print(f"mqttv5 {__version__}")
        return 0
    name = args[0]
    if name not in COMMANDS:
        print(f"mqttv5: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(f"mqttv5.cli.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"mqttv5.cli.{name}":
            raise
        print(f"mqttv5: command {name!r} is not available yet", file=sys.stderr)
        return 2
    result: int = module.main(args[1:])
    return result


if __name__ == "__main__":
    sys.exit(main())
