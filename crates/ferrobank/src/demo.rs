//! Demo data for `ferrobank up`: a bank account and two customers with money to move, and
//! (with the built-in provider) the customers' logins. Fixed ids make seeding idempotent:
//! restarting `up` finds them and creates nothing.

use ferrobank_adapters::idp::{IdentityProvider, NewUser, UserError, random_password};
use ferrobank_application::LedgerService;
use ferrobank_domain::{
    AccountFlags, AccountId, Amount, Currency, NewAccount, NewTransfer, TransferId, TransferKind,
};
use uuid::Uuid;

use crate::config::Config;

const BANK: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001);
const ALICE: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0002);
const BOB: Uuid = Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0003);

/// The demo customers' user ids (`sub` of their tokens, `owner` of their accounts).
pub const ALICE_USER: &str = "00000000-0000-7000-8000-0000000a11ce";
/// Bob's user id.
pub const BOB_USER: &str = "00000000-0000-7000-8000-000000000b0b";

/// Creates the demo customers' logins if missing; prints a password the first time.
async fn seed_users(idp: &IdentityProvider, config: &Config) -> Result<(), String> {
    let realm = &config.identity.realm;
    for (username, id, first) in [("alice", ALICE_USER, "Alice"), ("bob", BOB_USER, "Bob")] {
        if idp.user(realm, id).is_ok() {
            continue;
        }
        let given = config.identity.dev_password.clone();
        let password = given.clone().unwrap_or_else(random_password);
        let user = NewUser {
            username: username.into(),
            email: Some(format!("{username}@example.com")),
            first_name: Some(first.into()),
            last_name: Some("Demo".into()),
            enabled: true,
            email_verified: true,
            password: Some(password.clone()),
            realm_roles: ["customer".to_owned()].into(),
            id: Some(id.into()),
            ..NewUser::default()
        };
        match idp.create_user(realm, user).await {
            // Only a generated password is shown (once); a configured one is known.
            Ok(_) if given.is_none() => {
                println!("    {:<45} {password}", format!("user {username} password"));
            }
            Ok(_) => {}
            Err(UserError::Conflict(_)) => {}
            Err(error) => return Err(format!("demo user {username}: {error}")),
        }
    }
    Ok(())
}

/// Opens the demo accounts, funds the customers and gives them logins; returns (name, id)
/// pairs of the accounts.
pub async fn seed(
    ledger: &LedgerService,
    idp: Option<&IdentityProvider>,
    config: &Config,
) -> Result<Vec<(&'static str, Uuid)>, String> {
    if let Some(idp) = idp {
        seed_users(idp, config).await?;
    }
    let eur = Currency::parse("EUR").map_err(|e| e.to_string())?;
    let customer = AccountFlags { debits_must_not_exceed_credits: true, ..AccountFlags::default() };
    let accounts = [
        ("bank", BANK, 100, "bank", AccountFlags::default()),
        ("alice", ALICE, 1, ALICE_USER, customer),
        ("bob", BOB, 1, BOB_USER, customer),
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
