//! Property tests of the audit chain: any single change to a valid chain is detected and
//! the right record is named.
#![allow(clippy::unwrap_used)]

use ferrobank_domain::audit::{
    AuditAction, AuditActor, AuditOutcome, AuditRecord, ChainBreak, ChainHead, NewAuditEntry,
    verify,
};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

fn chain(len: usize, salt: u64) -> Vec<AuditRecord> {
    let mut head = ChainHead::GENESIS;
    (0..len)
        .map(|i| {
            let i = i as u64;
            let entry = NewAuditEntry::new(
                Uuid::from_u64_pair(salt, i),
                1_700_000_000_000 + i64::try_from(i).unwrap(),
                if i.is_multiple_of(2) {
                    AuditActor::subject(format!("user-{}", i % 3)).unwrap()
                } else {
                    AuditActor::service("payment-worker").unwrap()
                },
                AuditAction::parse(["payment.created", "access.denied"][(i % 2) as usize]).unwrap(),
                format!("account/{}", i % 5),
                AuditOutcome::Success,
                json!({"amount_minor": i * 100, "reason": ["x", salt]}),
            )
            .unwrap();
            let record = head.next(entry);
            head = ChainHead::of(&record);
            record
        })
        .collect()
}

/// One field of a record changed without fixing its hash.
fn mutate(record: &mut AuditRecord, field: u8) {
    match field % 10 {
        0 => record.seq += 1,
        1 => record.id = Uuid::from_u64_pair(u64::MAX, record.seq),
        2 => record.at_ms += 1,
        3 => record.actor = AuditActor::Subject(format!("{}x", record.actor.id())),
        4 => record.action = AuditAction::parse("payment.cancelled").unwrap(),
        5 => record.resource.push('x'),
        6 => record.outcome = AuditOutcome::Denied,
        7 => record.details = json!({"amount_minor": -1}),
        8 => record.prev_hash[0] ^= 1,
        _ => record.hash[31] ^= 0x80,
    }
}

proptest! {
    #[test]
    fn an_untouched_chain_verifies(len in 0_usize..40, salt: u64) {
        let records = chain(len, salt);
        prop_assert_eq!(verify(&records), Ok(len as u64));
    }

    #[test]
    fn any_single_mutation_names_the_record(len in 1_usize..40, at: prop::sample::Index, field: u8, salt: u64) {
        let mut records = chain(len, salt);
        let k = at.index(len);
        mutate(&mut records[k], field);
        let (seq, id) = (records[k].seq, records[k].id);
        prop_assert_eq!(verify(&records), Err(ChainBreak::Altered { seq, id }));
    }

    #[test]
    fn a_mutation_with_a_recomputed_hash_names_the_record(len in 2_usize..40, at: prop::sample::Index, field in 1_u8..8, salt: u64) {
        let mut records = chain(len, salt);
        // The last record has no successor to contradict it: pick one that has.
        let k = at.index(len - 1);
        mutate(&mut records[k], field);
        records[k].hash = records[k].compute_hash();
        let (seq, id) = (records[k].seq, records[k].id);
        prop_assert_eq!(verify(&records), Err(ChainBreak::Rewritten { seq, id }));
    }

    #[test]
    fn any_deletion_but_the_last_names_the_missing_seq(len in 2_usize..40, at: prop::sample::Index, salt: u64) {
        let mut records = chain(len, salt);
        let k = at.index(len - 1);
        let removed = records.remove(k);
        let next = &records[k];
        prop_assert_eq!(
            verify(&records),
            Err(ChainBreak::Removed { seq: removed.seq, next_seq: next.seq, next_id: next.id })
        );
    }

    #[test]
    fn any_swap_names_the_record_out_of_place(len in 2_usize..40, a: prop::sample::Index, b: prop::sample::Index, salt: u64) {
        let mut records = chain(len, salt);
        let (i, j) = (a.index(len), b.index(len));
        prop_assume!(i != j);
        let (i, j) = (i.min(j), i.max(j));
        records.swap(i, j);
        let misplaced = &records[i];
        prop_assert_eq!(
            verify(&records),
            Err(ChainBreak::Reordered { seq: misplaced.seq, id: misplaced.id, expected: (i + 1) as u64 })
        );
    }
}

proptest! {
    #[test]
    fn verifying_page_by_page_finds_the_same(len in 1_usize..40, page in 1_usize..8, at: prop::sample::Index, field: u8, salt: u64) {
        let mut records = chain(len, salt);
        prop_assert_eq!(verify(&records), Ok(len as u64));
        let k = at.index(len);
        mutate(&mut records[k], field);
        let mut last = None;
        let mut outcome = Ok(0);
        for chunk in records.chunks(page) {
            match ferrobank_domain::audit::verify_after(last, chunk) {
                Ok(n) => outcome = outcome.map(|count| count + n),
                Err(error) => { outcome = Err(error); break; }
            }
            last = chunk.last();
        }
        prop_assert_eq!(outcome, verify(&records));
    }
}
