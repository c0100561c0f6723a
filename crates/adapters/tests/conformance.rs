//! The conformance suite of the storage ports (`LedgerStore`, `LedgerTx`,
//! `IdempotencyStore`): every case runs once against SQLite and once against PostgreSQL,
//! through the real `LedgerService` (group commit, expiry sweep) or the store directly.
//!
//! PostgreSQL is reached through `TEST_PG_ADMIN_URL` (see `testing`); its tests fail,
//! never skip, when it is unreachable.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ferrobank_adapters::sql::SCHEMA_VERSION;
use ferrobank_adapters::testing::TestDatabase;
use ferrobank_adapters::{Backend, SqlStore, StoreOptions};
use ferrobank_application::outbox::OutboxMessage;
use ferrobank_application::{
    Clock, IdempotencyStore, KeyClaim, LedgerError, LedgerLimits, LedgerService, LedgerStore,
    OpenOutcome, StoreError, VerifyMismatch,
};
use ferrobank_domain::{
    Account, AccountFlags, AccountId, Amount, Balances, Book, Currency, LedgerEvent, LedgerTotals,
    NewAccount, NewTransfer, PendingStatus, Transfer, TransferError, TransferId, TransferKind,
    TransferOutcome,
};
use sqlx::AnyPool;
use uuid::Uuid;

/// Generates one `#[tokio::test]` per backend for each case: `sqlite::<case>` and
/// `postgres::<case>`.
macro_rules! conformance {
    ($($case:ident),+ $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::new(super::Backend::Sqlite).await;
                    super::$case(&db).await;
                }
            )+
        }
        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let db = super::TestDatabase::new(super::Backend::Postgres).await;
                    super::$case(&db).await;
                }
            )+
        }
    };
}

conformance!(
    open_account_is_idempotent_and_refuses_conflicts,
    transfer_moves_balances_and_reads_back,
    history_is_newest_first_in_pages_with_balances_after,
    hold_reduces_available_then_post_or_void_resolves_it,
    hold_past_its_timeout_is_voided_by_the_writer,
    linked_chain_commits_all_or_nothing,
    retry_with_same_id_answers_exists_or_conflict,
    refused_transfers_write_nothing,
    concurrent_spenders_never_overdraw,
    large_request_commits_in_chunks,
    two_writers_on_one_database_agree,
    transfer_may_reuse_an_account_id,
    ledger_totals_beyond_64_bits_verify,
    store_transaction_commits_a_book,
    dropped_transaction_writes_nothing,
    verify_finds_a_corrupted_balance,
    idempotency_keys_claim_replay_and_expire,
    newer_schema_version_is_refused,
    migrate_is_idempotent_and_empty_database_is_refused,
);

/// The test clock starts here (a Unix time in milliseconds) and moves only when told.
const T0_MS: i64 = 1_700_000_000_000;
/// Transfer code of a customer payment.
const PAYMENT: u16 = 1;
/// How long a test waits for the writer to do something in the background.
const EVENTUALLY_TIMEOUT_MS: u64 = 10_000;

#[derive(Debug)]
struct ManualClock(AtomicI64);

