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
        .compile_fds(file_descriptors.clone())?;

    // The partner change server once more, with the one difference that its
    // event stream sends messages already encoded (`encoded::EncodedMessage`):
    // one event goes to many subscribers and is encoded once for all of them.
    // Every message is the one generated above (extern paths), so no type is
    // generated twice; only the server trait and its router are.
    let mut server_only = file_descriptors;
    for file in &mut server_only.file {
        if file.name() != "partnerhub/partnerchange/v1/partner_change.proto" {
            file.service.clear();
        }
    }
    let encoded_dir = out_dir.join("encoded");
    std::fs::create_dir_all(&encoded_dir)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .out_dir(&encoded_dir)
        .codec_path("crate::codec::PartnerhubCodec")
        .extern_path(".partnerhub.account.v1", "crate::account::v1")
        .extern_path(".partnerhub.partnerchange.v1", "crate::partnerchange::v1")
        .extern_path(".partnerhub.permissions.v1", "crate::permissions::v1")
        .extern_path(".partnerhub.webhooks.v1", "crate::webhooks::v1")
        .extern_path(".partnerhub.partnerchange.v1.WatchPartnerChangeEventsResponse", "crate::encoded::EncodedMessage")
        .compile_fds(server_only)?;
    Ok(())
}
