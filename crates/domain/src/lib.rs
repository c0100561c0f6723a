//! The pure core of ferrobank: money, identifiers and the double-entry ledger rules.
//!
//! Nothing here performs I/O, reads a clock or generates an id: time and ids are passed
//! in, so every rule can be tested without a database or a runtime.

pub mod audit;
pub mod country;
pub mod identity;
pub mod ledger;
pub mod money;
pub mod payments;
pub mod policy;
pub mod risk;

pub use country::{CountryCode, CountryError};
pub use identity::{Principal, Role};
pub use ledger::{
    Account, AccountFlags, AccountId, Balances, Book, LedgerEvent, LedgerTotals, NewAccount,
    NewTransfer, PendingStatus, Transfer, TransferError, TransferId, TransferKind, TransferOutcome,
    totals_by_ledger,
};
pub use money::{Amount, AmountError, Currency, CurrencyError};
pub use payments::{
    Beneficiary, BeneficiaryName, Iban, IbanError, NewPayment, Payment, PaymentError, PaymentEvent,
    PaymentId, PaymentStatus, PaymentTrigger, Reference, Transition,
};
pub use risk::{
    CustomerRisk, CustomerTier, ReasonCode, RiskDecision, RiskHistory, RiskOutcome, RiskReason,
    RiskRules, RiskRulesConfig, RiskRulesError, evaluate,
};
