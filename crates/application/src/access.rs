//! Object-level authorization: which principal may read, debit or open which account.
//!
//! Pure functions of the principal and the account; the ledger use cases call them before
//! they read or enqueue anything (`LedgerService::*_as`). The matrix (ARCHITECTURE.md):
//!
//! | role | read an account, its history, its transfers | debit it, post/void its holds | open an account |
//! |---|---|---|---|
//! | `customer` | own (`owner == subject`) | own | own (`owner == subject`) |
//! | `loan-officer`, `risk-analyst`, `compliance-officer` | every | own if also `customer` | own if also `customer` |
//! | `banking-admin` | every | every | for anyone |
//! | none of these | none | none | none |
//!
//! A refused read looks exactly like a missing resource (404), so a customer cannot probe
//! which accounts exist.

use ferrobank_domain::{Account, Principal, Role};

/// Roles that may read every account.
const STAFF: [Role; 4] =
    [Role::BankingAdmin, Role::LoanOfficer, Role::RiskAnalyst, Role::ComplianceOfficer];

fn owns(principal: &Principal, owner: &str) -> bool {
    principal.has_role(Role::Customer) && owner == principal.subject
}

/// Whether `principal` may see `account`, its balances, history and transfers.
pub fn may_read(principal: &Principal, account: &Account) -> bool {
    principal.has_any_role(&STAFF) || owns(principal, &account.owner)
}

/// Whether `principal` may move money out of `account` (debit it, post or void its holds).
pub fn may_debit(principal: &Principal, account: &Account) -> bool {
    principal.has_role(Role::BankingAdmin) || owns(principal, &account.owner)
}

/// Whether `principal` may open an account owned by `owner`.
pub fn may_open(principal: &Principal, owner: &str) -> bool {
    principal.has_role(Role::BankingAdmin) || owns(principal, owner)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use ferrobank_domain::{AccountFlags, AccountId, Currency, NewAccount};
    use uuid::Uuid;

    use super::*;

    fn principal(subject: &str, roles: &[Role]) -> Principal {
        Principal {
            subject: subject.into(),
            username: None,
            roles: roles.iter().copied().collect(),
            client_id: None,
            scopes: Default::default(),
            issuer: "https://idp.example/realms/ferrobank".into(),
            tier: None,
        }
    }

    fn account(owner: &str) -> Account {
        let new = NewAccount {
            id: AccountId(Uuid::nil()),
            currency: Currency::parse("EUR").unwrap(),
            code: 1,
            owner: owner.into(),
            flags: AccountFlags::default(),
        };
        Account::open(new, 0)
    }

    #[test]
    fn a_customer_reads_debits_and_opens_only_its_own() {
        let alice = principal("alice", &[Role::Customer]);
        assert!(may_read(&alice, &account("alice")));
        assert!(may_debit(&alice, &account("alice")));
        assert!(may_open(&alice, "alice"));
        assert!(!may_read(&alice, &account("bob")));
        assert!(!may_debit(&alice, &account("bob")));
        assert!(!may_open(&alice, "bob"));
    }

    #[test]
    fn staff_read_everything_but_only_the_admin_moves_money_or_opens_for_others() {
        for role in [Role::LoanOfficer, Role::RiskAnalyst, Role::ComplianceOfficer] {
            let staff = principal("carol", &[role]);
            assert!(may_read(&staff, &account("bob")), "{role}");
            assert!(!may_debit(&staff, &account("bob")), "{role}");
            assert!(!may_debit(&staff, &account("carol")), "{role} without customer");
            assert!(!may_open(&staff, "bob"), "{role}");
        }
        let admin = principal("root", &[Role::BankingAdmin]);
        assert!(may_read(&admin, &account("bob")));
        assert!(may_debit(&admin, &account("bob")));
        assert!(may_open(&admin, "bob"));
    }

    #[test]
    fn without_a_known_role_nothing_is_allowed_even_on_a_matching_owner() {
        let nobody = principal("alice", &[]);
        assert!(!may_read(&nobody, &account("alice")));
        assert!(!may_debit(&nobody, &account("alice")));
        assert!(!may_open(&nobody, "alice"));
    }
}
