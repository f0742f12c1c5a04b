//! `log`: the on-disk formats of a namespace: records, segment files and the index snapshot.
//! Pure encoding, decoding and scanning; it knows nothing of namespaces' rules or of clients.

pub mod archive;
pub mod index_file;
pub mod record;
pub mod segment;
