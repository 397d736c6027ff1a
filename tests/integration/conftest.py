"""Fixtures the TLS tests share (test_tls_auth.py, test_secure_broker.py, test_api_tls.py)."""

from __future__ import annotations

import pytest

from tests.support.tls import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One PKI for this module's tests."""
    return make_pki(tmp_path_factory.mktemp("pki"))
