//! Pod records as read from disk (`riklet::state::Store::decode`): any
//! bytes, never a panic, and what decodes survives encode and decode.
#![no_main]

use libfuzzer_sys::fuzz_target;
use riklet::state::Store;

fuzz_target!(|data: &[u8]| {
    if let Ok(pod) = Store::decode(data) {
        let again = Store::decode(&Store::encode(&pod)).expect("an encoded record decodes");
        assert_eq!(again, pod, "encode and decode changed the record");
    }
});
