//! The PROXY protocol header parser over arbitrary bytes: never panics, never takes more
//! than it was given, and what a prefix says stays true of the whole input: a header found
//! in a prefix is found again, the same; a prefix refused means the whole is refused.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pygev_core::proxy::{parse, Parsed};

fuzz_target!(|input: &[u8]| {
    let whole = parse(input);
    if let Ok(Parsed::Done(header)) = &whole {
        assert!(header.len <= input.len());
    }
    for cut in [input.len() / 3, input.len() / 2, input.len().saturating_sub(1)] {
        match parse(&input[..cut]) {
            Ok(Parsed::Done(header)) => assert_eq!(whole, Ok(Parsed::Done(header))),
            Ok(Parsed::Incomplete) => {}
            Err(_) => assert!(whole.is_err(), "a refused prefix, an accepted whole"),
        }
    }
});
