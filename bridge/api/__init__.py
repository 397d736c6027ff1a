"""The Metriqo API beyond telemetry: ``GET /devices``, ``GET /metrics`` and ``POST /alerts``.

:mod:`bridge.api.http` holds what every API request shares with the telemetry sender
(``Retry-After``, timeouts, TLS, how a status is classified); :mod:`bridge.api.models` the
typed results; :mod:`bridge.api.client` the client with one pacing budget per endpoint.
"""
