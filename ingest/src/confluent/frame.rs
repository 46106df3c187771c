//! The Confluent wire framing, and nothing else: a magic byte, the writer schema's registry id, the
//! Avro datum.
//!
//! ```text
//!   byte 0        bytes 1..5              bytes 5..
//!   0x00 (magic)  schema id, u32 big-end  Avro datum written with the registry's schema <id>
//! ```

use super::ConfluentError;

/// The first byte of every Confluent-framed value.
pub const MAGIC: u8 = 0;
/// Magic byte plus the 4-byte schema id.
pub const HEADER_LEN: usize = 5;

/// Splits a Confluent-framed value into its schema id and the Avro datum after the header.
pub fn parse_frame(bytes: &[u8]) -> Result<(u32, &[u8]), ConfluentError> {
    if bytes.len() < HEADER_LEN {
        // A non-empty value that does not start with the magic byte is the more useful diagnosis.
        return Err(match bytes.first() {
            Some(&b) if b != MAGIC => ConfluentError::BadMagic(b),
            _ => ConfluentError::TooShort(bytes.len()),
        });
    }
    if bytes[0] != MAGIC {
        return Err(ConfluentError::BadMagic(bytes[0]));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Prefixes a datum with the Confluent header for `schema_id`.
pub fn frame(schema_id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + datum.len());
    out.push(MAGIC);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse() {
        assert_eq!(
            parse_frame(&[0, 0, 0, 1, 2, 9, 9]),
            Ok((258, &[9u8, 9][..]))
        );
        assert_eq!(
            parse_frame(&[0, 0xff, 0xff, 0xff, 0xff]),
            Ok((u32::MAX, &[][..]))
        );
        assert_eq!(parse_frame(&frame(7, b"abc")), Ok((7, &b"abc"[..])));
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        assert_eq!(parse_frame(&[]), Err(ConfluentError::TooShort(0)));
        assert_eq!(parse_frame(&[0, 0, 1]), Err(ConfluentError::TooShort(3)));
        assert_eq!(
            parse_frame(&[0x7b, 0x22]),
            Err(ConfluentError::BadMagic(0x7b))
        );
        assert_eq!(
            parse_frame(b"hello world"),
            Err(ConfluentError::BadMagic(b'h'))
        );
        let err = parse_frame(&[1, 0, 0, 0, 1, 2]).unwrap_err();
        assert!(err.to_string().contains("0x01"), "{err}");
        assert!(!err.is_retryable());
    }
}
