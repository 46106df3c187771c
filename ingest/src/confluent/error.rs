//! [`ConfluentError`]: the verdict on one Confluent-framed record that did not decode, poison or
//! "retry later".
//!
//! Failures come in two kinds, told apart by [`ConfluentError::is_retryable`]: the record is bad
//! (poison: it becomes a dead letter), or the registry cannot be asked right now (the record may be
//! fine: retry later, never dead-letter it). The text is what lands in `dead_letters.reason`, so it
//! says what was found.

use thiserror::Error;

use super::registry::RegistryError;
use crate::avro::DecodeError;

/// Why a Confluent-framed record could not be decoded.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum ConfluentError {
    #[error("record value is {0} bytes, shorter than the 5-byte Confluent header (magic byte + schema id)")]
    TooShort(usize),
    #[error("first byte is 0x{0:02x}, not the Confluent magic byte 0x00 (a bare Avro datum, or another format?)")]
    BadMagic(u8),
    /// The registry answered 404 for the record's schema id.
    #[error("schema id {0} is unknown to the schema registry (404)")]
    UnknownSchemaId(u32),
    /// The registry could not be asked (see [`RegistryError::is_retryable`]): says nothing about the
    /// record when retryable.
    #[error(transparent)]
    Registry(RegistryError),
    #[error("writer schema {id} from the registry is not a usable Avro schema: {reason}")]
    BadWriterSchema { id: u32, reason: String },
    #[error("writer schema {id} cannot be resolved against the reader schema (schemas/event.avsc): {reason}")]
    Incompatible { id: u32, reason: String },
    /// The header and writer schema are fine but the datum is not (truncated, garbage, trailing
    /// bytes, or an event outside [`crate::validate`]'s domain).
    #[error("datum written with schema {id}: {error}")]
    Datum { id: u32, error: DecodeError },
}

impl ConfluentError {
    /// True when the record itself may be fine and the failure is the registry's: retry the same
    /// record later (with backoff) instead of dead-lettering it.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ConfluentError::Registry(e) if e.is_retryable())
    }
}

impl From<RegistryError> for ConfluentError {
    /// A 404 for the id is a verdict on the record; anything else stays the registry's error.
    fn from(error: RegistryError) -> ConfluentError {
        match error {
            RegistryError::UnknownSchemaId(id) => ConfluentError::UnknownSchemaId(id),
            other => ConfluentError::Registry(other),
        }
    }
}
