//! The few `google.rpc` messages OTLP uses for throttling: `Status` with a `RetryInfo` detail.

use std::time::Duration;

use prost::Message;

#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

pub const RETRY_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.RetryInfo";

/// Encodes a `google.rpc.Status` carrying a `RetryInfo` with `delay`.
pub fn status_with_retry_info(code: i32, message: &str, delay: Duration) -> Vec<u8> {
    let info = RetryInfo {
        retry_delay: Some(ProtoDuration {
            seconds: delay.as_secs() as i64,
            nanos: delay.subsec_nanos() as i32,
        }),
    };
    RpcStatus {
        code,
        message: message.to_string(),
        details: vec![ProtoAny {
            type_url: RETRY_INFO_TYPE_URL.into(),
            value: info.encode_to_vec(),
        }],
    }
    .encode_to_vec()
}

/// The `RetryInfo` delay inside an encoded `google.rpc.Status`, if any.
pub fn retry_delay(status_details: &[u8]) -> Option<Duration> {
    let status = RpcStatus::decode(status_details).ok()?;
    let any = status
        .details
        .iter()
        .find(|d| d.type_url == RETRY_INFO_TYPE_URL)?;
    let d = RetryInfo::decode(any.value.as_slice()).ok()?.retry_delay?;
    Some(Duration::new(
        d.seconds.max(0) as u64,
        d.nanos.max(0) as u32,
    ))
}
