"""Traces from ``OTEL_*``, and their context kept with events."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Final

from fastapi import FastAPI
from opentelemetry import propagate, trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace import export, sampling
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, Span, SpanKind, Tracer, TracerProvider, TraceState

from regatta.common.telemetry.metrics import UNOBSERVED_PATHS

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.util.types import Attributes
    from redis.asyncio import Redis

    from regatta.common.data.db import Database

logger = logging.getLogger("regatta.tracing")
SUPPORTED_OTLP_PROTOCOL: Final = "http/protobuf"


def tracing_requested(environ: Mapping[str, str]) -> bool:
    """Whether the standard ``OTEL_*`` variables ask for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() in {"true", "1", "yes", "on"}:
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER")
    if exporters is not None:
        return any(name.strip() not in {"", "none"} for name in exporters.split(","))
    endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    return any(environ.get(name) for name in endpoints)


class DropOrphanClientSpans(Sampler):
    """Never start a trace with a client span: a background poll's query is noise, not a trace."""

    def __init__(self, delegate: Sampler) -> None:
        self.delegate = delegate

    def should_sample(  # noqa: PLR0917 -- the SDK's Sampler signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """Drop a client span without a parent; ask the delegate about everything else."""
        parent = trace.get_current_span(parent_context).get_span_context()
        if kind is SpanKind.CLIENT and not parent.is_valid:
            return SamplingResult(Decision.DROP)
        return self.delegate.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        """How the sampler decides."""
        return f"DropOrphanClientSpans{{{self.delegate.get_description()}}}"


def sampler_from_environment(environ: Mapping[str, str]) -> Sampler:
    """``OTEL_TRACES_SAMPLER`` / ``_ARG``, parent-based trace-id ratio by default."""
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_traceidratio").strip().lower()
    try:
        ratio = float(environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        ratio = 1.0
    ratio = min(max(ratio, 0.0), 1.0)
    samplers: dict[str, Sampler] = {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }
    if name not in samplers:
        logger.warning("unknown OTEL_TRACES_SAMPLER %r; using parentbased_traceidratio", name)
    return DropOrphanClientSpans(samplers.get(name, samplers["parentbased_traceidratio"]))


def exporters_from_environment(environ: Mapping[str, str]) -> list[export.SpanExporter] | None:
    """The span exporters ``OTEL_TRACES_EXPORTER`` names; None when one cannot be honoured."""
    names = [
        name.strip().lower()
        for name in environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")
        if name.strip() not in {"", "none"}
    ]
    exporters: list[export.SpanExporter] = []
    for name in names:
        if name == "console":
            exporters.append(export.ConsoleSpanExporter())
        elif name == "otlp":
            protocol = environ.get(
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
                environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", SUPPORTED_OTLP_PROTOCOL),
            )
            if protocol.strip() != SUPPORTED_OTLP_PROTOCOL:
                logger.error(
                    "OTLP protocol %r is not supported, only %s (port 4318): tracing stays off",
                    protocol,
                    SUPPORTED_OTLP_PROTOCOL,
                )
                return None
            # Imported here: the exporter pulls in requests, needless while tracing is off.
            from opentelemetry.exporter.otlp.proto.http import trace_exporter  # noqa: PLC0415

            exporters.append(trace_exporter.OTLPSpanExporter())
        else:
            logger.error("unknown OTEL_TRACES_EXPORTER %r: tracing stays off", name)
            return None
    return exporters


class _ProcessTracing:
    """Tracing is decided once per process (the SDK allows one global provider)."""

    decided = False
    provider: TracerProvider | None = None


def tracer_provider_from_environment(service_name: str) -> TracerProvider | None:
    """This process's tracer provider (one installed first, or from ``OTEL_*``), or None: off."""
    if _ProcessTracing.decided:
        return _ProcessTracing.provider
    _ProcessTracing.decided = True
    installed = trace.get_tracer_provider()
    if isinstance(installed, SdkTracerProvider):
        _ProcessTracing.provider = installed
        return installed
    if not tracing_requested(os.environ):
        return None
    exporters = exporters_from_environment(os.environ)
    if not exporters:
        return None
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = SdkTracerProvider(resource=resource, sampler=sampler_from_environment(os.environ))
    for exporter in exporters:
        if isinstance(exporter, export.ConsoleSpanExporter):
            provider.add_span_processor(export.SimpleSpanProcessor(exporter))
        else:
            provider.add_span_processor(export.BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _ProcessTracing.provider = provider
    return provider


def instrument_app(app: FastAPI, provider: TracerProvider) -> None:
    """A server span per request (named by route template), outermost, probes excluded."""
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415

    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=provider,
        meter_provider=NoOpMeterProvider(),
        excluded_urls=",".join(f"{path}$" for path in UNOBSERVED_PATHS),
        exclude_spans=["receive", "send"],
    )


def trace_database(database: Database, provider: TracerProvider) -> None:
    """A client span per SQL statement of this database (and no other)."""
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer  # noqa: PLC0415

    unused = NoOpMeterProvider().get_meter(__name__).create_up_down_counter("unused")
    sql_tracer = provider.get_tracer("opentelemetry.instrumentation.sqlalchemy")
    EngineTracer(sql_tracer, database.engine.sync_engine, unused)  # type: ignore[no-untyped-call]
    database.statements.tracer = sql_tracer  # and those asyncpg runs itself (executor.py)


def instrument_redis(client: Redis, provider: TracerProvider) -> None:
    """A client span per Redis command or pipeline of this client (and no other)."""
    from opentelemetry.instrumentation.redis import RedisInstrumentor  # noqa: PLC0415

    RedisInstrumentor.instrument_client(client, tracer_provider=provider)


def tracer(provider: TracerProvider | None, name: str) -> Tracer:
    """A tracer from ``provider``; without one, a no-op tracer that still passes context on."""
    return trace.NoOpTracer() if provider is None else provider.get_tracer(name)


def current_trace_context() -> str | None:
    """The current trace context as a JSON carrier to store beside work done later, or None."""
    return carrier_of(trace.get_current_span())


def carrier_of(span: Span) -> str | None:
    """The trace context of ``span`` as a JSON carrier (what :func:`parent_context` reads)."""
    if not span.get_span_context().is_valid:
        return None
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return json.dumps(carrier, separators=(",", ":")) if carrier else None


def parent_context(carrier: str | None) -> Context | None:
    """The context stored in a JSON carrier, to start a span under; None without one."""
    if not carrier:
        return None
    with contextlib.suppress(ValueError):
        fields = json.loads(carrier)
        if isinstance(fields, dict):
            return propagate.extract({str(key): str(value) for key, value in fields.items()})
    return None


def continue_trace(
    tracer: Tracer,
    name: str,
    carrier: str | None,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
) -> contextlib.AbstractContextManager[Span]:
    """A current span continuing the trace stored in ``carrier`` (a new trace without one)."""
    return tracer.start_as_current_span(
        name, context=parent_context(carrier), kind=kind, attributes=dict(attributes or {})
    )