impl ManualClock {
    fn set(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// A migrated store, the service with its writer running, and a raw connection pool for
/// looking at rows the ports do not expose (the outbox) or for corrupting them.
struct Ledger {
    store: SqlStore,
    service: LedgerService,
    writer: tokio::task::JoinHandle<()>,
    clock: Arc<ManualClock>,
    raw: AnyPool,
}

async fn ledger(db: &TestDatabase) -> Ledger {
    ledger_with(db, LedgerLimits::default()).await
}

async fn ledger_with(db: &TestDatabase, limits: LedgerLimits) -> Ledger {
    let store = db.store().await;
    let clock = Arc::new(ManualClock(AtomicI64::new(T0_MS)));
    let (service, writer) = LedgerService::start(Arc::new(store.clone()), clock.clone(), limits);
    Ledger { store, service, writer, clock, raw: raw_pool(db).await }
}

async fn raw_pool(db: &TestDatabase) -> AnyPool {
    sqlx::any::install_default_drivers();
    AnyPool::connect(&db.url).await.unwrap()
}

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

const NO_LIMIT: AccountFlags = AccountFlags {
    debits_must_not_exceed_credits: false,
    credits_must_not_exceed_debits: false,
    closed: false,
};
const NO_OVERDRAFT: AccountFlags =
    AccountFlags { debits_must_not_exceed_credits: true, ..NO_LIMIT };
const CREDIT_LIMIT: AccountFlags =
    AccountFlags { credits_must_not_exceed_debits: true, ..NO_LIMIT };

fn new_account(owner: &str, currency: Currency, flags: AccountFlags) -> NewAccount {
    NewAccount { id: AccountId(Uuid::now_v7()), currency, code: 1, owner: owner.into(), flags }
}

fn amount(minor_units: i64) -> Amount {
    Amount::new(minor_units).unwrap()
}

fn posted(debit: AccountId, credit: AccountId, minor_units: i64) -> NewTransfer {
    NewTransfer {
        id: TransferId(Uuid::now_v7()),
        debit_account_id: Some(debit),
        credit_account_id: Some(credit),
        amount: Some(amount(minor_units)),
        currency: Some(eur()),
        code: PAYMENT,
        kind: TransferKind::Posted,
        linked: false,
    }
}

fn pending(debit: AccountId, credit: AccountId, minor_units: i64, timeout_s: u32) -> NewTransfer {
    NewTransfer { kind: TransferKind::Pending { timeout_s }, ..posted(debit, credit, minor_units) }
}

/// Posts a hold, in full when `minor_units` is `None`; accounts are taken from the hold.
fn post(hold: TransferId, minor_units: Option<i64>) -> NewTransfer {
    NewTransfer {
        id: TransferId(Uuid::now_v7()),
        debit_account_id: None,
        credit_account_id: None,
        amount: minor_units.map(amount),
        currency: None,
        code: PAYMENT,
        kind: TransferKind::PostPending { pending_id: hold },
        linked: false,
    }
}

fn void(hold: TransferId) -> NewTransfer {
    NewTransfer {
        amount: None,
        kind: TransferKind::VoidPending { pending_id: hold },
        ..post(hold, None)
    }
}

fn linked(req: NewTransfer) -> NewTransfer {
    NewTransfer { linked: true, ..req }
}

fn created(result: Result<TransferOutcome, TransferError>) -> Transfer {
    match result {
        Ok(TransferOutcome::Created(t)) => t,
        other => panic!("expected a new transfer, got {other:?}"),
    }
}

impl Ledger {
    async fn open(&self, owner: &str, currency: Currency, flags: AccountFlags) -> AccountId {
        match self.service.open_account(new_account(owner, currency, flags)).await.unwrap() {
            OpenOutcome::Created(account) => account.id,
            other => panic!("expected a new account, got {other:?}"),
        }
    }

    /// Sends a request of one transfer and returns its result.
    async fn submit(&self, req: NewTransfer) -> Result<TransferOutcome, TransferError> {
        let mut results = self.service.create_transfers(vec![req]).await.unwrap();
        assert_eq!(results.len(), 1);
        results.pop().unwrap()
    }

    async fn balances(&self, id: AccountId) -> Balances {
        self.store.account(id).await.unwrap().expect("account exists").balances
    }

    async fn status(&self, hold: TransferId) -> Option<PendingStatus> {
        self.store.transfer(hold).await.unwrap().expect("hold exists").pending_status
    }

    /// Outbox rows per event kind.
    async fn outbox(&self) -> BTreeMap<String, i64> {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT kind, COUNT(*) AS n FROM outbox GROUP BY kind")
                .fetch_all(&self.raw)
                .await
                .unwrap();
        rows.into_iter().collect()
    }

    async fn assert_sound(&self) {
        let report = self.service.verify().await.unwrap();
        assert_eq!(report.mismatches, vec![], "verify: {report:?}");
    }

    /// Drops the service; the writer must drain and stop.
    async fn stop(self) {
        let Self { service, writer, raw, .. } = self;
        drop(service);
        tokio::time::timeout(Duration::from_millis(EVENTUALLY_TIMEOUT_MS), writer)
            .await
            .expect("the writer stops once the service is dropped")
            .expect("the writer does not panic");
        raw.close().await;
    }
}

fn outbox(kinds: &[(&str, i64)]) -> BTreeMap<String, i64> {
    kinds.iter().map(|(kind, n)| ((*kind).to_owned(), *n)).collect()
}

/// Polls `probe` until it returns something, failing after `EVENTUALLY_TIMEOUT_MS`.
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_millis(EVENTUALLY_TIMEOUT_MS);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Accounts and transfers through the service.

async fn open_account_is_idempotent_and_refuses_conflicts(db: &TestDatabase) {
    let l = ledger(db).await;
    let flags = AccountFlags { debits_must_not_exceed_credits: true, ..NO_LIMIT };
    let new = new_account("alice", eur(), flags);

    let OpenOutcome::Created(opened) = l.service.open_account(new.clone()).await.unwrap() else {
        panic!("a new id opens a new account");
    };
    assert_eq!((opened.balances, opened.created_at_ms), (Balances::default(), T0_MS));
    assert_eq!(
        l.service.open_account(new.clone()).await.unwrap(),
        OpenOutcome::Exists(opened.clone())
    );
    let conflicting = NewAccount { owner: "mallory".into(), ..new.clone() };
    assert!(matches!(
        l.service.open_account(conflicting).await,
        Err(LedgerError::AccountExistsWithDifferentFields)
    ));
    let other_currency = NewAccount { currency: usd(), ..new.clone() };
    assert!(matches!(
        l.service.open_account(other_currency).await,
        Err(LedgerError::AccountExistsWithDifferentFields)
    ));
    assert_eq!(l.store.account(new.id).await.unwrap(), Some(opened));
    assert_eq!(l.store.account(AccountId(Uuid::now_v7())).await.unwrap(), None);
    assert_eq!(l.outbox().await, outbox(&[("account.opened", 1)]));
    l.stop().await;
}

async fn transfer_moves_balances_and_reads_back(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let bob = l.open("bob", eur(), NO_OVERDRAFT).await;

    let deposit = created(l.submit(posted(bank, alice, 10_000)).await);
    let payment = created(l.submit(posted(alice, bob, 2_500)).await);

    let alice_after =
        Balances { debits_posted: 2_500, credits_posted: 10_000, ..Balances::default() };
    assert_eq!(l.balances(alice).await, alice_after);
    assert_eq!(l.balances(alice).await.available(), 7_500);
    assert_eq!(l.balances(bob).await, Balances { credits_posted: 2_500, ..Balances::default() });
    assert_eq!(l.balances(bank).await, Balances { debits_posted: 10_000, ..Balances::default() });
    assert_eq!(payment.debit_balances_after, alice_after);
    assert_eq!((payment.created_at_ms, payment.pending_status), (T0_MS, None));
    // Every field survives the round trip through the database.
    assert_eq!(l.store.transfer(deposit.id).await.unwrap(), Some(deposit));
    assert_eq!(l.store.transfer(payment.id).await.unwrap(), Some(payment));
    assert_eq!(l.store.transfer(TransferId(Uuid::now_v7())).await.unwrap(), None);

    let report = l.service.verify().await.unwrap();
    assert_eq!(report.mismatches, vec![]);
    let totals =
        LedgerTotals { debits_posted: 12_500, credits_posted: 12_500, ..LedgerTotals::default() };
    assert_eq!(report.ledgers, vec![(978, totals)]);
    assert_eq!((report.accounts_checked, report.transfers_checked), (3, 2));
    assert_eq!(l.outbox().await, outbox(&[("account.opened", 3), ("transfer.created", 2)]));
    l.stop().await;
}

async fn history_is_newest_first_in_pages_with_balances_after(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let bob = l.open("bob", eur(), NO_OVERDRAFT).await;
    let mut sent = Vec::new();
    for minor_units in [100, 200, 300, 400, 500] {
        sent.push(created(l.submit(posted(bank, alice, minor_units)).await));
    }
    sent.push(created(l.submit(posted(alice, bob, 50)).await));
    // Alice's balances after each of her transfers, oldest first.
    let mut expected_after = Vec::new();
    let mut running = Balances::default();
    for t in &sent {
        if t.credit_account_id == alice {
            running.credits_posted += t.amount.minor_units();
        } else {
            running.debits_posted += t.amount.minor_units();
        }
        expected_after.push((t.id, running));
    }
    expected_after.reverse();

    for limit in [1, 2, 3, 4, 6, 100] {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let page = l.service.history(alice, before, limit).await.unwrap();
            assert!(page.entries.len() <= limit as usize);
            assert!(page.entries.windows(2).all(|w| w[0].seq > w[1].seq), "newest first");
            seen.extend(page.entries.iter().map(|e| (e.transfer.id, e.balances_after)));
            match page.next_before {
                Some(cursor) => {
                    assert_eq!(page.entries.len(), limit as usize, "only a full page has a next");
                    assert_eq!(Some(cursor), page.entries.last().map(|e| e.seq));
                    before = Some(cursor);
                }
                None => break,
            }
        }
        assert_eq!(seen, expected_after, "pages of {limit}");
    }
    let bob_history = l.service.history(bob, None, 10).await.unwrap();
    assert_eq!(bob_history.next_before, None);
    assert_eq!(bob_history.entries.len(), 1);
    assert_eq!(
        bob_history.entries[0].balances_after,
        Balances { credits_posted: 50, ..Balances::default() }
    );
    let nobody = l.service.history(AccountId(Uuid::now_v7()), None, 10).await.unwrap();
    assert_eq!((nobody.entries.len(), nobody.next_before), (0, None));
    l.stop().await;
}

async fn hold_reduces_available_then_post_or_void_resolves_it(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let shop = l.open("shop", eur(), NO_LIMIT).await;
    created(l.submit(posted(bank, alice, 1_000)).await);

    // A hold takes funds out of what alice can spend, before anything is posted.
    let hold = created(l.submit(pending(alice, shop, 300, 0)).await);
    assert_eq!((hold.pending_status, hold.expires_at_ms), (Some(PendingStatus::Pending), None));
    let alice_now = l.balances(alice).await;
    assert_eq!(
        (alice_now.debits_pending, alice_now.debits_posted, alice_now.available()),
        (300, 0, 700)
    );
    assert_eq!(l.balances(shop).await, Balances { credits_pending: 300, ..Balances::default() });
    assert_eq!(l.submit(posted(alice, shop, 701)).await, Err(TransferError::ExceedsCredits));

    // Posted in full: the hold becomes a debit.
    let full = created(l.submit(post(hold.id, None)).await);
    assert_eq!(full.amount, amount(300));
    assert_eq!(l.status(hold.id).await, Some(PendingStatus::Posted));
    let alice_now = l.balances(alice).await;
    assert_eq!(
        (alice_now.debits_pending, alice_now.debits_posted, alice_now.available()),
        (0, 300, 700)
    );
    assert_eq!(l.balances(shop).await, Balances { credits_posted: 300, ..Balances::default() });
    assert_eq!(
        l.submit(post(hold.id, None)).await,
        Err(TransferError::PendingTransferAlreadyPosted)
    );

    // Posted in part: the rest of the hold is released.
    let hold = created(l.submit(pending(alice, shop, 400, 0)).await);
    let part = created(l.submit(post(hold.id, Some(150))).await);
    assert_eq!(part.amount, amount(150));
    let alice_now = l.balances(alice).await;
    assert_eq!(
        (alice_now.debits_pending, alice_now.debits_posted, alice_now.available()),
        (0, 450, 550)
    );
    assert_eq!(l.balances(shop).await.credits_posted, 450);

    // Voided: everything is released and nothing moves.
    let hold = created(l.submit(pending(alice, shop, 200, 0)).await);
    assert_eq!(l.balances(alice).await.available(), 350);
    created(l.submit(void(hold.id)).await);
    assert_eq!(l.status(hold.id).await, Some(PendingStatus::Voided));
    assert_eq!(l.balances(alice).await.available(), 550);
    assert_eq!(l.balances(shop).await, Balances { credits_posted: 450, ..Balances::default() });
    assert_eq!(
        l.submit(post(hold.id, None)).await,
        Err(TransferError::PendingTransferAlreadyVoided)
    );

    let hold = created(l.submit(pending(alice, shop, 100, 0)).await);
    assert_eq!(l.submit(post(hold.id, Some(101))).await, Err(TransferError::ExceedsPendingAmount));
    assert_eq!(l.status(hold.id).await, Some(PendingStatus::Pending));
    assert_eq!(
        l.submit(post(TransferId(Uuid::now_v7()), None)).await,
        Err(TransferError::PendingTransferNotFound)
    );

    l.assert_sound().await;
    assert_eq!(
        l.outbox().await,
        outbox(&[
            ("account.opened", 3),
            ("transfer.created", 5),
            ("transfer.posted", 2),
            ("transfer.voided", 1)
        ])
    );
    l.stop().await;
}

async fn hold_past_its_timeout_is_voided_by_the_writer(db: &TestDatabase) {
    let limits = LedgerLimits { expiry_interval_ms: 20, ..LedgerLimits::default() };
    let l = ledger_with(db, limits).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let shop = l.open("shop", eur(), NO_LIMIT).await;
    created(l.submit(posted(bank, alice, 1_000)).await);

    let hold = created(l.submit(pending(alice, shop, 400, 1)).await);
    assert_eq!(hold.expires_at_ms, Some(T0_MS + 1_000));
    // Beside it: a hold without timeout, and one posted before its deadline.
    let kept = created(l.submit(pending(alice, shop, 100, 0)).await);
    let settled = created(l.submit(pending(alice, shop, 50, 1)).await);
    created(l.submit(post(settled.id, None)).await);
    assert_eq!(l.store.due_pending(T0_MS + 999, 10).await.unwrap(), vec![]);
    assert_eq!(l.store.due_pending(T0_MS + 1_000, 10).await.unwrap(), vec![hold.id]);
    assert_eq!(l.balances(alice).await.available(), 450);

    l.clock.set(T0_MS + 1_000);
    let store = &l.store;
    eventually("the writer to expire the hold", || async move {
        let status = store.transfer(hold.id).await.unwrap()?.pending_status;
        (status == Some(PendingStatus::Expired)).then_some(())
    })
    .await;

    let alice_now = l.balances(alice).await;
    assert_eq!((alice_now.debits_pending, alice_now.available()), (100, 850));
    let shop_now = l.balances(shop).await;
    assert_eq!((shop_now.credits_pending, shop_now.credits_posted), (100, 50));
    assert_eq!(l.status(kept.id).await, Some(PendingStatus::Pending));
    assert_eq!(l.status(settled.id).await, Some(PendingStatus::Posted));
    let newest = l.service.history(alice, None, 1).await.unwrap().entries.remove(0);
    assert_eq!(newest.transfer.kind, TransferKind::VoidPending { pending_id: hold.id });
    assert_eq!(newest.transfer.amount, amount(400));
    assert_eq!(newest.balances_after, alice_now);
    assert_eq!(l.submit(post(hold.id, None)).await, Err(TransferError::PendingTransferExpired));
    assert_eq!(l.store.due_pending(T0_MS + 1_000, 10).await.unwrap(), vec![]);

    let voided: Vec<(String, String)> =
        sqlx::query_as("SELECT event_id, payload FROM outbox WHERE kind = 'transfer.voided'")
            .fetch_all(&l.raw)
            .await
            .unwrap();
    assert_eq!(voided.len(), 1);
    assert_eq!(voided[0].0, newest.transfer.id.to_string(), "the event id is the void's id");
    assert!(voided[0].1.contains(r#""expired":true"#), "payload: {}", voided[0].1);
    l.assert_sound().await;
    l.stop().await;
}

async fn linked_chain_commits_all_or_nothing(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let bob = l.open("bob", eur(), NO_OVERDRAFT).await;

    // Alice cannot pass on more than the chain gives her: nothing commits.
    let failing = vec![linked(posted(bank, alice, 100)), posted(alice, bob, 500)];
    let results = l.service.create_transfers(failing.clone()).await.unwrap();
    assert_eq!(
        results,
        vec![Err(TransferError::LinkedEventFailed), Err(TransferError::ExceedsCredits)]
    );
    for req in &failing {
        assert_eq!(l.store.transfer(req.id).await.unwrap(), None);
    }
    for account in [bank, alice, bob] {
        assert_eq!(l.balances(account).await, Balances::default());
    }

    let open = vec![linked(posted(bank, alice, 100))];
    assert_eq!(
        l.service.create_transfers(open).await.unwrap(),
        vec![Err(TransferError::LinkedEventChainOpen)]
    );

    let chain = vec![linked(posted(bank, alice, 500)), posted(alice, bob, 500)];
    let results = l.service.create_transfers(chain.clone()).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(TransferOutcome::Created(_)))), "{results:?}");
    let alice_now = l.balances(alice).await;
    assert_eq!((alice_now.credits_posted, alice_now.debits_posted), (500, 500));
    assert_eq!(l.balances(bob).await.credits_posted, 500);
    assert!(l.store.transfer(chain[0].id).await.unwrap().is_some_and(|t| t.linked));

