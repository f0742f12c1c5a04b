//! vmm-glue: vhost-user devices (virtio-fs over the flist fs core, virtio-blk over volumes)
//! and the glue that starts VMs with them.
//!
//! This crate is being built; see the vmm issues.
