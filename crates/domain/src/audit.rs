//! The tamper-evident audit trail: append-only records, each carrying the SHA-256 of the
//! one before it, and `verify`, which names the first altered, removed or reordered record.
//!
//! The hash covers a length-prefixed binary encoding of every field but `hash` (see
//! [`AuditRecord::compute_hash`]) rather than canonical JSON of the whole record: field
//! boundaries cannot be forged by content (a resource `"a","action":"x"` stays one field),
//! integers are fixed-width big-endian, and no JSON canonicalization rules (number
//! formats, escapes, key order) have to agree across stores for the typed fields. Only the
//! free-form `details` is JSON, written canonically (keys sorted at every level, no
//! whitespace, serde_json's escapes) by [`canonical_json`] and stored in that form, so it
//! comes back byte for byte from any store.

use std::fmt;

use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// The `prev_hash` of the first record.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// The `seq` of the first record; each next record is one more.
pub const FIRST_SEQ: u64 = 1;
/// Longest action name, in bytes.
pub const MAX_ACTION_BYTES: usize = 64;
/// Longest actor id or resource, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Largest `details`, in bytes of canonical JSON.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Domain tag hashed first, so a future encoding cannot collide with this one.
const HASH_DOMAIN: &[u8] = b"ferrobank.audit.v1";

/// Why an audit entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// The action is not lowercase dotted words (`payment.created`) within the bound.
    #[error("invalid audit action {0:?}: lowercase dotted words, at most 64 bytes")]
    InvalidAction(String),
    /// An actor id or resource is empty or longer than the bound.
    #[error("invalid audit {field}: 1 to 256 bytes")]
    InvalidName {
        /// Which field.
        field: &'static str,
    },
    /// `details` is larger than [`MAX_DETAILS_BYTES`].
    #[error("audit details of {bytes} bytes exceed {MAX_DETAILS_BYTES}")]
    DetailsTooLarge {
        /// Size of the canonical JSON.
        bytes: usize,
    },
    /// A stored field does not parse (a bug or tampering).
    #[error("stored audit field {field} does not parse: {value:?}")]
    Corrupt {
        /// Which field.
        field: &'static str,
        /// What was found.
        value: String,
    },
}

/// What an action was done as: a person (the token's `sub`) or a service.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditActor {
    /// A subject of the identity provider.
    Subject(String),
    /// A service acting on its own (the payment worker, the relay).
    Service(String),
    /// A caller nobody vouched for (no token, or a refused one): denied requests.
    Anonymous,
}

impl AuditActor {
    /// A subject, bounded.
    pub fn subject(id: impl Into<String>) -> Result<Self, AuditError> {
        Ok(Self::Subject(bounded_name("actor", id.into())?))
    }

    /// A service, bounded.
    pub fn service(id: impl Into<String>) -> Result<Self, AuditError> {
        Ok(Self::Service(bounded_name("actor", id.into())?))
    }

    /// Rebuilds an actor from its stored kind and id.
    pub fn from_parts(kind: &str, id: &str) -> Result<Self, AuditError> {
        match kind {
            "subject" => Ok(Self::Subject(id.to_owned())),
            "service" => Ok(Self::Service(id.to_owned())),
            "anonymous" => Ok(Self::Anonymous),
            other => Err(AuditError::Corrupt { field: "actor_kind", value: other.to_owned() }),
        }
    }

    /// `subject`, `service` or `anonymous`, as stored.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Subject(_) => "subject",
            Self::Service(_) => "service",
            Self::Anonymous => "anonymous",
        }
    }

    /// The subject or service id; `anonymous` for [`AuditActor::Anonymous`].
    pub fn id(&self) -> &str {
        match self {
            Self::Subject(id) | Self::Service(id) => id,
            Self::Anonymous => "anonymous",
        }
    }
}

/// A dotted action name such as `payment.created` or `access.denied`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AuditAction(String);

