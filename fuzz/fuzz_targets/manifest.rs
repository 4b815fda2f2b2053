//! `proto::manifest::parse` on any text: it never panics, and what it
//! accepts survives the trip through the wire form (`definition`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use proto::manifest;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(m) = manifest::parse(text) {
        let again = manifest::parse_definition(&m.to_definition())
            .expect("a parsed manifest's definition parses");
        assert_eq!(again, m, "the definition changed the manifest");
    }
});
