"""What the tests share: helpers, harnesses and data tables, never tests.

``tests/conftest.py`` turns some of it into fixtures; a test module imports the rest from here
(``tests.support.harness``, ``tests.support.tls``, ...), never from another test module.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOKEN = "mqk_test_5ecr3t-t0ken-value"  # a recognisable value: tests grep output for it
