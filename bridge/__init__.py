"""metriqo-bridge: MQTT sensor fleets to the Metriqo telemetry API, without losing a reading."""

from importlib.metadata import PackageNotFoundError, version

# The installed distribution's version, which setuptools-scm derived from the git tag when it
# was built (pyproject.toml, [tool.setuptools_scm]). An editable install keeps the version of
# the commit it was installed at until it is installed again (deploy/setup.sh does).
try:
    __version__ = version("metriqo-bridge")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