impl AuditAction {
    /// Parses `word(.word)+` of `[a-z0-9_]`, at most [`MAX_ACTION_BYTES`].
    pub fn parse(value: &str) -> Result<Self, AuditError> {
        let words_ok = value.split('.').all(|word| {
            !word.is_empty()
                && word.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        if value.len() <= MAX_ACTION_BYTES && value.contains('.') && words_ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(AuditError::InvalidAction(value.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// It took effect.
    Success,
    /// It was refused by authorization.
    Denied,
    /// It was attempted and failed.
    Failed,
}

impl AuditOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Denied => "denied",
            Self::Failed => "failed",
        }
    }

    /// Parses a stored name.
    pub fn parse(value: &str) -> Result<Self, AuditError> {
        match value {
            "success" => Ok(Self::Success),
            "denied" => Ok(Self::Denied),
            "failed" => Ok(Self::Failed),
            other => Err(AuditError::Corrupt { field: "outcome", value: other.to_owned() }),
        }
    }
}

/// What a caller asks to record; the store assigns `seq` and the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAuditEntry {
    /// Unique id of the record (chosen by the caller, so a retry can be recognised).
    pub id: Uuid,
    /// When it happened, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who.
    pub actor: AuditActor,
    /// What.
    pub action: AuditAction,
    /// On what, e.g. `account/0191...` or `/api/accounts`.
    pub resource: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Free-form context (amounts, reasons), bounded.
    pub details: Value,
}

impl NewAuditEntry {
    /// Checks the bounds of `resource` and `details`.
    pub fn new(
        id: Uuid,
        at_ms: i64,
        actor: AuditActor,
        action: AuditAction,
        resource: impl Into<String>,
        outcome: AuditOutcome,
        details: Value,
    ) -> Result<Self, AuditError> {
        let resource = bounded_name("resource", resource.into())?;
        let bytes = canonical_json(&details).len();
        if bytes > MAX_DETAILS_BYTES {
            return Err(AuditError::DetailsTooLarge { bytes });
        }
        Ok(Self { id, at_ms, actor, action, resource, outcome, details })
    }
}

/// One link of the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Position in the stream, from [`FIRST_SEQ`], without gaps.
    pub seq: u64,
    /// Unique id.
    pub id: Uuid,
    /// When, milliseconds since the Unix epoch.
    pub at_ms: i64,
    /// Who.
    pub actor: AuditActor,
    /// What.
    pub action: AuditAction,
    /// On what.
    pub resource: String,
    /// How it ended.
    pub outcome: AuditOutcome,
    /// Free-form context.
    pub details: Value,
    /// `hash` of the record before ([`GENESIS_HASH`] for the first).
    pub prev_hash: [u8; 32],
    /// SHA-256 of everything above ([`AuditRecord::compute_hash`]).
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// SHA-256 over the domain tag, then `seq`, `id`, `at_ms`, actor kind and id, action,
    /// resource, outcome, canonical `details` and `prev_hash`: integers as fixed-width
    /// big-endian, every variable field as a `u64` big-endian length followed by its bytes.
    pub fn compute_hash(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(HASH_DOMAIN);
        hasher.update(self.seq.to_be_bytes());
        hasher.update(self.id.as_bytes());
        hasher.update(self.at_ms.to_be_bytes());
        for field in [
            self.actor.kind().as_bytes(),
            self.actor.id().as_bytes(),
            self.action.as_str().as_bytes(),
            self.resource.as_bytes(),
            self.outcome.as_str().as_bytes(),
            canonical_json(&self.details).as_bytes(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.update(self.prev_hash);
        hasher.finalize().into()
    }
}

/// The end of a chain: what the next record links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// `seq` of the last record, 0 when the chain is empty.
    pub seq: u64,
    /// `hash` of the last record, [`GENESIS_HASH`] when empty.
    pub hash: [u8; 32],
}

impl ChainHead {
    /// The head of an empty chain.
    pub const GENESIS: Self = Self { seq: FIRST_SEQ - 1, hash: GENESIS_HASH };

    /// The head after `record`.
    pub fn of(record: &AuditRecord) -> Self {
        Self { seq: record.seq, hash: record.hash }
    }

    /// Links `entry` after this head.
    pub fn next(&self, entry: NewAuditEntry) -> AuditRecord {
        let mut record = AuditRecord {
            seq: self.seq + 1,
            id: entry.id,
            at_ms: entry.at_ms,
            actor: entry.actor,
            action: entry.action,
            resource: entry.resource,
            outcome: entry.outcome,
            details: entry.details,
            prev_hash: self.hash,
            hash: [0; 32],
        };
        record.hash = record.compute_hash();
        record
    }

    /// Links `entries` in order after this head, except those whose id is among `stored`
    /// (records already in the chain) or earlier in `entries`: returns every entry's record
    /// in the order of `entries` (a repeated id gets the record stored first) and the new
    /// links, in chain order, which the caller stores.
    pub fn link_all(
        self,
        entries: Vec<NewAuditEntry>,
        stored: Vec<AuditRecord>,
    ) -> (Vec<AuditRecord>, Vec<AuditRecord>) {
        let mut known: std::collections::HashMap<Uuid, AuditRecord> =
            stored.into_iter().map(|r| (r.id, r)).collect();
        let mut head = self;
        let mut all = Vec::with_capacity(entries.len());
        let mut new = Vec::new();
        for entry in entries {
            let record = match known.get(&entry.id) {
                Some(record) => record.clone(),
                None => {
                    let record = head.next(entry);
                    head = Self::of(&record);
                    known.insert(record.id, record.clone());
                    new.push(record.clone());
                    record
                }
            };
            all.push(record);
        }
        (all, new)
    }
}

/// The first place where a chain is not what was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    /// The record's content does not match its hash.
    #[error("record seq {seq} (id {id}) was altered: its content does not match its hash")]
    Altered {
        /// The record's seq as stored.
        seq: u64,
        /// The record's id as stored.
        id: Uuid,
    },
    /// The record matches its own hash, but the next record links to a different one: it
    /// was altered and re-hashed, or replaced.
    #[error("record seq {seq} (id {id}) was rewritten: the record after it links to another hash")]
    Rewritten {
        /// The rewritten record's seq.
        seq: u64,
        /// Its id.
        id: Uuid,
    },
    /// A seq is missing: the record was deleted.
    #[error(
        "record seq {seq} was removed (the next record present is seq {next_seq}, id {next_id})"
    )]
    Removed {
        /// The missing seq.
        seq: u64,
        /// The seq found in its place.
        next_seq: u64,
        /// The id of the record found in its place.
        next_id: Uuid,
    },
    /// The record appears before records it should follow.
    #[error("record seq {seq} (id {id}) is out of order: found where seq {expected} belongs")]
    Reordered {
        /// The misplaced record's seq.
        seq: u64,
        /// Its id.
        id: Uuid,
        /// The seq expected at its position.
        expected: u64,
    },
}

