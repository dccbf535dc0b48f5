//! Compiles `proto/` with protox (pure Rust: no protoc to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("tailgate/cluster/v1/cluster.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    let fds = protox::compile([&file], [&root])?;
    tonic_prost_build::configure()
        // Encoded spans stay `Bytes` end to end: decoding slices tonic's receive buffer and
        // encoding takes the request the sender built, instead of a copy each way.
        .bytes(".tailgate.cluster.v1.ForwardRequest.spans")
        .bytes(".tailgate.cluster.v1.HandoffRequest.spans")
        .bytes(".tailgate.cluster.v1.ReplicateRequest.spans")
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
