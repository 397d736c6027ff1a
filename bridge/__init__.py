"""metriqo-bridge: MQTT sensor fleets to the Metriqo telemetry API, without losing a reading."""

__version__ = "0.1.0"
