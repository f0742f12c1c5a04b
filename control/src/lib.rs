//! control: the `zos` command line and the control services layered on the data plane.
//!
//! Each subcommand group lives in its own module (`stor`, `flist`, `vm`) and only parses
//! arguments and calls into the library crates; the work itself is done there.