    // A chain may place a hold and post it: both rows land in one batch.
    let hold = linked(pending(bob, alice, 1, 0));
    let results =
        l.service.create_transfers(vec![hold.clone(), post(hold.id, None)]).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(TransferOutcome::Created(_)))), "{results:?}");
    assert_eq!(l.status(hold.id).await, Some(PendingStatus::Posted));
    assert_eq!(
        l.outbox().await,
        outbox(&[("account.opened", 3), ("transfer.created", 3), ("transfer.posted", 1)])
    );
    l.assert_sound().await;
    l.stop().await;
}

async fn retry_with_same_id_answers_exists_or_conflict(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;

    let req = posted(bank, alice, 100);
    let first = created(l.submit(req.clone()).await);
    assert_eq!(l.submit(req.clone()).await, Ok(TransferOutcome::Exists(first.clone())));
    let changed = NewTransfer { amount: Some(amount(101)), ..req.clone() };
    assert_eq!(l.submit(changed).await, Err(TransferError::ExistsWithDifferentFields));
    let other_code = NewTransfer { code: PAYMENT + 1, ..req };
    assert_eq!(l.submit(other_code).await, Err(TransferError::ExistsWithDifferentFields));

    // The same id twice in one request commits once.
    let twice = posted(bank, alice, 7);
    let results = l.service.create_transfers(vec![twice.clone(), twice.clone()]).await.unwrap();
    let again = created(results[0].clone());
    assert_eq!(results[1], Ok(TransferOutcome::Exists(again)));

    // A retried post finds the post; it does not post twice.
    let hold = created(l.submit(pending(bank, alice, 50, 0)).await);
    let post_req = post(hold.id, Some(20));
    let posted_once = created(l.submit(post_req.clone()).await);
    assert_eq!(l.submit(post_req).await, Ok(TransferOutcome::Exists(posted_once)));

    assert_eq!(l.balances(alice).await, Balances { credits_posted: 127, ..Balances::default() });
    assert_eq!(
        l.outbox().await,
        outbox(&[("account.opened", 2), ("transfer.created", 3), ("transfer.posted", 1)])
    );
    l.assert_sound().await;
    l.stop().await;
}

