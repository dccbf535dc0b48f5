//! Compressed OTLP payloads: the encodings the collector's receivers accept and its exporters
//! send — HTTP `Content-Encoding` bodies and gRPC messages (`grpc-encoding`).
//!
//! Every decoder is bounded: a small body that claims to inflate to gigabytes (a zip bomb)
//! stops at the caller's limit, never allocating more than `max_bytes + 1`.
//!
//! tonic compresses and decompresses gzip and zstd messages itself; it has no snappy, which
//! the collector's gRPC exporters offer. [`decode_grpc_messages`] and [`encode_grpc_messages`]
//! rewrite a gRPC body's length-prefixed messages between snappy and plain, so that a layer
//! in front of tonic can speak it.
//!
//! Snappy has two formats and the collector uses both names: `Content-Encoding: snappy` is
//! the block format (what the collector sends), but older collectors sent the framing format
//! under that name, so a `snappy` body is read in whichever format it starts with, as the
//! collector's receivers do; `x-snappy-framed` is the framing format. gRPC's `snappy` is
//! the framing format (the collector's registered compressor).

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

/// Largest zstd window a decoder allocates: 8 MiB, what every standard level (1–19) uses at
/// most. A frame made with `--ultra` or `--long` is refused rather than given 128 MiB or more
/// per request.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// zstd's default level, as the collector's `SpeedDefault`.
pub const ZSTD_LEVEL: i32 = 3;

/// A payload encoding Tailgate reads (every one) and writes (all but [`Encoding::Zlib`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
    /// `snappy`: written in the block format; read in either format (see the module docs).
    Snappy,
    /// `x-snappy-framed`: snappy's framing format.
    SnappyFramed,
    /// `deflate` or `zlib`: a zlib stream, as the collector reads both names.
    Zlib,
}

/// The `Content-Encoding`s an OTLP/HTTP receiver accepts, for error messages.
pub const HTTP_ENCODINGS: &str = "gzip, zstd, snappy, x-snappy-framed, deflate, zlib";

/// The first chunk of every snappy framing-format stream: the stream identifier.
const SNAPPY_STREAM_IDENTIFIER: &[u8] = b"\xff\x06\x00\x00sNaPpY";

/// gRPC's length-prefixed message header: a compressed flag and a big-endian u32 length.
const GRPC_MESSAGE_HEADER_BYTES: usize = 5;

impl Encoding {
    /// The encoding a `Content-Encoding` or `grpc-encoding` value names; `None` for one this
    /// crate does not read. Empty and `identity` are no encoding.
    pub fn from_name(name: &str) -> Option<Encoding> {
        let name = name.trim();
        Some(match name.to_ascii_lowercase().as_str() {
            "" | "identity" | "none" => Encoding::Identity,
            "gzip" | "x-gzip" => Encoding::Gzip,
            "zstd" => Encoding::Zstd,
            "snappy" => Encoding::Snappy,
            "x-snappy-framed" => Encoding::SnappyFramed,
            "deflate" | "zlib" => Encoding::Zlib,
            _ => return None,
        })
    }

    /// The name this encoding goes by on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Zstd => "zstd",
            Encoding::Snappy => "snappy",
            Encoding::SnappyFramed => "x-snappy-framed",
            Encoding::Zlib => "deflate",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("invalid {encoding} body: {message}")]
    Invalid {
        encoding: &'static str,
        message: String,
    },
    #[error("decompressed body exceeds {limit} bytes")]
    TooLarge { limit: usize },
}

fn invalid(encoding: Encoding, e: impl std::fmt::Display) -> DecompressError {
    DecompressError::Invalid {
        encoding: encoding.name(),
        message: e.to_string(),
    }
}

/// `body` decoded, at most `max_bytes` of it.
pub fn decompress(
    encoding: Encoding,
    body: &[u8],
    max_bytes: usize,
) -> Result<Vec<u8>, DecompressError> {
    match encoding {
        Encoding::Identity if body.len() > max_bytes => {
            Err(DecompressError::TooLarge { limit: max_bytes })
        }
        Encoding::Identity => Ok(body.to_vec()),
        Encoding::Gzip => read_bounded(encoding, flate2::read::GzDecoder::new(body), max_bytes),
        Encoding::Zlib => read_bounded(encoding, flate2::read::ZlibDecoder::new(body), max_bytes),
        Encoding::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::with_buffer(body).map_err(|e| invalid(encoding, e))?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(|e| invalid(encoding, e))?;
            read_bounded(encoding, decoder, max_bytes)
        }
        Encoding::SnappyFramed => {
            read_bounded(encoding, snap::read::FrameDecoder::new(body), max_bytes)
        }
        Encoding::Snappy if body.starts_with(SNAPPY_STREAM_IDENTIFIER) => {
            read_bounded(encoding, snap::read::FrameDecoder::new(body), max_bytes)
        }
        Encoding::Snappy => {
            // The block format states its length up front: check it before allocating.
            let len = snap::raw::decompress_len(body).map_err(|e| invalid(encoding, e))?;
            if len > max_bytes {
                return Err(DecompressError::TooLarge { limit: max_bytes });
            }
            snap::raw::Decoder::new()
                .decompress_vec(body)
                .map_err(|e| invalid(encoding, e))
        }
    }
}

