//! Extensions: `health_check` and `pprof`, plus the `/metrics` endpoint of
//! `service.telemetry`. Each is a small HTTP server on its own address.

pub mod health;
pub mod pprof;