/// Checks a whole chain in stream order, from the first record. Returns how many records
/// were verified, or the first break. A chain cut after its last record verifies: compare
/// the count (or the last hash) with a copy kept elsewhere to detect truncation.
pub fn verify<'a>(records: impl IntoIterator<Item = &'a AuditRecord>) -> Result<u64, ChainBreak> {
    verify_after(None, records)
}

/// Checks records that continue the chain after `last` (an already verified record; `None`
/// for the start of the chain), so a long stream can be verified page by page. Returns how
/// many of `records` were verified, or the first break.
pub fn verify_after<'a>(
    last: Option<&'a AuditRecord>,
    records: impl IntoIterator<Item = &'a AuditRecord>,
) -> Result<u64, ChainBreak> {
    let mut records = records.into_iter();
    let mut head = last.map_or(ChainHead::GENESIS, ChainHead::of);
    let mut previous = last;
    let mut count = 0_u64;
    while let Some(record) = records.next() {
        if record.compute_hash() != record.hash {
            return Err(ChainBreak::Altered { seq: record.seq, id: record.id });
        }
        let expected = head.seq + 1;
        if record.seq < expected {
            return Err(ChainBreak::Reordered { seq: record.seq, id: record.id, expected });
        }
        if record.seq > expected {
            // A gap is a deletion unless the missing seq turns up later (a reordering);
            // the rest is only read on this failure path.
            if records.any(|later| later.seq == expected) {
                return Err(ChainBreak::Reordered { seq: record.seq, id: record.id, expected });
            }
            return Err(ChainBreak::Removed {
                seq: expected,
                next_seq: record.seq,
                next_id: record.id,
            });
        }
        if record.prev_hash != head.hash {
            return Err(match previous {
                Some(previous) => ChainBreak::Rewritten { seq: previous.seq, id: previous.id },
                // The first record must link to genesis; anything else is itself altered.
                None => ChainBreak::Altered { seq: record.seq, id: record.id },
            });
        }
        head = ChainHead::of(record);
        previous = Some(record);
        count += 1;
    }
    Ok(count)
}

/// JSON with object keys sorted at every level and no whitespace: the form `details` is
/// hashed and stored in.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Lowercase hex of a hash, as stored.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    hash.iter().fold(String::with_capacity(64), |mut out, byte| {
        out.push_str(&format!("{byte:02x}"));
        out
    })
}

/// Parses a stored hex hash.
pub fn parse_hash(field: &'static str, hex: &str) -> Result<[u8; 32], AuditError> {
    let corrupt = || AuditError::Corrupt { field, value: hex.to_owned() };
    if hex.len() != 64 || !hex.is_ascii() {
        return Err(corrupt());
    }
    let mut hash = [0_u8; 32];
    for (i, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| corrupt())?;
    }
    Ok(hash)
}

fn bounded_name(field: &'static str, value: String) -> Result<String, AuditError> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        Err(AuditError::InvalidName { field })
    } else {
        Ok(value)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let value = serde_json::json!({"b": 1, "a": {"z": [true, null], "y": "é\""}});
        assert_eq!(canonical_json(&value), r#"{"a":{"y":"é\"","z":[true,null]},"b":1}"#);
    }

    #[test]
    fn field_boundaries_cannot_be_shifted() {
        let entry = |resource: &str, action: &str| NewAuditEntry {
            id: Uuid::nil(),
            at_ms: 0,
            actor: AuditActor::Subject("alice".into()),
            action: AuditAction(action.into()),
            resource: resource.into(),
            outcome: AuditOutcome::Success,
            details: Value::Null,
        };
        let a = ChainHead::GENESIS.next(entry("ab", "c.d"));
        let b = ChainHead::GENESIS.next(entry("a", "bc.d"));
        assert_ne!(a.hash, b.hash);
    }

    #[test]
    fn actions_are_dotted_lowercase_words() {
        assert!(AuditAction::parse("payment.created").is_ok());
        assert!(AuditAction::parse("access.denied").is_ok());
        for bad in ["payment", "Payment.created", "a..b", ".a", "a.", "a b.c"] {
            assert!(AuditAction::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes_round_trip_as_hex() {
        let hash = [0xab; 32];
        assert_eq!(parse_hash("hash", &hash_hex(&hash)), Ok(hash));
        assert!(parse_hash("hash", "zz").is_err());
    }
}
