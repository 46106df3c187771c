//! Fuzzes [`parse_frame`], the Confluent wire-format split (magic byte 0x00, 4-byte big-endian
//! schema id, datum) that runs before any registry lookup or Avro decoding of `--format confluent`.
//!
//! Checks that it never panics, that it accepts exactly the values of at least five bytes starting
//! with the magic byte, that an accepted value is rebuilt byte for byte by [`frame`], and that every
//! rejection is a poison-record error (never "retry later") whose message can be formatted.

#![no_main]

use libfuzzer_sys::fuzz_target;
use streampulse_ingest::confluent::{frame, parse_frame, HEADER_LEN, MAGIC};

fuzz_target!(|data: &[u8]| {
    let well_formed = data.len() >= HEADER_LEN && data[0] == MAGIC;
    match parse_frame(data) {
        Ok((id, datum)) => {
            assert!(well_formed, "accepted a malformed frame");
            assert_eq!(frame(id, datum), data, "frame(parse_frame(x)) != x");
        }
        Err(e) => {
            assert!(!well_formed, "rejected a well-formed frame: {e}");
            assert!(!e.is_retryable());
            assert!(!e.to_string().is_empty());
        }
    }
});
