//! End-to-end tests live in `tests/*.rs`; run them with `cargo test -p riklet-e2e` as root.