async fn refused_transfers_write_nothing(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let line = l.open("credit line", eur(), CREDIT_LIMIT).await;
    let bank_usd = l.open("bank usd", usd(), NO_LIMIT).await;

    assert_eq!(l.submit(posted(alice, bank, 1)).await, Err(TransferError::ExceedsCredits));
    assert_eq!(l.submit(pending(alice, bank, 1, 0)).await, Err(TransferError::ExceedsCredits));
    assert_eq!(l.submit(posted(bank, line, 1)).await, Err(TransferError::ExceedsDebits));
    assert_eq!(
        l.submit(posted(bank_usd, alice, 1)).await,
        Err(TransferError::AccountsMustHaveSameCurrency)
    );
    let in_dollars = NewTransfer { currency: Some(usd()), ..posted(bank, alice, 1) };
    assert_eq!(l.submit(in_dollars).await, Err(TransferError::CurrencyMismatch));
    let nowhere = AccountId(Uuid::now_v7());
    assert_eq!(l.submit(posted(nowhere, alice, 1)).await, Err(TransferError::DebitAccountNotFound));
    assert_eq!(l.submit(posted(bank, bank, 1)).await, Err(TransferError::AccountsMustBeDifferent));

    for account in [bank, alice, line, bank_usd] {
        assert_eq!(l.balances(account).await, Balances::default());
    }
    let report = l.service.verify().await.unwrap();
    assert_eq!((report.transfers_checked, report.mismatches), (0, vec![]));
    assert_eq!(l.outbox().await, outbox(&[("account.opened", 4)]));
    l.stop().await;
}

