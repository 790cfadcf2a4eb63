//! Compiles every `.proto` under the workspace's `proto/` with `protox` (pure Rust,
//! so no `protoc` binary is needed) and writes the file descriptor set that the
//! reflection service serves.

use std::{env, path::PathBuf};

const PROTO_FILES: &[&str] = &[
    "partnerhub/account/v1/account.proto",
    "partnerhub/partnerchange/v1/partner_change.proto",
    "partnerhub/permissions/v1/permissions.proto",
    "partnerhub/webhooks/v1/webhooks.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={}", proto_root.join(file).display());
    }

    let file_descriptors = protox::compile(PROTO_FILES, [&proto_root])?;
    std::fs::write(out_dir.join("partnerhub_descriptor.bin"), prost::Message::encode_to_vec(&file_descriptors))?;

    // Undecodable request bytes are INVALID_ARGUMENT, not prost's INTERNAL: see `codec`.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .codec_path("crate::codec::PartnerhubCodec")
        .compile_fds(file_descriptors)?;
    Ok(())
}
