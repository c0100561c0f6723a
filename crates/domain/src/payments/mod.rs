//! Payments: what a customer asks to pay, to whom, and the life of that request.
//!
//! A [`NewPayment`] moves an [`Amount`] from one of the bank's accounts (the debtor) to a
//! [`Beneficiary`]: another account in the bank, or an external account named by its
//! [`Iban`]. Every part is parsed once at the edge into a type that cannot hold a bad value:
//!
//! - [`Iban`]: registry length, BBAN structure and MOD 97-10 check digits (see [`iban`]).
//! - [`BeneficiaryName`]: 1 to [`MAX_NAME_CHARS`] characters once trimmed, no control or
//!   bidirectional-override characters (they would let a name display as another one to the
//!   analyst reviewing it).
//! - [`Reference`]: the unstructured remittance information, at most [`MAX_REFERENCE_CHARS`]
//!   characters of the SEPA basic Latin set (`a-z A-Z 0-9 / - ? : ( ) . , ' +` and space),
//!   which every SEPA bank must carry unchanged; anything else would be transliterated or
//!   refused downstream. Empty is allowed.
//! - [`NewPayment::new`]: an internal beneficiary must not be the debtor account itself.
//!
//! The external beneficiary's `country` is where the beneficiary is (its address), which
//! may differ from the country of its IBAN; risk rules look at both.
//!
//! [`PaymentStatus`] is the state machine a payment goes through (see [`status`]).

pub mod iban;
mod record;
pub mod status;

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use crate::country::CountryCode;
use crate::ledger::AccountId;
use crate::money::{Amount, Currency};

pub use iban::{Iban, IbanError};
pub use record::Payment;
pub use status::{PaymentEvent, PaymentStatus, PaymentTrigger, Transition};

/// The longest beneficiary name, in characters (ISO 20022 `Max140Text`).
pub const MAX_NAME_CHARS: usize = 140;
/// The longest remittance reference, in characters (SEPA unstructured remittance).
pub const MAX_REFERENCE_CHARS: usize = 140;

/// Identifies a payment; chosen by the client or derived from its idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PaymentId(pub Uuid);

impl fmt::Display for PaymentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why a payment, one of its parts, or a change of its status was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaymentError {
    /// The beneficiary name is empty, too long, or holds control characters.
    #[error("beneficiary name must be 1 to 140 characters without control characters")]
    InvalidName,
    /// The reference is longer than 140 characters.
    #[error("reference must be at most 140 characters")]
    ReferenceTooLong,
    /// The reference holds a character outside the SEPA basic Latin set.
    #[error("reference may only hold letters, digits, spaces and / - ? : ( ) . , ' +")]
    ReferenceInvalidCharacters,
    /// An internal payment to the debtor account itself.
    #[error("the beneficiary account is the debtor account")]
    SameAccount,
    /// The payment is in a final state; nothing can change it any more.
    #[error("the payment is already {status}")]
    AlreadyFinal {
        /// Its final status.
        status: PaymentStatus,
    },
    /// Only a pending payment, not yet picked by the worker, can be cancelled.
    #[error("a payment that is {status} cannot be cancelled")]
    NotCancellable {
        /// Its current status.
        status: PaymentStatus,
    },
    /// The trigger does not apply to the current status.
    #[error("a payment that is {status} cannot take `{trigger}`")]
    InvalidTransition {
        /// Its current status.
        status: PaymentStatus,
        /// What was attempted.
        trigger: PaymentTrigger,
    },
}

impl PaymentError {
    /// Stable machine-readable code (also the last segment of the problem type URI).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidName => "beneficiary_name_invalid",
            Self::ReferenceTooLong => "reference_too_long",
            Self::ReferenceInvalidCharacters => "reference_invalid_characters",
            Self::SameAccount => "payment_same_account",
            Self::AlreadyFinal { .. } => "payment_already_final",
            Self::NotCancellable { .. } => "payment_not_cancellable",
            Self::InvalidTransition { .. } => "payment_invalid_transition",
        }
    }
}

