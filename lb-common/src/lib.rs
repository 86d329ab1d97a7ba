//! Types and pure logic shared by the XDP program (`lb-ebpf`) and the control plane
//! (`lb-userspace`): map names, map key/value layouts, drop/pass reasons, the flow hash
//! and the table slot index. Userspace computes exactly what the kernel will do by
//! calling the same functions.
#![no_std]

pub mod csum;
pub mod decap;
pub mod hash;
pub mod maps;
pub mod reason;
pub mod types;
pub mod wire;

pub use hash::{flow_hash, table_slot, vip_filter_bit};
pub use reason::Reason;
pub use types::*;
