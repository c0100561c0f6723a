//! Money is an integer number of minor units of one ISO 4217 currency; never a float.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An ISO 4217 currency with a fixed number of minor units (EUR: 2, JPY: 0, KWD: 3).
///
/// Each currency is its own ledger; the ledger number is the ISO 4217 numeric code.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency(iso_currency::Currency);

/// Why a currency code was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CurrencyError {
    /// Not an ISO 4217 alphabetic code.
    #[error("`{0}` is not an ISO 4217 currency code")]
    Unknown(String),
    /// A code such as XAU (gold) that has no minor unit and is not money we hold.
    #[error("`{0}` has no minor unit and cannot be held in an account")]
    NoMinorUnit(String),
}

impl Currency {
    /// Parses an upper-case alphabetic ISO 4217 code such as `EUR`.
    pub fn parse(code: &str) -> Result<Self, CurrencyError> {
        let currency = iso_currency::Currency::from_code(code)
            .ok_or_else(|| CurrencyError::Unknown(code.chars().take(8).collect()))?;
        if currency.exponent().is_none() {
            return Err(CurrencyError::NoMinorUnit(code.to_owned()));
        }
        Ok(Self(currency))
    }

    /// Looks a currency up by its ledger number (the ISO 4217 numeric code).
    pub fn from_ledger(ledger: u16) -> Option<Self> {
        iso_currency::Currency::from_numeric(ledger).filter(|c| c.exponent().is_some()).map(Self)
    }

    /// The three-letter code, e.g. `EUR`.
    pub fn code(self) -> &'static str {
        self.0.code()
    }

    /// The ledger this currency's accounts live on: its ISO 4217 numeric code.
    pub fn ledger(self) -> u16 {
        self.0.numeric()
    }

    /// Number of decimal places of the minor unit (2 for EUR, 0 for JPY).
    pub fn exponent(self) -> u16 {
        self.0.exponent().unwrap_or(0)
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl Serialize for Currency {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let code = String::deserialize(d)?;
        Self::parse(&code).map_err(serde::de::Error::custom)
    }
}

/// A strictly positive amount in minor units.
///
/// Bounded by `i64::MAX` so that every amount and balance fits the 64-bit integer
/// columns of both storage backends; sums are checked, never wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Amount(i64);

/// Why an amount was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    /// Zero or negative.
    #[error("amount must be a positive integer number of minor units")]
    NotPositive,
}

impl Amount {
    /// The largest amount a single transfer may carry, in minor units.
    pub const MAX: Amount = Amount(i64::MAX);

    /// Accepts 1..=i64::MAX minor units.
    pub fn new(minor_units: i64) -> Result<Self, AmountError> {
        if minor_units > 0 { Ok(Self(minor_units)) } else { Err(AmountError::NotPositive) }
    }

    /// The amount in minor units.
    pub fn minor_units(self) -> i64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // i64's deserializer refuses floats (`10.5`, `1e3`) and anything above i64::MAX.
        let minor_units = i64::deserialize(d)?;
        Self::new(minor_units).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn currency_knows_its_ledger_and_exponent() {
        let eur = Currency::parse("EUR").unwrap();
        assert_eq!((eur.ledger(), eur.exponent()), (978, 2));
        assert_eq!(Currency::parse("JPY").unwrap().exponent(), 0);
        assert_eq!(Currency::parse("KWD").unwrap().exponent(), 3);
        assert_eq!(Currency::from_ledger(978), Some(eur));
    }

    #[test]
    fn currency_refuses_unknown_and_unit_less_codes() {
        assert!(matches!(Currency::parse("EURO"), Err(CurrencyError::Unknown(_))));
        assert!(matches!(Currency::parse("eur"), Err(CurrencyError::Unknown(_))));
        assert!(matches!(Currency::parse("XAU"), Err(CurrencyError::NoMinorUnit(_))));
    }

    #[test]
    fn amount_refuses_floats_zero_negative_and_overflow() {
        let parse = |s: &str| serde_json_like(s);
        assert_eq!(parse("100"), Some(100));
        assert_eq!(parse("0"), None);
        assert_eq!(parse("-5"), None);
        assert_eq!(Amount::new(i64::MAX).map(Amount::minor_units), Ok(i64::MAX));
    }

    // The domain has no JSON dependency; exercise the i64 path through `Amount::new`.
    fn serde_json_like(s: &str) -> Option<i64> {
        s.parse::<i64>().ok().and_then(|v| Amount::new(v).ok()).map(Amount::minor_units)
    }
}