async fn concurrent_spenders_never_overdraw(db: &TestDatabase) {
    const SPENDERS: usize = 20;
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let bob = l.open("bob", eur(), NO_OVERDRAFT).await;
    created(l.submit(posted(bank, alice, 1_000)).await);

    let mut spenders = tokio::task::JoinSet::new();
    for _ in 0..SPENDERS {
        let service = l.service.clone();
        spenders
            .spawn(async move { service.create_transfers(vec![posted(alice, bob, 100)]).await });
    }
    let (mut accepted, mut refused) = (0, 0);
    while let Some(joined) = spenders.join_next().await {
        match joined.unwrap().unwrap().pop().unwrap() {
            Ok(TransferOutcome::Created(_)) => accepted += 1,
            Err(TransferError::ExceedsCredits) => refused += 1,
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (10, SPENDERS - 10));
    assert_eq!(l.balances(alice).await.available(), 0);
    assert_eq!(l.balances(bob).await.credits_posted, 1_000);
    assert_eq!(l.service.history(bob, None, 100).await.unwrap().entries.len(), 10);
    l.assert_sound().await;
    l.stop().await;
}

async fn large_request_commits_in_chunks(db: &TestDatabase) {
    // More accounts and transfers than one statement of the store carries.
    const CUSTOMERS: usize = 70;
    const TRANSFERS: usize = 600;
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        customers.push(l.open(&format!("customer {i}"), eur(), NO_OVERDRAFT).await);
    }
    let requests: Vec<NewTransfer> =
        (0..TRANSFERS).map(|i| posted(bank, customers[i % CUSTOMERS], 1)).collect();
    let results = l.service.create_transfers(requests.clone()).await.unwrap();
    assert!(results.iter().all(|r| matches!(r, Ok(TransferOutcome::Created(_)))));
    for (i, customer) in customers.iter().enumerate() {
        let expected = (TRANSFERS / CUSTOMERS + usize::from(i < TRANSFERS % CUSTOMERS)) as i64;
        assert_eq!(l.balances(*customer).await.credits_posted, expected, "customer {i}");
    }
    assert_eq!(l.balances(bank).await.debits_posted, TRANSFERS as i64);
    // Sent again, every one is found.
    let again = l.service.create_transfers(requests).await.unwrap();
    assert!(again.iter().all(|r| matches!(r, Ok(TransferOutcome::Exists(_)))));
    let report = l.service.verify().await.unwrap();
    assert_eq!((report.transfers_checked, report.mismatches), (TRANSFERS as u64, vec![]));
    l.stop().await;
}

