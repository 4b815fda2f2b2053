//! The riklet's check of a CREATE from the wire (`riklet::agent::admit`):
//! any instance id and definition, never a panic, and an accepted id is
//! safe as a file name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First byte: length of the instance id; the rest is the definition.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len).min(rest.len());
    let (id, definition) = rest.split_at(len);
    let (Ok(id), Ok(definition)) = (std::str::from_utf8(id), std::str::from_utf8(definition))
    else {
        return;
    };
    if riklet::agent::admit(id, definition).is_ok() {
        assert!(
            !id.is_empty() && !id.contains(['/', '\0', '.']),
            "admitted an id unsafe in a path: {id:?}"
        );
    }
});