fn read_bounded(
    encoding: Encoding,
    reader: impl Read,
    max_bytes: usize,
) -> Result<Vec<u8>, DecompressError> {
    let mut out = Vec::new();
    reader
        .take(max_bytes as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| invalid(encoding, e))?;
    if out.len() > max_bytes {
        return Err(DecompressError::TooLarge { limit: max_bytes });
    }
    Ok(out)
}

/// `body` encoded. gzip and zlib at their fastest level: an exporter compresses every batch
/// it sends, and the fast level costs a third of the default's CPU for a few percent more
/// bytes. Writing into memory fails only if the encoder itself does.
pub fn compress(encoding: Encoding, body: &[u8]) -> std::io::Result<Vec<u8>> {
    match encoding {
        Encoding::Identity => Ok(body.to_vec()),
        Encoding::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            gz.write_all(body)?;
            gz.finish()
        }
        Encoding::Zlib => {
            let mut z = flate2::write::ZlibEncoder::new(
                Vec::with_capacity(body.len() / 4),
                flate2::Compression::fast(),
            );
            z.write_all(body)?;
            z.finish()
        }
        Encoding::Zstd => zstd::bulk::compress(body, ZSTD_LEVEL),
        Encoding::Snappy => snap::raw::Encoder::new()
            .compress_vec(body)
            .map_err(std::io::Error::other),
        Encoding::SnappyFramed => {
            let mut w = snap::write::FrameEncoder::new(Vec::with_capacity(body.len() / 2));
            w.write_all(body)?;
            w.into_inner()
                .map_err(snap::write::IntoInnerError::into_error)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GrpcMessageError {
    #[error("truncated gRPC message: {0} bytes after the last whole message")]
    Truncated(usize),
    #[error("invalid gRPC compressed flag {0}")]
    Flag(u8),
    #[error("more than one message in a unary call")]
    Trailing,
    #[error(transparent)]
    Decompress(#[from] DecompressError),
    #[error("compressing a gRPC message: {0}")]
    Compress(std::io::Error),
}

/// The length-prefixed messages of a gRPC body: (compressed flag, message).
fn grpc_messages(body: &[u8]) -> impl Iterator<Item = Result<(u8, &[u8]), GrpcMessageError>> {
    let mut rest = body;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() < GRPC_MESSAGE_HEADER_BYTES {
            let n = rest.len();
            rest = &[];
            return Some(Err(GrpcMessageError::Truncated(n)));
        }
        let flag = rest[0];
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        let Some(message) = rest.get(GRPC_MESSAGE_HEADER_BYTES..GRPC_MESSAGE_HEADER_BYTES + len)
        else {
            let n = rest.len();
            rest = &[];
            return Some(Err(GrpcMessageError::Truncated(n)));
        };
        rest = &rest[GRPC_MESSAGE_HEADER_BYTES + len..];
        Some(Ok((flag, message)))
    })
}

fn put_grpc_message(out: &mut BytesMut, compressed: bool, message: &[u8]) {
    out.put_u8(u8::from(compressed));
    out.put_u32(u32::try_from(message.len()).expect("a gRPC message is under 4 GiB"));
    out.put_slice(message);
}

/// A gRPC body whose messages `encoding` compressed, rewritten with every message plain;
/// each message at most `max_message_bytes` once decoded.
pub fn decode_grpc_messages(
    encoding: Encoding,
    body: &[u8],
    max_message_bytes: usize,
) -> Result<Bytes, GrpcMessageError> {
    let mut out = BytesMut::with_capacity(body.len().saturating_mul(3).min(max_message_bytes));
    for message in grpc_messages(body) {
        match message? {
            (0, plain) => put_grpc_message(&mut out, false, plain),
            (1, compressed) => {
                let plain = decompress_grpc_message(encoding, compressed, max_message_bytes)?;
                put_grpc_message(&mut out, false, &plain);
            }
            (flag, _) => return Err(GrpcMessageError::Flag(flag)),
        }
    }
    Ok(out.freeze())
}

/// One gRPC message compressed by `encoding` (as its `grpc-encoding` names it), decoded: at
/// most `max_bytes`.
pub fn decompress_grpc_message(
    encoding: Encoding,
    message: &[u8],
    max_bytes: usize,
) -> Result<Vec<u8>, DecompressError> {
    decompress(grpc_stream_encoding(encoding), message, max_bytes).map_err(|e| match e {
        // Named as the sender named it, not by its snappy format.
        DecompressError::Invalid { message, .. } => DecompressError::Invalid {
            encoding: encoding.name(),
            message,
        },
        too_large => too_large,
    })
}

/// The one message of a unary call's body: whether it is compressed, and the message, a
/// slice of `body` (no copy).
pub fn single_grpc_message(body: &Bytes) -> Result<(bool, Bytes), GrpcMessageError> {
    let mut messages = grpc_messages(body);
    let (flag, message) = messages.next().ok_or(GrpcMessageError::Truncated(0))??;
    if messages.next().is_some() {
        return Err(GrpcMessageError::Trailing);
    }
    let compressed = match flag {
        0 => false,
        1 => true,
        other => return Err(GrpcMessageError::Flag(other)),
    };
    Ok((compressed, body.slice_ref(message)))
}

/// `message` framed as a gRPC body of one plain message.
pub fn grpc_message(message: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(GRPC_MESSAGE_HEADER_BYTES + message.len());
    put_grpc_message(&mut out, false, message);
    out.freeze()
}

/// A gRPC body of plain messages rewritten with every message compressed by `encoding`.
pub fn encode_grpc_messages(encoding: Encoding, body: &[u8]) -> Result<Bytes, GrpcMessageError> {
    let mut out = BytesMut::with_capacity(body.len() / 2 + GRPC_MESSAGE_HEADER_BYTES);
    for message in grpc_messages(body) {
        match message? {
            (0, plain) => {
                let compressed = compress(grpc_stream_encoding(encoding), plain)
                    .map_err(GrpcMessageError::Compress)?;
                put_grpc_message(&mut out, true, &compressed);
            }
            (flag, _) => return Err(GrpcMessageError::Flag(flag)),
        }
    }
    Ok(out.freeze())
}

/// gRPC's `snappy` is the framing format (grpc-go's compressor, which the collector registers).
fn grpc_stream_encoding(encoding: Encoding) -> Encoding {
    match encoding {
        Encoding::Snappy => Encoding::SnappyFramed,
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Encoding; 6] = [
        Encoding::Identity,
        Encoding::Gzip,
        Encoding::Zstd,
        Encoding::Snappy,
        Encoding::SnappyFramed,
        Encoding::Zlib,
    ];

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i / 997) as u8).collect()
    }

    #[test]
    fn every_encoding_round_trips_and_names_itself() {
        let body = payload(100_000);
        for encoding in ALL {
            let packed = compress(encoding, &body).unwrap();
            assert_eq!(
                decompress(encoding, &packed, body.len()).unwrap(),
                body,
                "{encoding:?}"
            );
            assert_eq!(Encoding::from_name(encoding.name()), Some(encoding));
        }
        assert_eq!(Encoding::from_name(" ZSTD "), Some(Encoding::Zstd));
        assert_eq!(Encoding::from_name("zlib"), Some(Encoding::Zlib));
        assert_eq!(Encoding::from_name("br"), None);
    }

    #[test]
    fn a_snappy_body_is_read_in_either_format() {
        let body = payload(50_000);
        let framed = compress(Encoding::SnappyFramed, &body).unwrap();
        let block = compress(Encoding::Snappy, &body).unwrap();
        assert!(framed.starts_with(SNAPPY_STREAM_IDENTIFIER));
        assert!(!block.starts_with(SNAPPY_STREAM_IDENTIFIER));
        assert_eq!(
            decompress(Encoding::Snappy, &framed, body.len()).unwrap(),
            body
        );
        assert_eq!(
            decompress(Encoding::Snappy, &block, body.len()).unwrap(),
            body
        );
        // The framing name does not read a block.
        assert!(matches!(
            decompress(Encoding::SnappyFramed, &block, body.len()),
            Err(DecompressError::Invalid { .. })
        ));
    }

    #[test]
    fn a_body_inflating_past_the_limit_stops_at_it_in_every_encoding() {
        let zeros = vec![0u8; 4 << 20];
        for encoding in ALL {
            let packed = compress(encoding, &zeros).unwrap();
            match decompress(encoding, &packed, 1 << 20) {
                Err(DecompressError::TooLarge { limit }) => assert_eq!(limit, 1 << 20),
                other => panic!("{encoding:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn garbage_is_invalid_and_named_by_its_encoding() {
        for encoding in ALL.into_iter().filter(|e| *e != Encoding::Identity) {
            match decompress(encoding, b"\x01\x02 not compressed at all", 1 << 20) {
                Err(DecompressError::Invalid { encoding: name, .. }) => {
                    assert_eq!(name, encoding.name());
                }
                other => panic!("{encoding:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn zstd_frames_needing_a_window_past_the_limit_are_refused() {
        let mut encoder = zstd::bulk::Compressor::new(19).unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::WindowLog(27))
            .unwrap();
        encoder
            .set_parameter(zstd::zstd_safe::CParameter::EnableLongDistanceMatching(
                true,
            ))
            .unwrap();
        // A window is only as large as the content needs: make the content need it.
        let body = payload(20 << 20);
        let packed = encoder.compress(&body).unwrap();
        assert!(matches!(
            decompress(Encoding::Zstd, &packed, 64 << 20),
            Err(DecompressError::Invalid { .. })
        ));
    }

    fn grpc_body(messages: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for (flag, m) in messages {
            out.put_u8(*flag);
            out.put_u32(m.len() as u32);
            out.put_slice(m);
        }
        out.to_vec()
    }

    #[test]
    fn grpc_messages_round_trip_through_snappy_in_the_framing_format() {
        let (a, b) = (payload(3000), payload(10));
        let plain = grpc_body(&[(0, &a), (0, &b), (0, b"")]);
        let packed = encode_grpc_messages(Encoding::Snappy, &plain).unwrap();
        let messages: Vec<_> = grpc_messages(&packed).map(Result::unwrap).collect();
        assert_eq!(messages.len(), 3);
        for (flag, _) in &messages {
            assert_eq!(*flag, 1);
        }
        // An empty message compresses to an empty stream, as grpc-go's writer makes it.
        for (_, m) in &messages[..2] {
            assert!(
                m.starts_with(SNAPPY_STREAM_IDENTIFIER),
                "gRPC snappy is framed"
            );
        }
        assert_eq!(
            decode_grpc_messages(Encoding::Snappy, &packed, 1 << 20).unwrap(),
            plain
        );
        // Plain messages pass through a decode untouched.
        assert_eq!(
            decode_grpc_messages(Encoding::Snappy, &plain, 1 << 20).unwrap(),
            plain
        );
    }

    #[test]
    fn a_unary_body_holds_exactly_one_message_taken_without_a_copy() {
        let body = Bytes::from(grpc_body(&[(0, b"hello")]));
        let (compressed, message) = single_grpc_message(&body).unwrap();
        assert!(!compressed);
        assert_eq!(&message[..], b"hello");
        assert_eq!(message.as_ptr(), body[5..].as_ptr(), "a slice of the body");
        assert_eq!(grpc_message(b"hello"), body);
        let packed = Bytes::from(grpc_body(&[(1, b"xyz")]));
        assert!(single_grpc_message(&packed).unwrap().0);
        assert!(matches!(
            single_grpc_message(&Bytes::from(grpc_body(&[(0, b"a"), (0, b"b")]))),
            Err(GrpcMessageError::Trailing)
        ));
        assert!(matches!(
            single_grpc_message(&Bytes::new()),
            Err(GrpcMessageError::Truncated(0))
        ));
        assert!(matches!(
            single_grpc_message(&Bytes::from(grpc_body(&[(2, b"a")]))),
            Err(GrpcMessageError::Flag(2))
        ));
    }

    #[test]
    fn broken_grpc_bodies_are_refused_with_what_is_wrong() {
        let whole = grpc_body(&[(0, b"abc")]);
        assert!(matches!(
            decode_grpc_messages(Encoding::Snappy, &whole[..6], 1 << 20),
            Err(GrpcMessageError::Truncated(6))
        ));
        assert!(matches!(
            decode_grpc_messages(Encoding::Snappy, &whole[..3], 1 << 20),
            Err(GrpcMessageError::Truncated(3))
        ));
        assert!(matches!(
            decode_grpc_messages(Encoding::Snappy, &grpc_body(&[(7, b"x")]), 1 << 20),
            Err(GrpcMessageError::Flag(7))
        ));
        let big = encode_grpc_messages(Encoding::Snappy, &grpc_body(&[(0, &[0; 5000])])).unwrap();
        assert!(matches!(
            decode_grpc_messages(Encoding::Snappy, &big, 4096),
            Err(GrpcMessageError::Decompress(DecompressError::TooLarge {
                limit: 4096
            }))
        ));
    }
}
