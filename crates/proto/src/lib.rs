//! Generated code for every Partner Hub gRPC API, and the file descriptor set
//! the reflection service serves. Nothing here is written by hand but
//! [`codec`], the codec the generated clients and servers use, and
//! [`encoded`], a message sent as bytes encoded beforehand.
//!
//! **API Boundary:** the protos in `proto/` are the public contract.

#![allow(missing_docs, clippy::large_enum_variant)] // generated code

pub mod codec;
pub mod encoded;

pub mod account {
    pub mod v1 {
        tonic::include_proto!("partnerhub.account.v1");
    }
}

pub mod partnerchange {
    pub mod v1 {
        tonic::include_proto!("partnerhub.partnerchange.v1");

        /// The partner change server as it is served: the same service, whose
        /// event stream sends each message encoded beforehand
        /// ([`crate::encoded::EncodedMessage`]), so that an event going to a
        /// thousand subscribers is encoded once, not a thousand times. Clients
        /// use [`partner_change_service_client`] and get the usual messages.
        pub mod encoded {
            include!(concat!(env!("OUT_DIR"), "/encoded/partnerhub.partnerchange.v1.rs"));
        }
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