async fn two_writers_on_one_database_agree(db: &TestDatabase) {
    // Two services on one database stand for two replicas of the server.
    let l = ledger(db).await;
    let replica = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let bob = l.open("bob", eur(), NO_OVERDRAFT).await;
    created(l.submit(posted(bank, alice, 1_000)).await);

    // The same transfer sent to both at once commits once.
    let both = posted(bank, bob, 10);
    let (first, second) = tokio::join!(l.submit(both.clone()), replica.submit(both.clone()));
    let mut outcomes = [first, second].map(|r| match r {
        Ok(TransferOutcome::Created(_)) => "created",
        Ok(TransferOutcome::Exists(_)) => "exists",
        Err(error) => panic!("{error:?}"),
    });
    outcomes.sort_unstable();
    assert_eq!(outcomes, ["created", "exists"]);

    // Spenders on both replicas never overdraw alice.
    let mut spenders = tokio::task::JoinSet::new();
    for i in 0..20 {
        let service = if i % 2 == 0 { l.service.clone() } else { replica.service.clone() };
        spenders
            .spawn(async move { service.create_transfers(vec![posted(alice, bob, 100)]).await });
    }
    let mut accepted = 0;
    while let Some(joined) = spenders.join_next().await {
        match joined.unwrap().unwrap().pop().unwrap() {
            Ok(TransferOutcome::Created(_)) => accepted += 1,
            Err(TransferError::ExceedsCredits) => {}
            other => panic!("unexpected result {other:?}"),
        }
    }
    assert_eq!(accepted, 10);
    assert_eq!(l.balances(alice).await.available(), 0);
    assert_eq!(l.balances(bob).await.credits_posted, 1_010);
    l.assert_sound().await;
    replica.stop().await;
    l.stop().await;
}

async fn transfer_may_reuse_an_account_id(db: &TestDatabase) {
    // Clients choose both kinds of id; an account's id says nothing about transfers.
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    let same_id = NewTransfer { id: TransferId(alice.0), ..posted(bank, alice, 100) };
    let t = created(l.submit(same_id).await);
    assert_eq!(t.id.0, alice.0);
    assert_eq!(l.balances(alice).await.credits_posted, 100);
    assert_eq!(l.outbox().await, outbox(&[("account.opened", 2), ("transfer.created", 1)]));
    l.stop().await;
}

async fn ledger_totals_beyond_64_bits_verify(db: &TestDatabase) {
    // Each balance fits 64 bits; their sum over a ledger need not.
    let l = ledger(db).await;
    let mut largest = Vec::new();
    for _ in 0..2 {
        let bank = l.open("bank", eur(), NO_LIMIT).await;
        let vault = l.open("vault", eur(), NO_LIMIT).await;
        largest.push(created(l.submit(posted(bank, vault, i64::MAX)).await));
    }
    assert_eq!(
        l.submit(posted(largest[0].debit_account_id, largest[1].credit_account_id, 1)).await,
        Err(TransferError::Overflow)
    );
    let report = l.service.verify().await.unwrap();
    let twice = 2 * i128::from(i64::MAX);
    let totals =
        LedgerTotals { debits_posted: twice, credits_posted: twice, ..LedgerTotals::default() };
    assert_eq!(report.ledgers, vec![(978, totals)]);
    assert_eq!(report.mismatches, vec![]);
    l.stop().await;
}

// ---------------------------------------------------------------------------------------
// The store's transaction port directly.

