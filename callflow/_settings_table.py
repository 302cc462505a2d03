"""The one table describing every setting: names, what each does, its default.

:data:`TABLE` is read by :mod:`callflow.settings` (the ``Settings`` docstring) and rendered
by :func:`settings_markdown` into ``docs/reference/settings-table.md`` (``make
settings-table``; a test keeps the page fresh). Plain values; no loop, no I/O.
"""

from __future__ import annotations

from typing import Final

__all__ = ["PREFIX", "TABLE", "settings_markdown"]

PREFIX: Final = "CALLFLOW_"

TABLE: Final = (
    (
        "APP_ID",
        "the bot's Entra application (client) id; audience of inbound tokens",
        "required",
    ),
    (
        "APP_SECRET",
        "client secret (or `CERTIFICATE_PATH` + `CERTIFICATE_THUMBPRINT`)",
        "required",
    ),
    (
        "CERTIFICATE_PATH, CERTIFICATE_THUMBPRINT",
        "a certificate credential instead of the secret (a PEM file and its thumbprint, together)",
        "none",
    ),
    (
        "TENANT_ID",
        "tenant for app tokens when a notification carries none",
        "`common`",
    ),
    (
        "CALLBACK_URL",
        "public https URL of this webhook; default `callbackUri` of decisions",
        "required",
    ),
    (
        "HOST, PORT, WEBHOOK_PATH",
        "where the webhook listens",
        "`0.0.0.0`, `8000`, `/api/calls`",
    ),
    (
        "GRAPH_URL",
        "Graph base URL (national clouds, tests); https unless loopback",
        "`https://graph.microsoft.com/v1.0`",
    ),
    (
        "AUTHORITY_URL",
        "Entra authority host (https)",
        "`https://login.microsoftonline.com`",
    ),
    (
        "OPENID_CONFIG_URL",
        "where inbound signing keys are published; https unless loopback",
        "`https://api.aps.skype.com/v1/.well-known/OpenIdConfiguration`",
    ),
    (
        "ISSUERS",
        "accepted `iss` values, comma separated",
        "`https://graph.microsoft.com,https://api.botframework.com`",
    ),
    (
        "ALLOWED_TENANTS",
        "if set, only notifications from these tenants (`tid`) are accepted",
        "any",
    ),
    (
        "INBOUND_AUTH",
        "`on` / `off` (off: local development only, refused off loopback, logs a warning)",
        "`on`",
    ),
    (
        "ALLOW_UNAUTHENTICATED",
        "`on` lets `INBOUND_AUTH=off` listen on a non-loopback `HOST`",
        "`off`",
    ),
    (
        "ALLOW_INSECURE_HTTP",
        "`on` accepts plain-http `GRAPH_URL`, `OPENID_CONFIG_URL`, `INTERNAL_URL` off loopback "
        "(test networks)",
        "`off`",
    ),
    (
        "ALLOW_INSECURE_REDIS",
        "`on` accepts a plain `redis://` `STORE` off loopback (a private network); `rediss://`, "
        "`unix://` and loopback need no opt-out",
        "`off`",
    ),
    (
        "CA_BUNDLE",
        "extra CA file trusted for outbound TLS (msal and Graph)",
        "none",
    ),
    (
        "RECORDING_HOSTS",
        "host names recordings are downloaded from (`*.` for subdomains), comma separated; no IP "
        "addresses or loopback names",
        "`*.skype.com,*.microsoft.com`",
    ),
    (
        "PLATFORM_TIMEOUT, RECORDING_TIMEOUT, SAFETY_MARGIN",
        "seconds Graph waits for a decision (a normal call, a policy-recording invite) and how "
        "much earlier the default goes out",
        "`15`, `5`, `3`",
    ),
    (
        "DEFAULT_REJECT_REASON",
        "`busy` / `none` / `forbidden`",
        "`busy`",
    ),
    (
        "MAX_PENDING",
        "undecided calls above this get the default at once",
        "`10000`",
    ),
    (
        "DEADLINE_SEND_RATE",
        "defaults/s the outbox is counted on to send when many calls fall due together",
        "`500`",
    ),
    (
        "MAX_SEND_BACKLOG",
        "decisions waiting to be sent above which new calls wait, then get 503",
        "`1000`",
    ),
    (
        "MAX_QUEUED_PER_CALL",
        "events of one call that may wait behind a slow observer (the oldest observer event goes "
        "past it)",
        "`256`",
    ),
    (
        "MAX_QUEUED_EVENTS",
        "observer events that may wait for a held-up app loop (the oldest goes past it)",
        "`10000`",
    ),
    (
        "OVERLOAD_WAIT",
        "seconds a new call may wait for room in the send backlog (0 to 4)",
        "`1`",
    ),
    (
        "SHED_LAG",
        "seconds late the I/O loop may run before new calls get the default at once",
        "`0.5`",
    ),
    (
        "LOOP",
        "event loop of both loops: `auto` (uvloop when installed), `asyncio`, `uvloop`",
        "`auto`",
    ),
    (
        "SWITCH_INTERVAL",
        "`callflow run`: seconds a thread holds the interpreter while the other waits",
        "`0.001`",
    ),
    (
        "DRAIN_TIMEOUT",
        "at shutdown, how long pending calls may still decide",
        "`15`",
    ),
    (
        "KEEPALIVE_INTERVAL",
        "seconds between keepAlive requests for answered calls",
        "`900`",
    ),
    (
        "REQUEST_TIMEOUT",
        "per-request timeout for Graph (always cut to the deadline)",
        "`5`",
    ),
    (
        "HTTP_KEEPALIVE_TIMEOUT",
        "seconds an idle connection, or one that has not sent a whole request, stays open",
        "`75`",
    ),
    (
        "MAX_CONNECTIONS",
        "open webhook connections at most (the longest idle one is closed for a new one; 503 when"
        " all are busy)",
        "`1000`",
    ),
    (
        "BODY_TIMEOUT",
        "seconds a notification's body may take once its headers are in (then 408)",
        "`5`",
    ),
    (
        "METRICS_HOST",
        "interface of the metrics listener (`/metrics` is never on the webhook's port)",
        "`127.0.0.1`",
    ),
    (
        "METRICS_PORT",
        "port of the metrics listener; `0` any free one, `off` none",
        "`9464`",
    ),
    (
        "STORE",
        "`memory`, or a `rediss://` / `unix://` URL (`redis://` only on loopback or with "
        "`ALLOW_INSECURE_REDIS=on`), `rediss+cluster://...` or `rediss+sentinel://...`: fleet "
        "mode",
        "`memory`",
    ),
    (
        "FLEET_SECRET",
        "fleet mode: the shared key fleet values and forwarded notifications are signed with (32+"
        " characters)",
        "required with Redis",
    ),
    (
        "FLEET_NAME",
        "fleet mode: names the fleet's keys in Redis (`callflow:{APP_ID:FLEET_NAME}:`); one per "
        "deployment sharing a Redis",
        "a digest of `FLEET_SECRET`",
    ),
    (
        "INSTANCE_ID",
        "this worker's unique name in the fleet, logs and per-instance callback URIs (no spaces)",
        "host name",
    ),
    (
        "HEARTBEAT_INTERVAL",
        "fleet mode: seconds between heartbeats; three missed ones mean dead",
        "`1`",
    ),
    (
        "STORE_TIMEOUT",
        "fleet mode: seconds a housekeeping Redis call may take; least a claim waits",
        "`0.15`",
    ),
    (
        "INTERNAL_URL",
        "fleet mode: where the other workers reach this one; https, or plain http only on "
        "loopback or with `ALLOW_INSECURE_HTTP=on`",
        "`http://HOST:PORT`",
    ),
    (
        "FORWARD_ALLOW",
        "fleet mode: host names (`*.` for subdomains), addresses and CIDR networks forwarded "
        "notifications may go to",
        "any signed address",
    ),
    (
        "LOG_FORMAT, LOG_LEVEL, LOG_PII",
        "`json`/`console`; level; `on` shows names and numbers",
        "console on a TTY, else json; `info`; `off`",
    ),
    (
        "TRACING, TRACING_EXPORTER",
        "per-call traces: `otel` (OpenTelemetry, `callflow-graph[otel]`); where spans go when the "
        "application set no tracer provider: `otlp`, `console` or `none`",
        "`off`; `otlp`",
    ),
    (
        "SPEECH_REGION, SPEECH_ENDPOINT",
        "the Azure AI Speech resource (`say()`, `listen()`, `ask()`): its region (`westeurope`)"
        " or its custom-domain base URL (`https://NAME.cognitiveservices.azure.com`, required"
        " with `SPEECH_AUTH=entra`)",
        "none: no speech",
    ),
    (
        "SPEECH_KEY",
        "the Speech resource's key (`SPEECH_AUTH=key`)",
        "required with `key`",
    ),
    (
        "SPEECH_AUTH",
        "`key` (`Ocp-Apim-Subscription-Key`) or `entra` (a token for the app itself from its"
        " secret or certificate)",
        "`key`",
    ),
    (
        "SPEECH_VOICE, SPEECH_LANGUAGE",
        "the voice `say()` speaks with, and the language of prompts and recognition, unless told"
        " otherwise",
        "`en-US-JennyNeural`, `en-US`",
    ),
    (
        "MEDIA_PATH",
        "where the worker serves rendered prompts, under the origin of `CALLBACK_URL`: the"
        " front door forwards it like the webhook path",
        "`/api/media`",
    ),
    (
        "MEDIA_SECRET",
        "the key rendered prompts' unguessable names are made with (32+ characters)",
        "derived from `FLEET_SECRET`, else random per process",
    ),
    (
        "MEDIA_TTL, MEDIA_CACHE_MB",
        "seconds a rendered prompt's name stays valid (at least this, at most twice); megabytes"
        " of rendered prompts kept in memory (their texts take at most a quarter more)",
        "`3600`, `64`",
    ),
)
"""Every setting, once: (``CALLFLOW_`` names, comma separated; what it does; its default).
The ``Settings`` docstring and ``docs/reference/settings-table.md`` are made from it."""


def settings_markdown() -> str:
    """:data:`TABLE` as Markdown: ``docs/reference/settings-table.md`` (the settings page
    includes it)."""
    rows = "".join(
        f"| {', '.join(f'`{n.strip()}`' for n in names.split(','))} | {what} | {default} |\n"
        for names, what, default in TABLE
    )
    return (
        "<!-- Generated from callflow/_settings_table.py (TABLE) by `make settings-table`;"
        " do not edit. docs/reference/settings.md includes it. -->\n\n"
        "| setting | what it does | default |\n|---|---|---|\n" + rows
    )
