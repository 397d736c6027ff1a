"""Mapping files the rule-order (``check``) and ``explain`` tests share: a clean one, and one
with ``continue`` and ``ignore`` rules."""

from __future__ import annotations

GOOD_YAML = """\
version: 1
rules:
  - name: line-environment
    topic: "plant/{site}/{line}/env"
    device_id: "{site}-{line}-env"
    metrics:
      temperature_c: temp
      humidity_pct: rh
      power_kw: power.kw
    timestamp:
      field: ts
  - name: machine-state
    topic: "plant/{site}/{machine}/state"
    device_id: "{machine}"
    metrics:
      spindle_rpm: spindle.rpm
  - name: plain-sensors
    topic: "tele/{device}/{metric}"
    device_id: "{device}"
    payload: number
    metric: "{metric}"
"""

CHAIN_YAML = r"""
version: 1
rules:
  - name: drop-debug
    topic: "plant/+/debug/#"
    ignore: true
  - name: raw
    topic: "plant/{site}/{line}/env"
    device_id: "raw-{site}"
    continue: true
    metrics: {t: temp}
  - name: env
    topic: 'plant/{site}/{line:line\d+}/env'
    device_id: "{site}-{line}"
    metrics: {t: temp}
  - name: env-again
    topic: 'plant/{site}/{line:line\d+}/env'
    device_id: "{site}"
    metrics: {t: temp}
  - name: debug-a
    topic: "plant/a/debug/x"
    device_id: d
    metrics: {t: temp}
"""
