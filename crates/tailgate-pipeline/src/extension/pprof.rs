//! `pprof` extension: CPU profiles in the pprof protobuf format (gzip-compressed, as Go's
//! `net/http/pprof` serves them) at `/debug/pprof/profile?seconds=N`, so `go tool pprof` and
//! other pprof viewers read them unchanged.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use axum::extract::Query;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flate2::Compression;
use flate2::write::GzEncoder;
use prost::Message;

/// Sampling frequency, as Go's runtime profiler uses.
const PROFILE_HZ: i32 = 100;
/// Longest profile one request may ask for.
const PROFILE_SECONDS_MAX: u64 = 300;
const PROFILE_SECONDS_DEFAULT: u64 = 30;

#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
}

#[derive(Default)]
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Self {
        let mut s = Strings::default();
        s.get("");
        s
    }
    fn get(&mut self, v: &str) -> i64 {
        if let Some(&i) = self.index.get(v) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(v.to_string());
        self.index.insert(v.to_string(), i);
        i
    }
}

/// Samples this process for `seconds` and returns the gzipped pprof profile.
fn profile(seconds: u64) -> Result<Vec<u8>, String> {
    let guard =
        pprof::ProfilerGuard::new(PROFILE_HZ).map_err(|e| format!("cannot start profiler: {e}"))?;
    std::thread::sleep(Duration::from_secs(seconds));
    let report = guard
        .report()
        .build()
        .map_err(|e| format!("cannot build report: {e}"))?;
    let period = 1_000_000_000 / i64::from(PROFILE_HZ);
    let mut strings = Strings::new();
    let mut functions: HashMap<(String, String), u64> = HashMap::new();
    let mut function_list = Vec::new();
    let mut locations: HashMap<(u64, i64), u64> = HashMap::new();
    let mut location_list = Vec::new();
    let mut samples = Vec::new();
    for (frames, count) in &report.data {
        let mut ids = Vec::new();
        for frame in &frames.frames {
            for symbol in frame {
                let name = symbol.name();
                let file = symbol.filename().to_string();
                let fid = *functions
                    .entry((name.clone(), file.clone()))
                    .or_insert_with(|| {
                        let id = function_list.len() as u64 + 1;
                        let n = strings.get(&name);
                        function_list.push(Function {
                            id,
                            name: n,
                            system_name: n,
                            filename: strings.get(&file),
                        });
                        id
                    });
                let line = i64::from(symbol.lineno());
                let lid = *locations.entry((fid, line)).or_insert_with(|| {
                    let id = location_list.len() as u64 + 1;
                    location_list.push(Location {
                        id,
                        line: vec![Line {
                            function_id: fid,
                            line,
                        }],
                    });
                    id
                });
                ids.push(lid);
            }
        }
        let count = *count as i64;
        samples.push(Sample {
            location_id: ids,
            value: vec![count, count * period],
        });
    }
    let samples_type = strings.get("samples");
    let count_unit = strings.get("count");
    let cpu_type = strings.get("cpu");
    let ns_unit = strings.get("nanoseconds");
    let start = report
        .timing
        .start_time
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let p = Profile {
        sample_type: vec![
            ValueType {
                r#type: samples_type,
                unit: count_unit,
            },
            ValueType {
                r#type: cpu_type,
                unit: ns_unit,
            },
        ],
        sample: samples,
        location: location_list,
        function: function_list,
        string_table: strings.table,
        time_nanos: start.as_nanos() as i64,
        duration_nanos: report.timing.duration.as_nanos() as i64,
        period_type: Some(ValueType {
            r#type: cpu_type,
            unit: ns_unit,
        }),
        period,
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&p.encode_to_vec())
        .and_then(|()| gz.finish())
        .map_err(|e| format!("gzip: {e}"))
}

/// `GET /debug/pprof/profile?seconds=N`
pub async fn profile_handler(Query(q): Query<HashMap<String, String>>) -> Response {
    let seconds = match q.get("seconds").map(|s| s.parse::<u64>()) {
        None => PROFILE_SECONDS_DEFAULT,
        Some(Ok(s)) if (1..=PROFILE_SECONDS_MAX).contains(&s) => s,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("seconds must be an integer from 1 to {PROFILE_SECONDS_MAX}\n"),
            )
                .into_response();
        }
    };
    match tokio::task::spawn_blocking(move || profile(seconds)).await {
        Ok(Ok(body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"profile\"",
                ),
            ],
            body,
        )
            .into_response(),
        // pprof-rs allows one profiler per process: a concurrent request lands here.
        Ok(Err(e)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("profiler task failed: {e}\n"),
        )
            .into_response(),
    }
}
