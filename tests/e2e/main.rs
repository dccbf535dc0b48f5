//! End-to-end tests: the real `tailgate` binary as a separate process, driven over the network
//! by real clients (the OpenTelemetry Python SDK, tonic clients, HTTP) against in-test sinks.

#![allow(clippy::unwrap_used, reason = "a test: a panic is the failure report")]

mod agent;
mod backend;
mod bad_input;
mod cli;
mod cluster;
mod cluster_tls;
mod compression;
mod containers;
mod crash_durability;
mod exporters;
mod extensions;
mod hosts;
mod mixed_fleet;
mod otlp;
mod overload;
mod parity;
mod parity_spanmetrics;
mod parity_tracestate;
mod python_sdk;
mod red_metrics;
mod reliability;
mod sampling;
mod slow_clients;
mod support;
mod throughput_target;
mod tls;
