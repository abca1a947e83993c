//! Fuzz target: `parse_head` must never panic, must respect its limits, and
//! must give the same answer for the whole input as for the input fed in
//! two parts (Partial on the prefix, unless an error is already provable).
#![no_main]

use libfuzzer_sys::fuzz_target;
use percore_server::http::{BodyKind, HEADER_SLOT, Limits, Status, parse_head};

fuzz_target!(|data: &[u8]| {
    let limits = Limits {
        max_request_line: 512,
        max_head: 2048,
        max_headers: 16,
        max_body: 1 << 20,
        ..Limits::default()
    };
    let mut h = [HEADER_SLOT; 32];
    let whole = parse_head(data, &limits, &mut h);
    if let Ok(Status::Complete(head, n)) = &whole {
        assert!(*n <= data.len() && *n <= limits.max_head);
        assert!(head.headers.len() <= limits.max_headers);
        assert!(head.version <= 1);
        if let BodyKind::Length(l) = head.body {
            assert!(l > 0 && l <= limits.max_body);
        }
        // Every strict prefix of a complete head is Partial or an error that
        // the complete head would not have had only if it is a limit error.
        let cut = data.len() / 2;
        if cut < *n {
            let mut h2 = [HEADER_SLOT; 32];
            assert_eq!(
                parse_head(&data[..cut], &limits, &mut h2),
                Ok(Status::Partial)
            );
        }
    }
});
