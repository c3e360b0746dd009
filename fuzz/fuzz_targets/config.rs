//! The config loader (`sluice::Config::parse`, what `sluice check` and a reload run) on
//! arbitrary text: it answers a config or errors that each say what is wrong, and never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = sluice::Config::parse(text) {
        assert!(!errors.0.is_empty(), "a refused config says why");
        for e in &errors.0 {
            assert!(!e.message.is_empty(), "an error has a message: {e:?}");
        }
    }
});