async fn store_transaction_commits_a_book(db: &TestDatabase) {
    let store = db.store().await;
    let bank = Account::open(new_account("bank", eur(), NO_LIMIT), T0_MS);
    let alice = Account::open(new_account("alice", eur(), NO_OVERDRAFT), T0_MS);
    let mut tx = store.begin().await.unwrap();
    tx.insert_account(&bank).await.unwrap();
    tx.insert_account(&alice).await.unwrap();
    tx.commit().await.unwrap();

    let deposit = posted(bank.id, alice.id, 700);
    let hold = pending(alice.id, bank.id, 200, 5);
    let mut tx = store.begin().await.unwrap();
    let accounts = tx.lock_accounts(&[alice.id, bank.id]).await.unwrap();
    let mut ids: Vec<AccountId> = accounts.iter().map(|a| a.id).collect();
    ids.sort();
    assert_eq!(ids, {
        let mut both = vec![bank.id, alice.id];
        both.sort();
        both
    });
    assert_eq!(tx.transfers(&[deposit.id, hold.id]).await.unwrap(), vec![]);
    let mut book = Book::new(accounts, Vec::new());
    let results = book.apply(&[deposit.clone(), hold.clone()], T0_MS);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    tx.save_book(&book).await.unwrap();
    let events: Vec<OutboxMessage> = book.events().iter().map(OutboxMessage::from_event).collect();
    tx.append_outbox(&events).await.unwrap();
    tx.commit().await.unwrap();

    for id in [deposit.id, hold.id] {
        assert_eq!(store.transfer(id).await.unwrap().as_ref(), book.transfer(id));
    }
    for id in [bank.id, alice.id] {
        assert_eq!(
            store.account(id).await.unwrap().map(|a| a.balances),
            book.account(id).map(|a| a.balances)
        );
    }
    assert_eq!(store.due_pending(T0_MS + 4_999, 10).await.unwrap(), vec![]);
    assert_eq!(store.due_pending(T0_MS + 5_000, 10).await.unwrap(), vec![hold.id]);

    // A later transaction reads the hold back and resolves it.
    let mut tx = store.begin().await.unwrap();
    let unknown = TransferId(Uuid::now_v7());
    let found = tx.transfers(&[hold.id, unknown]).await.unwrap();
    assert_eq!(found.len(), 1);
    let accounts = tx.lock_accounts(&[bank.id, alice.id]).await.unwrap();
    let mut book = Book::new(accounts, found);
    let results = book.apply(&[void(hold.id)], T0_MS + 1);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    tx.save_book(&book).await.unwrap();
    tx.commit().await.unwrap();
    let stored_hold = store.transfer(hold.id).await.unwrap().unwrap();
    assert_eq!(stored_hold.pending_status, Some(PendingStatus::Voided));
    assert_eq!(store.due_pending(T0_MS + 5_000, 10).await.unwrap(), vec![]);
    assert_eq!(store.account(alice.id).await.unwrap().unwrap().balances.available(), 700);
    assert_eq!(store.verify().await.unwrap().mismatches, vec![]);
    store.ping().await.unwrap();
}

async fn dropped_transaction_writes_nothing(db: &TestDatabase) {
    let store = db.store().await;
    let raw = raw_pool(db).await;
    let outbox_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox").fetch_one(&raw).await.unwrap()
    };
    let account = Account::open(new_account("alice", eur(), NO_OVERDRAFT), T0_MS);
    let event = OutboxMessage::from_event(&LedgerEvent::AccountOpened(account.clone()));

    let mut tx = store.begin().await.unwrap();
    tx.insert_account(&account).await.unwrap();
    tx.append_outbox(std::slice::from_ref(&event)).await.unwrap();
    drop(tx);
    assert_eq!(store.account(account.id).await.unwrap(), None);
    assert_eq!(outbox_rows().await, 0);

    // The next writer is not blocked by the abandoned transaction, and commits both rows.
    let mut tx = store.begin().await.unwrap();
    tx.insert_account(&account).await.unwrap();
    tx.append_outbox(&[event]).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.account(account.id).await.unwrap(), Some(account));
    assert_eq!(outbox_rows().await, 1);
}

async fn verify_finds_a_corrupted_balance(db: &TestDatabase) {
    let l = ledger(db).await;
    let bank = l.open("bank", eur(), NO_LIMIT).await;
    let alice = l.open("alice", eur(), NO_OVERDRAFT).await;
    created(l.submit(posted(bank, alice, 100)).await);
    created(l.submit(pending(alice, bank, 40, 0)).await);
    l.assert_sound().await;

    sqlx::query("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = $1")
        .bind(alice.to_string())
        .execute(&l.raw)
        .await
        .unwrap();

    let report = l.service.verify().await.unwrap();
    let stored = Balances { debits_pending: 40, credits_posted: 101, ..Balances::default() };
    let from_transfers = Balances { credits_posted: 100, ..stored };
    let totals = LedgerTotals {
        debits_pending: 40,
        debits_posted: 100,
        credits_pending: 40,
        credits_posted: 101,
    };
    assert_eq!(report.mismatches.len(), 2, "{report:?}");
    assert!(report.mismatches.contains(&VerifyMismatch::LedgerUnbalanced { ledger: 978, totals }));
    assert!(report.mismatches.contains(&VerifyMismatch::AccountBalances {
        account: alice,
        stored,
        from_transfers
    }));
    l.stop().await;
}

// ---------------------------------------------------------------------------------------
// Idempotency keys.

