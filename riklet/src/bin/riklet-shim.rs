//! `riklet-shim --run-dir DIR`: the shim of one bare-process container,
//! started by the riklet (see the `riklet_shim` crate). It uses nothing of
//! the riklet's library, so the binary holds only the shim.
//!
//! The command line is one fixed flag, written by the riklet: it is read
//! by hand rather than with clap, whose code would be loaded at every
//! container start for nothing.

use std::path::Path;

fn main() {
    let mut args = std::env::args_os().skip(1);
    match (args.next(), args.next(), args.next()) {
        (Some(flag), Some(dir), None) if flag == "--run-dir" => {
            // Before any thread exists: the shim forks.
            riklet_shim::main(Path::new(&dir))
        }
        _ => {
            eprintln!(
                "usage: riklet-shim --run-dir DIR\n\
                 (the shim of one container, started by the riklet)"
            );
            std::process::exit(2)
        }
    }
}
