//! Generated code for every Partner Hub gRPC API, and the file descriptor set
//! the reflection service serves. Nothing here is written by hand but
//! [`codec`], the codec the generated clients and servers use.
//!
//! **API Boundary:** the protos in `proto/` are the public contract.

#![allow(missing_docs, clippy::large_enum_variant)] // generated code

pub mod codec;

pub mod account {
    pub mod v1 {
        tonic::include_proto!("partnerhub.account.v1");
    }
}

pub mod partnerchange {
    pub mod v1 {
        tonic::include_proto!("partnerhub.partnerchange.v1");
    }
}

pub mod permissions {
    pub mod v1 {
        tonic::include_proto!("partnerhub.permissions.v1");
    }
}

pub mod webhooks {
    pub mod v1 {
        tonic::include_proto!("partnerhub.webhooks.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Partner Hub proto, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/partnerhub_descriptor.bin"));
