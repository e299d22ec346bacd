"""Optional mypyc build of the protocol core.

All metadata lives in pyproject.toml; this file only adds extension modules, and only when asked:

    MQTTV5_COMPILE=1 pip install .

Without ``MQTTV5_COMPILE=1`` it is a plain ``setup()`` and the package stays pure Python (no
compiler, no mypy needed).

With it, the modules in ``DEFAULT_MODULES`` (or ``MQTTV5_COMPILE_MODULES=codec,packets,...``) are
compiled with mypyc into C extensions that sit next to the
``.py`` files (Python imports the extension first). mypy is needed only then, and is declared as a
build requirement only then: setuptools' PEP 517 backend answers ``get_requires_for_build_wheel``
by running this file, and ``setup_requires`` below is what it reports, so pip installs mypy into
the isolated build environment by itself. With ``--no-build-isolation`` install mypy (and
setuptools>=77, wheel) in the environment first. The compiled modules do not need mypy at run time.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import setup

# Same major version the project type-checks with; mypyc's output is checked against it.
MYPY_REQUIREMENT = "mypy>=1.10"

# The protocol modules compiled by default: those that compile unchanged and pass tests/protocol
# when compiled (benchmarks/README.md says how that is checked). Not (yet) here:
# - errors.py: InvalidState inherits from two built-in exception types, which mypyc cannot compile;
# - reason_codes.py, constants.py: compiled IntEnum classes fail isinstance checks in other
#   compiled modules ("ReasonCode object expected; got ReasonCode");
# - topics.py: compiles, but a test reads the module's source through ``__file__``.
DEFAULT_MODULES = ["codec", "properties", "packets", "connection"]


def _modules() -> list[str]:
    names = os.environ.get("MQTTV5_COMPILE_MODULES", "").replace(",", " ").split()
    return [f"src/mqttv5/protocol/{name}.py" for name in names or DEFAULT_MODULES]


BUILD_BASE = os.path.join("build", "mypyc")

# Commands that only compute metadata: no need to run mypyc for them.
_METADATA_ONLY = {"egg_info", "dist_info", "--version", "--name"}


def _compile_requested() -> bool:
    return os.environ.get("MQTTV5_COMPILE", "").strip().lower() in {"1", "true", "yes"}


def main() -> None:
    if not _compile_requested():
        setup()
        return
    if _METADATA_ONLY.intersection(sys.argv[1:]):
        # PEP 517 requirement discovery (get_requires_for_build_wheel) and metadata preparation
        # run here, possibly before mypy is installed: report mypy as a build requirement.
        setup(setup_requires=[MYPY_REQUIREMENT])
        return
    try:
        from mypyc.build import mypycify
    except ImportError:
        sys.exit(
            "MQTTV5_COMPILE=1 needs mypy (mypyc) in the build environment: "
            "build with isolation (plain `pip install .`) or `pip install mypy` first."
        )
    here = os.path.dirname(os.path.abspath(__file__))
    os.chdir(here)  # mypycify takes paths relative to the project root
    # A build directory of its own, emptied first: bdist_wheel packs everything under build/lib*,
    # so stale extensions from an earlier build would otherwise end up in the next wheel (a pure
    # one included).
    for stale in glob.glob(os.path.join(BUILD_BASE, "lib.*")):
        shutil.rmtree(stale)
    os.makedirs(BUILD_BASE, exist_ok=True)
    setup(
        ext_modules=mypycify(_modules(), opt_level="3", target_dir=os.path.join(BUILD_BASE, "c")),
        setup_requires=[MYPY_REQUIREMENT],
        # build/ and the egg-info go under build/mypyc, never into src/
        options={"build": {"build_base": BUILD_BASE}, "egg_info": {"egg_base": BUILD_BASE}},
    )


main()
