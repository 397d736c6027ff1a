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

# Device ids and metric names: the contract states no limit. The bridge's reading: at most 256
# characters, without control or bidirectional-control characters (bridge/mapping/identifiers.py
# says why). mapping.max_device_id_length and mapping.max_metric_name_length may be set up to
# this, and the local API server refuses what is beyond it, so a test shows the bridge never
# sends what this reading refuses.
MAX_IDENTIFIER_CHARS = 256
