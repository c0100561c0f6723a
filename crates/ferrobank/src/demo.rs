//! Demo data for `ferrobank up`: a bank account and two customers with money to move.
//! Fixed ids make seeding idempotent: restarting `up` finds them and creates nothing.

use ferrobank_application::LedgerService;
use ferrobank_domain::{
    AccountFlags, AccountId, Amount, Currency, NewAccount, NewTransfer, TransferId, TransferKind,
};
use uuid::Uuid;

const BANK: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001);
const ALICE: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0002);
const BOB: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0003);

/// Opens the demo accounts and funds the customers; returns (name, id) pairs.
pub async fn seed(ledger: &LedgerService) -> Result<Vec<(&'static str, Uuid)>, String> {
    let eur = Currency::parse("EUR").map_err(|e| e.to_string())?;
    let customer = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let accounts = [
        ("bank", BANK, 100, "bank", AccountFlags::default()),
        ("alice", ALICE, 1, "customer-alice", customer),
        ("bob", BOB, 1, "customer-bob", customer),
    ];
    for (_, id, code, owner, flags) in accounts {
        let new = NewAccount { id: AccountId(id), currency: eur, code, owner: owner.into(), flags };
        ledger.open_account(new).await.map_err(|e| e.to_string())?;
    }
    let deposit = |n: u128, to: Uuid, cents: i64| -> Result<NewTransfer, String> {
        Ok(NewTransfer {
            id: TransferId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0100 + n)),
            debit_account_id: Some(AccountId(BANK)),
            credit_account_id: Some(AccountId(to)),
            amount: Some(Amount::new(cents).map_err(|e| e.to_string())?),
            currency: Some(eur),
            code: 1,
            kind: TransferKind::Posted,
            linked: false,
        })
    };
    let results = ledger
        .create_transfers(vec![deposit(1, ALICE, 100_000)?, deposit(2, BOB, 50_000)?])
        .await
        .map_err(|e| e.to_string())?;
    if let Some(Err(error)) = results.into_iter().find(Result::is_err) {
        return Err(format!("funding demo accounts: {error}"));
    }
    Ok(accounts.iter().map(|(name, id, ..)| (*name, *id)).collect())
}
