"""Files the demo needs that an installed wheel has no checkout to find them in.

``topic-mappings.yaml`` and ``mosquitto.conf`` here are byte-for-byte copies of the repository's
top-level ``topic-mappings.yaml`` and ``mosquitto/mosquitto.conf`` (a unit test keeps them
equal): the top-level files are what a user edits and deploys, these are what ``demo`` and
``simulate-sensors`` fall back to when run from any other directory. They ship as package data
(``[tool.setuptools.package-data]`` in pyproject.toml).
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

EXAMPLE_MAPPING = _HERE / "topic-mappings.yaml"
MOSQUITTO_CONF = _HERE / "mosquitto.conf"
DEFAULT_MAPPING = Path("topic-mappings.yaml")


def choose_mapping(given: Path | None) -> tuple[Path, str]:
    """The mapping file to use and a line saying where it came from.

    A file the user named is used as it is (missing, it is a config error later, naming it).
    Otherwise ``./topic-mappings.yaml`` when there is one, else the packaged example, so the
    demo works from any directory and the line says which file it took.
    """
    if given is not None:
        return given, f"mapping: {given}"
    if DEFAULT_MAPPING.is_file():
        return DEFAULT_MAPPING, f"mapping: {DEFAULT_MAPPING} (found in the current directory)"
    return EXAMPLE_MAPPING, (
        "mapping: no ./topic-mappings.yaml here; using the example mapping shipped with "
        f"metriqo-bridge ({EXAMPLE_MAPPING})"
    )
