"""``metriqo-bridge check --connect``: the deployment checklist, one green or red line per
step (mapping file, broker address, TCP, TLS, login, subscriptions, API and token), each red
line with its fix. See docs/troubleshooting.md.

The broker half is :mod:`bridge.mqtt.probe` (its own client id and a throwaway session, never
the bridge's), the API half one ``GET /devices?per_page=1`` through the bridge's own HTTP
client. Nothing here prints a secret: the findings hold reason codes, statuses and the
settings' names, never a token or a password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from bridge.errors import EX_CONFIG, EX_OK, EX_UNAVAILABLE, ConfigError
from bridge.mapping.identifiers import IdentifierLimits
from bridge.mqtt.probe import (
    Finding,
    Status,
    check_client_id,
    describe_tls_failure,
    probe_broker,
)
from bridge.sender import ApiAnswer, Sender
from bridge.settings import Settings

_MARKS = {"ok": "[ ok ]", "fail": "[FAIL]", "skip": "[ -- ]"}
_COLOURS = {"ok": "\x1b[32m", "fail": "\x1b[31m", "skip": "\x1b[33m"}


def run_checklist(
    settings: Settings, file: Path, limits: IdentifierLimits, *, strict: bool, as_json: bool
) -> int:
    """Check everything, print the checklist, return the exit code."""
    mapping, filters = mapping_finding(file, limits, strict=strict)
    findings = [mapping, *asyncio.run(_connect(settings, filters, mapping.status == "ok"))]
    code = exit_code(findings)
    if as_json:
        doc = {
            "ok": code == EX_OK,
            "exit_code": code,
            "checks": [dataclasses.asdict(f) for f in findings],
        }
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render(findings, colour=_colour_wanted()))
    return code


def exit_code(findings: list[Finding]) -> int:
    """78 when ``run`` would refuse the configuration itself, 69 when another line is red,
    else 0."""
    failed = [f for f in findings if f.status == "fail"]
    if any(f.config for f in failed):
        return EX_CONFIG
    return EX_UNAVAILABLE if failed else EX_OK


def mapping_finding(
    file: Path, limits: IdentifierLimits, *, strict: bool
) -> tuple[Finding, list[str]]:
    """The mapping file's line, and the broker filters of its rules (none when invalid)."""
    from bridge.config.yamlfile import load_yaml_file
    from bridge.mapping.cover import cover
    from bridge.mapping.loader import compile_mappings
    from bridge.mapping.overlap import format_warning, rule_warnings

    try:
        data, index = load_yaml_file(file)
        rules = compile_mappings(data, index, limits)
    except ConfigError as exc:
        fix = f"run: metriqo-bridge check {file}, and correct the lines it names"
        return Finding(
            "mapping", "fail", f"mapping file {file} is invalid", str(exc), fix, True
        ), []
    lines = [index.line_of(("rules", i, "topic")) for i in range(len(rules))]
    warnings = [format_warning(w, str(file)) for w in rule_warnings(rules, lines)]
    summary = f"mapping file {file}: {len(rules)} rule(s), {len(warnings)} warning(s)"
    status: Status = "fail" if warnings and strict else "ok"
    fix = "resolve the warnings (--strict makes them errors)" if status == "fail" else ""
    # What the bridge subscribes to: the cover of the rule filters (bridge.mapping.cover).
    filters = list(cover([r.topic.subscription for r in rules]).filters)
    return Finding("mapping", status, summary, "\n".join(warnings), fix, status == "fail"), filters


async def _connect(settings: Settings, filters: list[str], rules_ok: bool) -> list[Finding]:
    from bridge.config.secrets import resolve_mqtt_password, resolve_token

    password: str | None = None
    password_error: ConfigError | None = None
    try:
        password = resolve_mqtt_password(settings.credentials)
    except ConfigError as exc:
        password_error = exc
    client_id = check_client_id(settings.mqtt.client_id)
    async with asyncio.TaskGroup() as tg:
        broker = tg.create_task(
            probe_broker(settings.mqtt, password, filters, client_id), name="bridge.check.broker"
        )
        try:
            token = resolve_token(settings.credentials)
        except ConfigError as exc:
            api = Finding(
                "api",
                "fail",
                "the API token cannot be used",
                str(exc),
                "set api.token_file (a 0600 file) or METRIQO_BRIDGE_TOKEN",
                config=True,
            )
        else:
            async with Sender(settings.sender, lambda: token) as sender:
                api = api_finding(await sender.probe(), settings.sender.base_url)
    findings = broker.result()
    if password_error is not None:
        findings = [_without_password(f, password_error) for f in findings]
    if not rules_ok:
        findings = [
            Finding("subscribe", "skip", "subscriptions: not checked (the mapping file is invalid)")
            if f.check == "subscribe"
            else f
            for f in findings
        ]
    return [*findings, api]


