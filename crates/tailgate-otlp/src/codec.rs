//! A tonic codec that moves message bodies as raw [`Bytes`].
//!
//! The receiver takes requests without decoding them into generated types (a full decode costs
//! more than the whole per-span budget; see `ARCHITECTURE.md`), and exporters send bodies they
//! built with [`crate::encode_export_request`].

use bytes::{Buf, BufMut, Bytes};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// gRPC path of the OTLP trace export method.
pub const TRACE_EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// gRPC service name of OTLP traces.
pub const TRACE_SERVICE_NAME: &str = "opentelemetry.proto.collector.trace.v1.TraceService";

/// Bodies in and out as [`Bytes`]. `max_decode_bytes` refuses larger messages with
/// `INVALID_ARGUMENT` (tonic's own limit answers `OUT_OF_RANGE`, which OTLP clients retry).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec {
    pub max_decode_bytes: Option<usize>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RawEncoder;

#[derive(Debug, Clone, Copy, Default)]
pub struct RawDecoder {
    max_decode_bytes: Option<usize>,
}

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder {
            max_decode_bytes: self.max_decode_bytes,
        }
    }
}

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        let n = src.remaining();
        if let Some(max) = self.max_decode_bytes
            && n > max
        {
            return Err(Status::invalid_argument(format!(
                "request of {n} bytes exceeds the receiver's max_recv_msg_size_mib ({} MiB)",
                max / (1024 * 1024)
            )));
        }
        Ok(Some(src.copy_to_bytes(n)))
    }
}