async fn idempotency_keys_claim_replay_and_expire(db: &TestDatabase) {
    const LEASE_MS: i64 = 100;
    let store = db.store().await;
    let keys: &dyn IdempotencyStore = &store;
    let claim = |key: &'static str, hash: &'static str, now_ms: i64| async move {
        keys.claim("transfers", key, hash, now_ms, LEASE_MS).await.unwrap()
    };

    // First use claims; the same request while it runs is in flight; another request
    // with the key is refused.
    assert_eq!(claim("k1", "h1", 1_000).await, KeyClaim::Claimed);
    assert_eq!(claim("k1", "h1", 1_010).await, KeyClaim::InFlight);
    assert_eq!(claim("k1", "h2", 1_010).await, KeyClaim::Mismatch);
    // Keys are scoped.
    assert_eq!(
        keys.claim("accounts", "k1", "h2", 1_010, LEASE_MS).await.unwrap(),
        KeyClaim::Claimed
    );

    // Once finished, the response is replayed, even after the lease.
    keys.finish("transfers", "k1", 201, r#"{"ok":true}"#).await.unwrap();
    let replay = KeyClaim::Replay { status: 201, body: r#"{"ok":true}"#.into() };
    assert_eq!(claim("k1", "h1", 1_020).await, replay);
    assert_eq!(claim("k1", "h1", 9_000).await, replay);
    assert_eq!(claim("k1", "h2", 1_020).await, KeyClaim::Mismatch);
    // Releasing a finished key changes nothing.
    keys.release("transfers", "k1").await.unwrap();
    assert_eq!(claim("k1", "h1", 1_030).await, replay);

    // A holder that never finishes loses the key when its lease runs out, once.
    assert_eq!(claim("k2", "h1", 1_000).await, KeyClaim::Claimed);
    assert_eq!(claim("k2", "h1", 1_099).await, KeyClaim::InFlight);
    assert_eq!(claim("k2", "h1", 1_100).await, KeyClaim::Claimed);
    assert_eq!(claim("k2", "h1", 1_150).await, KeyClaim::InFlight);
    assert_eq!(claim("k2", "h1", 1_200).await, KeyClaim::Claimed);

    // A released key (its request failed with a 5xx) can be claimed again at once.
    assert_eq!(claim("k3", "h1", 1_000).await, KeyClaim::Claimed);
    keys.release("transfers", "k3").await.unwrap();
    assert_eq!(claim("k3", "h2", 1_001).await, KeyClaim::Claimed);

    // Of many requests racing for one key, or for one expired lease, one wins.
    for (key, now_ms) in [("k5", 2_000), ("k5", 2_100)] {
        let mut racers = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let store = store.clone();
            racers
                .spawn(async move { store.claim("transfers", key, "h1", now_ms, LEASE_MS).await });
        }
        let mut won = 0;
        while let Some(joined) = racers.join_next().await {
            match joined.unwrap().unwrap() {
                KeyClaim::Claimed => won += 1,
                KeyClaim::InFlight => {}
                other => panic!("unexpected claim {other:?}"),
            }
        }
        assert_eq!(won, 1, "claims of {key} at {now_ms}");
    }

    // Purge forgets keys created before the cutoff, finished or not.
    assert_eq!(claim("k4", "h1", 5_000).await, KeyClaim::Claimed);
    assert_eq!(keys.purge(5_000).await.unwrap(), 5);
    assert_eq!(keys.purge(5_000).await.unwrap(), 0);
    assert_eq!(claim("k1", "h2", 6_000).await, KeyClaim::Claimed);
    assert_eq!(claim("k4", "h1", 5_010).await, KeyClaim::InFlight);
}

// ---------------------------------------------------------------------------------------
// Schema versions.

async fn newer_schema_version_is_refused(db: &TestDatabase) {
    let store = db.store().await;
    store.check_schema().await.unwrap();
    let raw = raw_pool(db).await;
    sqlx::query("INSERT INTO ferrobank_schema (version, name, applied_at_ms) VALUES (999, 'from the future', 0)")
        .execute(&raw)
        .await
        .unwrap();

    let newer = |r: Result<_, StoreError>| {
        matches!(r, Err(StoreError::SchemaMismatch { found: 999, expected: SCHEMA_VERSION }))
    };
    assert!(newer(store.check_schema().await));
    assert!(newer(store.migrate().await.map(|_| ())));
    let restarted = SqlStore::connect(&db.url, StoreOptions::default()).await.unwrap();
    assert!(newer(restarted.check_schema().await));
}

async fn migrate_is_idempotent_and_empty_database_is_refused(db: &TestDatabase) {
    let store = SqlStore::connect(&db.url, StoreOptions::default()).await.unwrap();
    assert!(matches!(
        store.check_schema().await,
        Err(StoreError::SchemaMismatch { found: 0, expected: SCHEMA_VERSION })
    ));
    assert_eq!(store.migrate().await.unwrap(), (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    assert_eq!(store.migrate().await.unwrap(), Vec::<i64>::new());
    store.check_schema().await.unwrap();
    // A second process starting on the migrated database finds nothing to do either.
    let other = SqlStore::connect(&db.url, StoreOptions::default()).await.unwrap();
    assert_eq!(other.migrate().await.unwrap(), Vec::<i64>::new());
    store.ping().await.unwrap();
}
