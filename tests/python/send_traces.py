"""Sends traces to Tailgate with the real OpenTelemetry Python SDK, then prints what it sent.

Used by the end-to-end tests: each trace has a server root span and client children that
carry attributes the gateway must redact, so the test can compare what the sink received
with what the application produced. Output: one JSON object on stdout.
"""

import argparse
import json
import sys
import time

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import Status, StatusCode


def exporter_for(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint)


class Recording:
    """Wraps the exporter to learn whether every export call succeeded."""

    def __init__(self, inner):
        self.inner = inner
        self.failures = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result != SpanExportResult.SUCCESS:
            self.failures += 1
        return result

    def shutdown(self):
        return self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--traces", type=int, default=10)
    p.add_argument("--children", type=int, default=3)
    p.add_argument("--service", default="py-shop")
    p.add_argument("--error-every", type=int, default=0, help="every Nth trace gets an ERROR span")
    p.add_argument("--flag-every", type=int, default=0, help="every Nth trace gets sampling.priority=always_on")
    p.add_argument("--slow-every", type=int, default=0, help="every Nth trace has a 2.5 s root span")
    p.add_argument("--pod-ip", default="", help="k8s.pod.ip resource attribute")
    p.add_argument(
        "--health-checks", type=int, default=0,
        help="also send this many single-span probe traces (/healthz, /readyz, /metrics)",
    )
    p.add_argument(
        "--pace-ms", type=int, default=0,
        help="pause this long after each trace, to spread the traffic over time",
    )
    args = p.parse_args()

    attrs = {"service.name": args.service}
    if args.pod_ip:
        attrs["k8s.pod.ip"] = args.pod_ip
    provider = TracerProvider(resource=Resource.create(attrs))
    exporter = Recording(exporter_for(args.protocol, args.endpoint))
    # The SDK drops spans silently once its queue is full: make room for every span sent.
    spans_total = args.traces * (args.children + 1) + args.health_checks
    provider.add_span_processor(
        BatchSpanProcessor(
            exporter, max_export_batch_size=64, max_queue_size=max(2048, spans_total)
        )
    )
    tracer = provider.get_tracer("tailgate-e2e")

    sent = []
    for i in range(args.traces):
        error = args.error_every and i % args.error_every == 0
        flagged = args.flag_every and i % args.flag_every == 0
        slow = args.slow_every and i % args.slow_every == 0
        start_ns = time.time_ns()
        # A slow trace's root lasts 2.5 s by its timestamps; nothing sleeps.
        end_ns = start_ns + (2_500_000_000 if slow else 50_000_000)
        with tracer.start_as_current_span(
            "GET /checkout", kind=trace.SpanKind.SERVER, start_time=start_ns, end_on_exit=False
        ) as root:
            root.set_attribute("http.route", "/checkout")
            root.set_attribute("http.request.header.authorization", "Bearer s3cret")
            root.set_attribute("http.request.header.cookie", "session=abc")
            if flagged:
                root.set_attribute("sampling.priority", "always_on")
            span_ids = [format(root.get_span_context().span_id, "016x")]
            for c in range(args.children):
                with tracer.start_as_current_span(f"db-query-{c}", kind=trace.SpanKind.CLIENT) as child:
                    child.set_attribute("db.statement", f"SELECT * FROM users WHERE id = {i}")
                    child.set_attribute("db.system", "postgresql")
                    if error and c == 0:
                        child.set_status(Status(StatusCode.ERROR, "boom"))
                    span_ids.append(format(child.get_span_context().span_id, "016x"))
            root.end(end_time=end_ns)
            sent.append(
                {
                    "trace_id": format(root.get_span_context().trace_id, "032x"),
                    "span_ids": span_ids,
                    "error": bool(error),
                    "flagged": bool(flagged),
                    "slow": bool(slow),
                }
            )
        if args.pace_ms:
            time.sleep(args.pace_ms / 1000)
    probes = []
    for i in range(args.health_checks):
        route = ["/healthz", "/readyz", "/metrics"][i % 3]
        with tracer.start_as_current_span(f"GET {route}", kind=trace.SpanKind.SERVER) as probe:
            probe.set_attribute("http.route", route)
            probes.append(format(probe.get_span_context().trace_id, "032x"))
    provider.force_flush()
    provider.shutdown()
    json.dump(
        {"traces": sent, "health_checks": probes, "export_failures": exporter.failures},
        sys.stdout,
    )


if __name__ == "__main__":
    main()