def _without_password(f: Finding, error: ConfigError) -> Finding:
    if f.check == "login" and f.status != "skip":
        fix = "check mqtt.password_file: a 0600 file holding the password"
        return Finding("login", "fail", "the broker password cannot be read", str(error), fix, True)
    if f.check == "subscribe" and f.status != "skip":
        return Finding("subscribe", "skip", "subscriptions: not checked (no password)")
    return f


def api_finding(answer: ApiAnswer, base_url: str) -> Finding:
    """The API's line for what ``GET /devices?per_page=1`` answered."""
    status = answer.status
    if status is None:
        return _unreachable(answer, base_url)
    where = f"GET {base_url.rstrip('/')}/devices answered {status}"
    if status == 200:
        count = "" if answer.devices is None else f", {answer.devices} device(s)"
        return Finding("api", "ok", f"API reachable and the token accepted ({where}{count})")
    if status == 401:
        return _fail(
            "the API refused the token (401)",
            where,
            "the token is wrong, expired or revoked: put a current token from the "
            "Metriqo dashboard into api.token_file (or METRIQO_BRIDGE_TOKEN)",
        )
    if status == 403:
        return _fail(
            "the API knows the token but refuses access (403)",
            where,
            "issue a token with access to the organization's devices and telemetry",
        )
    if status == 429:
        wait = "" if answer.retry_after is None else f" (Retry-After: {answer.retry_after:g} s)"
        return _fail(
            "the API's rate limit was hit (429): token not confirmed",
            where + wait,
            "another client with this token (a running bridge?) uses "
            "the budget; run the check again later",
        )
    if status >= 500:
        return _fail(
            f"the API has a server error ({status})",
            where,
            "a problem on Metriqo's side: run the check again later",
        )
    if 300 <= status < 400:
        target = answer.location or "(no Location header)"
        return _fail(
            f"the API redirects ({status}) to {target}",
            where,
            "set api.base_url to the final URL: the bridge never follows redirects, "
            "which would carry the token to another host",
        )
    if status == 404:
        return _fail(
            f"no Metriqo API at {base_url} (404)",
            where,
            "api.base_url must end in /api/v2, e.g. https://metriqo.net/api/v2",
        )
    return _fail(f"the API answered {status}", where, "check api.base_url")


def _fail(summary: str, detail: str, fix: str) -> Finding:
    return Finding("api", "fail", summary, detail, fix)


def _unreachable(answer: ApiAnswer, base_url: str) -> Finding:
    host = urlsplit(base_url).hostname or base_url
    if answer.tls_error is not None:
        summary, detail, fix = describe_tls_failure(
            answer.tls_error,
            host,
            client_cert=False,
            who="API",
            ca_key="api.ca_file",
            host_key="api.base_url",
        )
        return _fail(f"TLS to the API failed: {summary}", detail, fix)
    if answer.dns:
        return _fail(
            f"the API's host name {host!r} does not resolve",
            answer.problem,
            f"check api.base_url; try: getent hosts {host}",
        )
    return _fail(
        f"the API at {base_url} is not reachable",
        answer.problem,
        "check api.base_url and the network path (firewall, proxy)",
    )


def render(findings: list[Finding], *, colour: bool = False) -> str:
    """The checklist as text: a mark per line, then its detail and fix, indented."""
    out: list[str] = []
    for f in findings:
        mark = _MARKS[f.status]
        if colour:
            mark = f"{_COLOURS[f.status]}{mark}\x1b[0m"
        out.append(f"{mark} {f.summary}")
        if f.status != "ok":
            out.extend(f"       {line}" for line in f.detail.splitlines())
        if f.fix and f.status == "fail":
            out.append(f"       fix: {f.fix}")
    failed = sum(f.status == "fail" for f in findings)
    out.append(
        f"{failed} of {len(findings)} checks failed: fix the red lines above"
        if failed
        else f"all {sum(f.status == 'ok' for f in findings)} checks passed"
    )
    return "\n".join(out) + "\n"


def _colour_wanted() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ
