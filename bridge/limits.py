"""The Metriqo API's limits, one constant each, as the contract (API v2) states them.

Everything in the bridge that depends on a limit imports it from here: the mapper (no record
may exceed a request), the batcher's default, the settings' bounds, ``explain`` and the local
API server that enforces them in tests.
"""

from __future__ import annotations

# "Maximum batch size: 100 data points per request"; a data point is one metric value.
MAX_POINTS_PER_REQUEST = 100

# Rate limits per organization ("Rate limits"): every bridge of one organization shares them.
TELEMETRY_REQUESTS_PER_MINUTE = 1000  # POST /telemetry
DEVICES_REQUESTS_PER_MINUTE = 300  # GET /devices
METRICS_REQUESTS_PER_MINUTE = 300  # GET /metrics
ALERTS_REQUESTS_PER_MINUTE = 60  # POST /alerts

# GET /devices: "per_page ... max 100".
MAX_PER_PAGE = 100
