//! The enriched activity log: one document per payment event, written for humans (who,
//! how much in the currency's own notation, to whom, what happened, when, which trace),
//! next to the audit chain. Not hash-chained: it is a read model, rebuilt from the events;
//! the audit trail is the evidence. Kept in the SQL table `activity` by default, in the
//! MongoDB collection `activity` in production; `ferrobank-adapters/tests/activity.rs` is
//! the conformance suite of both.

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use crate::ports::StoreError;

/// Most entries one [`ActivityLog::query`] returns.
pub const MAX_ACTIVITY_PAGE: u32 = 500;
/// Longest `payment_id`, `action` or `summary`, in bytes.
pub const MAX_ACTIVITY_FIELD_BYTES: usize = 512;
/// Largest enriched document, in bytes of JSON.
pub const MAX_ACTIVITY_DOCUMENT_BYTES: usize = 16 * 1024;

/// One enriched payment event.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityEntry {
    /// The event's id: appending the same event twice keeps the first entry.
    pub id: Uuid,
    /// The payment it is about.
    pub payment_id: String,
    /// When the event happened, Unix milliseconds.
    pub at_ms: i64,
    /// The event type (`transaction.completed`).
    pub action: String,
    /// One line for humans: `alice paid 12.34 EUR to Erika Mustermann: completed`.
    pub summary: String,
    /// The enriched payment: owner, formatted amount, beneficiary, status entry, time,
    /// trace id.
    pub document: Value,
}

impl ActivityEntry {
    /// Checks the bounds of the text fields and the document.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (name, value) in
            [("payment_id", &self.payment_id), ("action", &self.action), ("summary", &self.summary)]
        {
            if value.is_empty() || value.len() > MAX_ACTIVITY_FIELD_BYTES {
                return Err(StoreError::Corrupt(format!(
                    "activity {name} must be 1 to {MAX_ACTIVITY_FIELD_BYTES} bytes"
                )));
            }
        }
        let bytes = self.document.to_string().len();
        if bytes > MAX_ACTIVITY_DOCUMENT_BYTES {
            return Err(StoreError::Corrupt(format!(
                "activity document of {bytes} bytes exceeds {MAX_ACTIVITY_DOCUMENT_BYTES}"
            )));
        }
        Ok(())
    }
}

/// Position in the activity stream: entries are ordered by event time, then id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ActivityCursor {
    /// `at_ms` of the last entry seen.
    pub at_ms: i64,
    /// `id` of the last entry seen.
    pub id: Uuid,
}

impl ActivityCursor {
    /// The cursor just after `entry`.
    pub fn after(entry: &ActivityEntry) -> Self {
        Self { at_ms: entry.at_ms, id: entry.id }
    }

    /// `<at_ms>_<id>`, what the API hands out.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.at_ms, self.id)
    }

    /// Parses [`ActivityCursor::encode`]'s form.
    pub fn decode(text: &str) -> Option<Self> {
        let (at_ms, id) = text.split_once('_')?;
        Some(Self { at_ms: at_ms.parse().ok()?, id: Uuid::parse_str(id).ok()? })
    }
}

/// Filters of [`ActivityLog::query`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActivityQuery {
    /// Only this payment's entries.
    pub payment_id: Option<String>,
    /// Only entries after this cursor (the previous page's `next_after`).
    pub after: Option<ActivityCursor>,
    /// Page size, within `1..=`[`MAX_ACTIVITY_PAGE`].
    pub limit: u32,
}

/// A page of entries in (time, id) order.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityPage {
    /// The entries, oldest first.
    pub entries: Vec<ActivityEntry>,
    /// Pass as `after` for the next page; `None` when this page was the last.
    pub next_after: Option<ActivityCursor>,
}

/// Where enriched activity is kept.
#[async_trait]
pub trait ActivityLog: Send + Sync + std::fmt::Debug {
    /// Stores each of `entries` unless an entry with its id exists (a redelivered event),
    /// in one write: returns how many were new. The first entry stays as it was.
    async fn append_all(&self, entries: &[ActivityEntry]) -> Result<u64, StoreError>;
    /// Stores `entry` unless an entry with its id exists: returns whether it was new.
    async fn append(&self, entry: &ActivityEntry) -> Result<bool, StoreError> {
        Ok(self.append_all(std::slice::from_ref(entry)).await? == 1)
    }
    /// Entries matching `query`, oldest first, one page at a time.
    async fn query(&self, query: &ActivityQuery) -> Result<ActivityPage, StoreError>;
}

/// `limit` within `1..=MAX_ACTIVITY_PAGE`.
pub fn activity_page_limit(limit: u32) -> u32 {
    limit.clamp(1, MAX_ACTIVITY_PAGE)
}

/// `minor` units as a decimal number with `exponent` fraction digits: `(1234, 2)` is
/// `12.34`, `(-5, 2)` is `-0.05`, `(7, 0)` is `7`. Integer arithmetic only.
pub fn format_minor_units(minor: i64, exponent: u16) -> String {
    let digits = minor.unsigned_abs().to_string();
    let sign = if minor < 0 { "-" } else { "" };
    let exponent = usize::from(exponent);
    if exponent == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = exponent + 1);
    let (whole, fraction) = padded.split_at(padded.len() - exponent);
    format!("{sign}{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_format_with_the_currency_exponent() {
        assert_eq!(format_minor_units(1234, 2), "12.34");
        assert_eq!(format_minor_units(5, 2), "0.05");
        assert_eq!(format_minor_units(-5, 2), "-0.05");
        assert_eq!(format_minor_units(1_000, 0), "1000");
        assert_eq!(format_minor_units(1, 3), "0.001");
        assert_eq!(format_minor_units(i64::MIN, 2), "-92233720368547758.08");
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = ActivityCursor { at_ms: -3, id: Uuid::now_v7() };
        assert_eq!(ActivityCursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(ActivityCursor::decode("12"), None);
        assert_eq!(ActivityCursor::decode("x_y"), None);
    }
}