/// The name of an external beneficiary, trimmed, 1 to 140 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct BeneficiaryName(String);

impl BeneficiaryName {
    /// Trims surrounding whitespace and checks length and characters.
    pub fn parse(input: &str) -> Result<Self, PaymentError> {
        let name = input.trim();
        // Bound the work before counting characters: 140 characters are at most 560 bytes.
        let fits = name.len() <= MAX_NAME_CHARS * 4 && name.chars().count() <= MAX_NAME_CHARS;
        if name.is_empty() || !fits || name.chars().any(is_forbidden_in_name) {
            return Err(PaymentError::InvalidName);
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Control characters, line and paragraph separators, and the bidirectional embedding,
/// override and isolate characters that can make text display differently from its content.
fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

impl<'de> Deserialize<'de> for BeneficiaryName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let input = String::deserialize(d)?;
        Self::parse(&input).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for BeneficiaryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Unstructured remittance information in the SEPA basic Latin set, at most 140 characters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Reference(String);

impl Reference {
    /// Trims surrounding whitespace and checks length and characters; empty is allowed.
    pub fn parse(input: &str) -> Result<Self, PaymentError> {
        let reference = input.trim();
        // Checked first: a character outside the set says more than the length would.
        if !reference.chars().all(is_sepa_character) {
            return Err(PaymentError::ReferenceInvalidCharacters);
        }
        // The set is ASCII, so bytes are characters.
        if reference.len() > MAX_REFERENCE_CHARS {
            return Err(PaymentError::ReferenceTooLong);
        }
        Ok(Self(reference.to_owned()))
    }

    /// The reference as given (trimmed).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The SEPA basic Latin character set of the EPC implementation guidelines.
fn is_sepa_character(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '/' | '-' | '?' | ':' | '(' | ')' | '.' | ',' | '\'' | '+' | ' ')
}

impl<'de> Deserialize<'de> for Reference {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let input = String::deserialize(d)?;
        Self::parse(&input).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Who receives a payment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Beneficiary {
    /// Another account in this bank: the transfer stays on the ledger.
    Internal {
        /// The credited account.
        account: AccountId,
    },
    /// An account at another bank, reached through the payment gateway.
    External {
        /// The beneficiary's account.
        iban: Iban,
        /// The account holder's name.
        name: BeneficiaryName,
        /// Where the beneficiary is (its address), not necessarily the IBAN's country.
        country: CountryCode,
    },
}

/// A payment as the customer asked for it, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPayment {
    id: PaymentId,
    debtor_account: AccountId,
    beneficiary: Beneficiary,
    amount: Amount,
    currency: Currency,
    reference: Reference,
}

impl NewPayment {
    /// Assembles a payment from parsed parts; refuses an internal payment to the debtor
    /// account itself. That the debtor account belongs to the caller, holds `currency` and
    /// has the funds is for the application and the ledger to check.
    pub fn new(
        id: PaymentId,
        debtor_account: AccountId,
        beneficiary: Beneficiary,
        amount: Amount,
        currency: Currency,
        reference: Reference,
    ) -> Result<Self, PaymentError> {
        if beneficiary == (Beneficiary::Internal { account: debtor_account }) {
            return Err(PaymentError::SameAccount);
        }
        Ok(Self { id, debtor_account, beneficiary, amount, currency, reference })
    }

    /// The payment's id.
    pub fn id(&self) -> PaymentId {
        self.id
    }

    /// The account debited.
    pub fn debtor_account(&self) -> AccountId {
        self.debtor_account
    }

    /// Who receives the money.
    pub fn beneficiary(&self) -> &Beneficiary {
        &self.beneficiary
    }

    /// How much, in minor units of `currency`.
    pub fn amount(&self) -> Amount {
        self.amount
    }

    /// The currency of the amount (and of the debtor account).
    pub fn currency(&self) -> Currency {
        self.currency
    }

    /// The remittance reference (possibly empty).
    pub fn reference(&self) -> &Reference {
        &self.reference
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn account(n: u128) -> AccountId {
        AccountId(Uuid::from_u128(n))
    }

    fn external() -> Beneficiary {
        Beneficiary::External {
            iban: Iban::parse("DE89 3704 0044 0532 0130 00").unwrap(),
            name: BeneficiaryName::parse("Erika Mustermann").unwrap(),
            country: CountryCode::parse("DE").unwrap(),
        }
    }

    fn payment(beneficiary: Beneficiary) -> Result<NewPayment, PaymentError> {
        NewPayment::new(
            PaymentId(Uuid::from_u128(9)),
            account(1),
            beneficiary,
            Amount::new(12_50).unwrap(),
            Currency::parse("EUR").unwrap(),
            Reference::parse("Invoice 2024-001").unwrap(),
        )
    }

    #[test]
    fn names_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(BeneficiaryName::parse("  Zoë Ångström ").unwrap().as_str(), "Zoë Ångström");
        assert!(BeneficiaryName::parse(&"é".repeat(140)).is_ok());
        for bad in [
            "".to_owned(),
            "   ".to_owned(),
            "é".repeat(141),
            "a".repeat(10_000),
            "Mallory\nBob".to_owned(),
            "Mallory\u{0}".to_owned(),
            "Bob \u{202e}yrollaM".to_owned(),
            "Bob\u{2028}Eve".to_owned(),
        ] {
            assert_eq!(
                BeneficiaryName::parse(&bad).map_err(|e| e.code()),
                Err("beneficiary_name_invalid")
            );
        }
    }

    #[test]
    fn references_use_the_sepa_character_set() {
        let all = "azAZ09/-?:().,'+ x";
        assert_eq!(Reference::parse(all).unwrap().as_str(), all);
        assert_eq!(Reference::parse("").unwrap(), Reference::default());
        assert!(Reference::parse(&"x".repeat(140)).is_ok());
        let code = |s: &str| Reference::parse(s).map_err(|e| e.code());
        assert_eq!(code(&"x".repeat(141)), Err("reference_too_long"));
        for bad in [
            "Miete für März",
            "a_b",
            "50%",
            "a&b",
            "line\nbreak",
            "tab\there",
            "\"quoted\"",
            "@",
            "#1",
            "€5",
        ] {
            assert_eq!(code(bad), Err("reference_invalid_characters"), "{bad}");
        }
    }

    #[test]
    fn an_internal_payment_needs_another_account() {
        assert!(payment(Beneficiary::Internal { account: account(2) }).is_ok());
        assert!(payment(external()).is_ok());
        assert_eq!(
            payment(Beneficiary::Internal { account: account(1) }),
            Err(PaymentError::SameAccount)
        );
    }

    #[test]
    fn beneficiaries_deserialize_validated_and_tagged() {
        let b: Beneficiary = serde_json::from_str(
            r#"{"kind":"external","iban":"de89 3704 0044 0532 0130 00","name":" Erika Mustermann ","country":"DE"}"#,
        )
        .unwrap();
        assert_eq!(b, external());
        let json = serde_json::to_string(&b).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"external","iban":"DE89370400440532013000","name":"Erika Mustermann","country":"DE"}"#
        );
        for bad in [
            r#"{"kind":"external","iban":"DE00370400440532013000","name":"E","country":"DE"}"#,
            r#"{"kind":"external","iban":"DE89370400440532013000","name":"","country":"DE"}"#,
            r#"{"kind":"external","iban":"DE89370400440532013000","name":"E","country":"UK"}"#,
            r#"{"kind":"internal","account":"00000000-0000-0000-0000-000000000002","extra":1}"#,
            r#"{"kind":"wire","account":"00000000-0000-0000-0000-000000000002"}"#,
        ] {
            assert!(serde_json::from_str::<Beneficiary>(bad).is_err(), "{bad}");
        }
    }
}
