//! The synchronous risk check a payment passes before any money moves.
//!
//! [`evaluate`] runs every rule on a [`NewPayment`], the customer's tier and the history the
//! caller read (velocity counters from Redis or memory, today's total, whether the
//! beneficiary was paid before). Each rule that fires adds a [`RiskReason`]: a stable
//! [`ReasonCode`] and that rule's outcome. The decision is the strictest outcome of all
//! reasons (`deny` > `review` > `allow`) and lists every reason, so an analyst sees all that
//! was wrong, not only the first thing. `allow` has no reasons; `review` and `deny` always
//! have at least one.
//!
//! | rule | fires when | outcome | code |
//! |---|---|---|---|
//! | blocked party | an external beneficiary's IBAN, or its name (case-folded, whitespace collapsed), is on the list | deny | `blocked_party` |
//! | blocked country | the beneficiary's country or its IBAN's country is on the list | deny | `blocked_country` |
//! | tier limit | amount > `single_max_minor` of the tier | deny | `amount_over_tier_limit` |
//! | review threshold | amount > `single_review_above_minor` of the tier | review | `amount_over_review_threshold` |
//! | daily limit | today's total (UTC calendar day, before this payment) + amount > `daily_max_minor` | deny | `daily_limit` |
//! | velocity count | payments in the window (before this one) >= `velocity.max_count` of the tier | `velocity.action` | `velocity_count` |
//! | velocity amount | total in the window (before this one) + amount > `window_max_minor` | `velocity.action` | `velocity_amount` |
//! | new beneficiary | never paid before and amount > `new_beneficiary_review_above_minor` | review | `new_beneficiary` |
//! | no limits | the payment's currency has no limits configured | deny | `currency_not_configured` |
//! | overflow | a total would pass `u64::MAX` minor units (the total's own rule then fires as deny too) | deny | `amount_overflow` |
//!
//! Amounts are integer minor units of the payment's currency, never floats. Limits are set
//! per currency (a number of cents means nothing for yen) and per tier; the caller's totals
//! (`amount_in_window_minor`, `amount_today_minor`) are sums of the customer's payments in
//! the payment's currency, and `count_in_window` counts them in every currency. A limit is
//! a maximum: a payment that reaches it exactly is within it.
//!
//! Every rule only ever fires more when its input grows (a larger amount or total, a
//! longer list, a lower limit, an unseen beneficiary), so making a payment worse never makes
//! the decision more lenient; the property tests check that.
//!
//! Rules come from configuration ([`RiskRulesConfig`], meant for a `[risk]` table of the
//! config file) and are validated once into [`RiskRules`]: a typo in a field, a currency or a country
//! code stops the process from starting instead of weakening a rule. In TOML:
//!
//! ```toml
//! blocked_countries = ["KP", "IR", "MM"]
//!
//! [velocity]
//! window_s = 3600
//! action = "review"                      # or "deny"
//! max_count = { standard = 10, premium = 20, business = 200 }
//!
//! [blocked_parties]
//! names = ["Example Sanctioned Trading Ltd"]
//! ibans = ["DE89 3704 0044 0532 0130 00"]
//!
//! [currencies.EUR.standard]              # and .premium, .business; then USD, GBP...
//! single_max_minor = 1_000_000           # 10,000.00 EUR
//! single_review_above_minor = 500_000
//! daily_max_minor = 2_000_000
//! window_max_minor = 1_000_000
//! new_beneficiary_review_above_minor = 100_000
//! ```
//!
//! [`RiskRulesConfig::default`] holds the bank's defaults, documented on it.
//!
//! Name matching is exact after normalization: it catches case and spacing variants, not
//! transliterations, typos or aliases. Screening against sanctions lists needs fuzzy
//! matching and belongs to a dedicated screening step; this list is for known bad parties.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::country::CountryCode;
use crate::money::Currency;
use crate::payments::{Beneficiary, Iban, NewPayment, PaymentTrigger};

/// The longest velocity window, in seconds (7 days); counters live that long.
pub const MAX_WINDOW_S: u32 = 7 * 24 * 3600;
/// The most entries a blocked list may hold (names, IBANs or countries).
pub const MAX_BLOCKED_ENTRIES: usize = 100_000;

/// A customer's tier, which selects its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerTier {
    /// Retail customers.
    Standard,
    /// Retail customers with higher limits.
    Premium,
    /// Companies.
    Business,
}

impl CustomerTier {
    /// Every tier, in a stable order.
    pub const ALL: [CustomerTier; 3] =
        [CustomerTier::Standard, CustomerTier::Premium, CustomerTier::Business];

    /// The tier's name: its serde name, the `tier` user attribute and access-token claim.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Standard => "standard",
            Self::Premium => "premium",
            Self::Business => "business",
        }
    }

    /// The tier with this name, or `None` for a name ferrobank does not know. Compared
    /// exactly, like role names: `Premium` is not a tier.
    pub fn from_name(name: &str) -> Option<CustomerTier> {
        Self::ALL.into_iter().find(|tier| tier.as_str() == name)
    }
}

impl fmt::Display for CustomerTier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the risk check knows about the paying customer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CustomerRisk {
    /// The customer's tier.
    pub tier: CustomerTier,
}

/// What the caller counted before this payment, for this customer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RiskHistory {
    /// Payments in the current velocity window, in any currency, not counting this one.
    pub count_in_window: u32,
    /// Their total in the payment's currency, in minor units.
    pub amount_in_window_minor: u64,
    /// The total of today's payments (UTC calendar day) in the payment's currency.
    pub amount_today_minor: u64,
    /// Whether the customer has paid this beneficiary before.
    pub beneficiary_seen: bool,
}

/// The outcome of a rule or of the whole check, from most to least lenient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskOutcome {
    /// Proceed.
    Allow,
    /// Hold until a `risk-analyst` decides.
    Review,
    /// Refuse.
    Deny,
}

/// Why a rule fired; the serialized name is [`ReasonCode::code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonCode {
    /// Above the tier's single-payment limit.
    AmountOverTierLimit,
    /// Above the tier's review threshold for a single payment.
    AmountOverReviewThreshold,
    /// Too many payments in the velocity window.
    VelocityCount,
    /// Too much paid in the velocity window.
    VelocityAmount,
    /// Too much paid today.
    DailyLimit,
    /// A large first payment to a beneficiary.
    NewBeneficiary,
    /// The beneficiary or its bank account is in a blocked country.
    BlockedCountry,
    /// The beneficiary's name or IBAN is blocked.
    BlockedParty,
    /// A total would overflow; the input cannot be trusted.
    AmountOverflow,
    /// No limits are configured for the payment's currency.
    CurrencyNotConfigured,
}

impl ReasonCode {
    /// Stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::AmountOverTierLimit => "amount_over_tier_limit",
            Self::AmountOverReviewThreshold => "amount_over_review_threshold",
            Self::VelocityCount => "velocity_count",
            Self::VelocityAmount => "velocity_amount",
            Self::DailyLimit => "daily_limit",
            Self::NewBeneficiary => "new_beneficiary",
            Self::BlockedCountry => "blocked_country",
            Self::BlockedParty => "blocked_party",
            Self::AmountOverflow => "amount_overflow",
            Self::CurrencyNotConfigured => "currency_not_configured",
        }
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One rule that fired and what it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RiskReason {
    /// Which rule.
    pub code: ReasonCode,
    /// What that rule alone would decide (`review` or `deny`).
    pub outcome: RiskOutcome,
}

/// The result of the risk check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RiskDecision {
    /// The strictest outcome among the reasons; `allow` when there are none.
    pub outcome: RiskOutcome,
    /// Every rule that fired, in evaluation order.
    pub reasons: Vec<RiskReason>,
}

impl RiskDecision {
    /// The payment status trigger this decision stands for.
    pub fn trigger(&self) -> PaymentTrigger {
        match self.outcome {
            RiskOutcome::Allow => PaymentTrigger::RiskAllowed,
            RiskOutcome::Review => PaymentTrigger::RiskHeld,
            RiskOutcome::Deny => PaymentTrigger::RiskDenied,
        }
    }

    /// Whether the rule `code` fired.
    pub fn has(&self, code: ReasonCode) -> bool {
        self.reasons.iter().any(|r| r.code == code)
    }

    fn push(&mut self, code: ReasonCode, outcome: RiskOutcome) {
        if !self.has(code) {
            self.reasons.push(RiskReason { code, outcome });
        }
        self.outcome = self.outcome.max(outcome);
    }
}

/// What the velocity rules do when they fire.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Hold for an analyst.
    #[default]
    Review,
    /// Refuse.
    Deny,
}

impl RuleAction {
    fn outcome(self) -> RiskOutcome {
        match self {
            Self::Review => RiskOutcome::Review,
            Self::Deny => RiskOutcome::Deny,
        }
    }
}

/// One value per customer tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tiered<T> {
    /// For `standard` customers.
    pub standard: T,
    /// For `premium` customers.
    pub premium: T,
    /// For `business` customers.
    pub business: T,
}

impl<T> Tiered<T> {
    /// The value for `tier`.
    pub fn get(&self, tier: CustomerTier) -> &T {
        match tier {
            CustomerTier::Standard => &self.standard,
            CustomerTier::Premium => &self.premium,
            CustomerTier::Business => &self.business,
        }
    }

    fn iter(&self) -> impl Iterator<Item = (CustomerTier, &T)> {
        [
            (CustomerTier::Standard, &self.standard),
            (CustomerTier::Premium, &self.premium),
            (CustomerTier::Business, &self.business),
        ]
        .into_iter()
    }
}

/// The amount limits of one tier in one currency, in minor units of that currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CurrencyLimits {
    /// A single payment above this is denied. At least 1.
    pub single_max_minor: u64,
    /// A single payment above this is reviewed. At most `single_max_minor`; 0 reviews all.
    pub single_review_above_minor: u64,
    /// Today's payments including this one above this are denied. At least 1.
    pub daily_max_minor: u64,
    /// The window's payments including this one above this fire `velocity_amount`.
    /// At least 1.
    pub window_max_minor: u64,
    /// A first payment to a beneficiary above this is reviewed; 0 reviews every first one.
    pub new_beneficiary_review_above_minor: u64,
}

/// The velocity rules: how many payments a customer may make in a sliding window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityConfig {
    /// The window length in seconds, 1 to [`MAX_WINDOW_S`].
    pub window_s: u32,
    /// Payments allowed in one window per tier (this one included). At least 1.
    pub max_count: Tiered<u32>,
    /// What `velocity_count` and `velocity_amount` decide (default `review`).
    #[serde(default)]
    pub action: RuleAction,
}

/// Parties no payment may go to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockedParties {
    /// Beneficiary names, matched case-folded with whitespace collapsed.
    #[serde(default)]
    pub names: Vec<String>,
    /// Beneficiary IBANs (validated; any form).
    #[serde(default)]
    pub ibans: Vec<Iban>,
}

/// The risk rules as written in the configuration file; [`RiskRules::new`] validates them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RiskRulesConfig {
    /// Payment-count rules.
    pub velocity: VelocityConfig,
    /// Amount limits per currency and tier; a currency missing here is denied.
    pub currencies: HashMap<Currency, Tiered<CurrencyLimits>>,
    /// Countries no payment may go to (the beneficiary's or its IBAN's).
    #[serde(default)]
    pub blocked_countries: Vec<CountryCode>,
    /// Names and IBANs no payment may go to.
    #[serde(default)]
    pub blocked_parties: BlockedParties,
}

impl Default for RiskRulesConfig {
    /// The bank's defaults, the same nominal figures in EUR, USD, GBP and CHF (all with
    /// two decimals):
    ///
    /// | tier | single payment max | review above | per day | per hour | first payment to a new beneficiary reviewed above | payments per hour |
    /// |---|---|---|---|---|---|---|
    /// | standard | 10,000.00 | 5,000.00 | 20,000.00 | 10,000.00 | 1,000.00 | 10 |
    /// | premium | 50,000.00 | 25,000.00 | 100,000.00 | 50,000.00 | 5,000.00 | 20 |
    /// | business | 250,000.00 | 100,000.00 | 1,000,000.00 | 500,000.00 | 25,000.00 | 200 |
    ///
    /// Retail figures are in the range of common European online-banking transfer limits;
    /// business ones allow supplier and payroll runs. The hourly count and amount catch a
    /// taken-over account being drained in many small payments; they hold for review
    /// rather than deny, since a real customer may be paying a stack of bills. Blocked
    /// countries are the FATF "high-risk jurisdictions subject to a call for action"
    /// (North Korea, Iran, Myanmar); blocked parties start empty.
    fn default() -> Self {
        let limits = |single, review, daily, window, new_beneficiary| CurrencyLimits {
            single_max_minor: single,
            single_review_above_minor: review,
            daily_max_minor: daily,
            window_max_minor: window,
            new_beneficiary_review_above_minor: new_beneficiary,
        };
        let tiers = Tiered {
            standard: limits(1_000_000, 500_000, 2_000_000, 1_000_000, 100_000),
            premium: limits(5_000_000, 2_500_000, 10_000_000, 5_000_000, 500_000),
            business: limits(25_000_000, 10_000_000, 100_000_000, 50_000_000, 2_500_000),
        };
        let currencies = ["EUR", "USD", "GBP", "CHF"]
            .into_iter()
            .filter_map(|code| Currency::parse(code).ok())
            .map(|currency| (currency, tiers.clone()))
            .collect();
        let blocked_countries =
            ["KP", "IR", "MM"].into_iter().filter_map(|c| CountryCode::parse(c).ok()).collect();
        Self {
            velocity: VelocityConfig {
                window_s: 3600,
                max_count: Tiered { standard: 10, premium: 20, business: 200 },
                action: RuleAction::Review,
            },
            currencies,
            blocked_countries,
            blocked_parties: BlockedParties::default(),
        }
    }
}

/// Why a risk configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RiskRulesError {
    /// `velocity.window_s` is 0 or above [`MAX_WINDOW_S`].
    #[error("velocity.window_s must be 1 to {MAX_WINDOW_S} seconds, not {0}")]
    WindowOutOfRange(u32),
    /// A tier's `velocity.max_count` is 0.
    #[error("velocity.max_count.{0} must be at least 1")]
    ZeroCount(&'static str),
    /// No currency has limits, so every payment would be denied.
    #[error("risk rules need limits for at least one currency")]
    NoCurrencies,
    /// A maximum is 0.
    #[error("currencies.{currency}.{tier}.{field} must be at least 1")]
    ZeroLimit {
        /// The currency's code.
        currency: &'static str,
        /// The tier.
        tier: &'static str,
        /// The field.
        field: &'static str,
    },
    /// A review threshold above the hard limit would never be reached.
    #[error("currencies.{currency}.{tier}.single_review_above_minor is above single_max_minor")]
    ReviewAboveLimit {
        /// The currency's code.
        currency: &'static str,
        /// The tier.
        tier: &'static str,
    },
    /// A blocked name is empty once whitespace is removed.
    #[error("blocked_parties.names holds an empty name")]
    BlankPartyName,
    /// A blocked list is longer than [`MAX_BLOCKED_ENTRIES`].
    #[error("{0} holds more than {MAX_BLOCKED_ENTRIES} entries")]
    TooManyEntries(&'static str),
}

impl RiskRulesError {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::WindowOutOfRange(_) => "risk_window_out_of_range",
            Self::ZeroCount(_) => "risk_zero_count",
            Self::NoCurrencies => "risk_no_currencies",
            Self::ZeroLimit { .. } => "risk_zero_limit",
            Self::ReviewAboveLimit { .. } => "risk_review_above_limit",
            Self::BlankPartyName => "risk_blank_party_name",
            Self::TooManyEntries(_) => "risk_too_many_entries",
        }
    }
}

/// Validated risk rules, with the blocked lists indexed for lookup.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RiskRulesConfig")]
pub struct RiskRules {
    config: RiskRulesConfig,
    blocked_countries: HashSet<CountryCode>,
    blocked_names: HashSet<String>,
    blocked_ibans: HashSet<Iban>,
}

impl RiskRules {
    /// Validates a configuration: a window of 1 s to 7 days, counts and maximums of at
    /// least 1, review thresholds at most the single-payment maximum, at least one
    /// currency, no blank blocked name, lists of at most [`MAX_BLOCKED_ENTRIES`].
    pub fn new(config: RiskRulesConfig) -> Result<Self, RiskRulesError> {
        let velocity = &config.velocity;
        if velocity.window_s == 0 || velocity.window_s > MAX_WINDOW_S {
            return Err(RiskRulesError::WindowOutOfRange(velocity.window_s));
        }
        if let Some((tier, _)) = velocity.max_count.iter().find(|(_, max)| **max == 0) {
            return Err(RiskRulesError::ZeroCount(tier_name(tier)));
        }
        if config.currencies.is_empty() {
            return Err(RiskRulesError::NoCurrencies);
        }
        for (currency, tiers) in &config.currencies {
            for (tier, limits) in tiers.iter() {
                let (currency, tier) = (currency.code(), tier_name(tier));
                let maximums = [
                    ("single_max_minor", limits.single_max_minor),
                    ("daily_max_minor", limits.daily_max_minor),
                    ("window_max_minor", limits.window_max_minor),
                ];
                if let Some((field, _)) = maximums.iter().find(|(_, max)| *max == 0) {
                    return Err(RiskRulesError::ZeroLimit { currency, tier, field });
                }
                if limits.single_review_above_minor > limits.single_max_minor {
                    return Err(RiskRulesError::ReviewAboveLimit { currency, tier });
                }
            }
        }
        let lists = [
            ("blocked_countries", config.blocked_countries.len()),
            ("blocked_parties.names", config.blocked_parties.names.len()),
            ("blocked_parties.ibans", config.blocked_parties.ibans.len()),
        ];
        if let Some((list, _)) = lists.iter().find(|(_, len)| *len > MAX_BLOCKED_ENTRIES) {
            return Err(RiskRulesError::TooManyEntries(list));
        }
        let blocked_names: HashSet<String> =
            config.blocked_parties.names.iter().map(|name| normalize_party_name(name)).collect();
        if blocked_names.contains("") {
            return Err(RiskRulesError::BlankPartyName);
        }
        Ok(Self::index(config, blocked_names))
    }

    fn index(config: RiskRulesConfig, blocked_names: HashSet<String>) -> Self {
        Self {
            blocked_countries: config.blocked_countries.iter().copied().collect(),
            blocked_ibans: config.blocked_parties.ibans.iter().cloned().collect(),
            blocked_names,
            config,
        }
    }

    /// The configuration these rules were built from (for `ferrobank config`).
    pub fn config(&self) -> &RiskRulesConfig {
        &self.config
    }

    /// The velocity window in seconds: how far back the caller counts `*_in_window`.
    pub fn window_s(&self) -> u32 {
        self.config.velocity.window_s
    }
}

impl Default for RiskRules {
    /// [`RiskRulesConfig::default`], which the tests check is valid.
    fn default() -> Self {
        let config = RiskRulesConfig::default();
        let names = config.blocked_parties.names.iter().map(|n| normalize_party_name(n)).collect();
        Self::index(config, names)
    }
}

impl TryFrom<RiskRulesConfig> for RiskRules {
    type Error = RiskRulesError;

    fn try_from(config: RiskRulesConfig) -> Result<Self, Self::Error> {
        Self::new(config)
    }
}

fn tier_name(tier: CustomerTier) -> &'static str {
    match tier {
        CustomerTier::Standard => "standard",
        CustomerTier::Premium => "premium",
        CustomerTier::Business => "business",
    }
}

/// A party name as the blocked list compares it: lower-cased (with `ß` as `ss` and a final
/// sigma as `σ`, the common full case folds `to_lowercase` leaves out), every run of
/// whitespace one space, none at the ends.
pub fn normalize_party_name(name: &str) -> String {
    let mut normalized = String::with_capacity(name.len());
    for word in name.split_whitespace() {
        if !normalized.is_empty() {
            normalized.push(' ');
        }
        for c in word.chars().flat_map(char::to_lowercase) {
            match c {
                'ß' => normalized.push_str("ss"),
                'ς' => normalized.push('σ'),
                c => normalized.push(c),
            }
        }
    }
    normalized
}

/// Runs every rule on a payment; see the module documentation for the rules.
pub fn evaluate(
    rules: &RiskRules,
    payment: &NewPayment,
    customer: &CustomerRisk,
    history: &RiskHistory,
) -> RiskDecision {
    use ReasonCode as R;
    use RiskOutcome::{Deny, Review};

    let mut decision = RiskDecision { outcome: RiskOutcome::Allow, reasons: Vec::new() };
    let velocity = rules.config.velocity.action.outcome();
    // Amounts are positive i64, so this conversion is exact.
    let amount = payment.amount().minor_units().unsigned_abs();

    if let Beneficiary::External { iban, name, country } = payment.beneficiary() {
        if rules.blocked_ibans.contains(iban)
            || (!rules.blocked_names.is_empty()
                && rules.blocked_names.contains(&normalize_party_name(name.as_str())))
        {
            decision.push(R::BlockedParty, Deny);
        }
        if rules.blocked_countries.contains(country)
            || rules.blocked_countries.contains(&iban.country())
        {
            decision.push(R::BlockedCountry, Deny);
        }
    }

    if history.count_in_window >= *rules.config.velocity.max_count.get(customer.tier) {
        decision.push(R::VelocityCount, velocity);
    }

    let Some(tiers) = rules.config.currencies.get(&payment.currency()) else {
        decision.push(R::CurrencyNotConfigured, Deny);
        return decision;
    };
    let limits = tiers.get(customer.tier);
    if amount > limits.single_max_minor {
        decision.push(R::AmountOverTierLimit, Deny);
    }
    if amount > limits.single_review_above_minor {
        decision.push(R::AmountOverReviewThreshold, Review);
    }
    let mut total_over = |before: u64, max: u64, code, outcome| match before.checked_add(amount) {
        Some(total) if total > max => decision.push(code, outcome),
        Some(_) => {}
        None => {
            decision.push(code, Deny);
            decision.push(R::AmountOverflow, Deny);
        }
    };
    total_over(history.amount_today_minor, limits.daily_max_minor, R::DailyLimit, Deny);
    total_over(
        history.amount_in_window_minor,
        limits.window_max_minor,
        R::VelocityAmount,
        velocity,
    );
    if !history.beneficiary_seen && amount > limits.new_beneficiary_review_above_minor {
        decision.push(R::NewBeneficiary, Review);
    }
    decision
}

#[cfg(test)]
// Amounts in the tests are written as units_cents: `1_000_01` is 1,000.01.
#[allow(clippy::unwrap_used, clippy::inconsistent_digit_grouping)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::ledger::AccountId;
    use crate::money::Amount;
    use crate::payments::{BeneficiaryName, PaymentId, Reference};

    const STANDARD: CustomerRisk = CustomerRisk { tier: CustomerTier::Standard };
    const CLEAN: RiskHistory = RiskHistory {
        count_in_window: 0,
        amount_in_window_minor: 0,
        amount_today_minor: 0,
        beneficiary_seen: true,
    };

    fn pay(beneficiary: Beneficiary, minor: i64, currency: &str) -> NewPayment {
        NewPayment::new(
            PaymentId(Uuid::from_u128(7)),
            AccountId(Uuid::from_u128(1)),
            beneficiary,
            Amount::new(minor).unwrap(),
            Currency::parse(currency).unwrap(),
            Reference::default(),
        )
        .unwrap()
    }

    fn external(iban: &str, name: &str, country: &str) -> Beneficiary {
        Beneficiary::External {
            iban: Iban::parse(iban).unwrap(),
            name: BeneficiaryName::parse(name).unwrap(),
            country: CountryCode::parse(country).unwrap(),
        }
    }

    fn internal() -> Beneficiary {
        Beneficiary::Internal { account: AccountId(Uuid::from_u128(2)) }
    }

    fn erika() -> Beneficiary {
        external("DE89370400440532013000", "Erika Mustermann", "DE")
    }

    /// Codes and outcomes of a decision, for compact assertions.
    fn check(
        rules: &RiskRules,
        payment: &NewPayment,
        history: RiskHistory,
    ) -> (RiskOutcome, Vec<&'static str>) {
        let decision = evaluate(rules, payment, &STANDARD, &history);
        (decision.outcome, decision.reasons.iter().map(|r| r.code.code()).collect())
    }

    #[test]
    fn the_defaults_are_valid_and_equal_to_their_validated_form() {
        let rules = RiskRules::new(RiskRulesConfig::default()).unwrap();
        assert_eq!(rules, RiskRules::default());
        assert_eq!(rules.window_s(), 3600);
        assert_eq!(rules.config().currencies.len(), 4);
    }

    #[test]
    fn tier_names_are_the_serde_names_and_unknown_names_are_no_tier() {
        for tier in CustomerTier::ALL {
            assert_eq!(CustomerTier::from_name(tier.as_str()), Some(tier));
            assert_eq!(serde_json::to_value(tier).unwrap(), tier.as_str());
        }
        for name in ["Premium", "gold", "", " premium"] {
            assert_eq!(CustomerTier::from_name(name), None, "{name:?}");
        }
    }

    /// A customer without a known tier is treated as `standard`, which is only safe while
    /// `standard` has the lowest limits: no other tier is stricter on any rule.
    #[test]
    fn standard_is_the_strictest_tier_of_the_defaults() {
        let config = RiskRulesConfig::default();
        let counts = &config.velocity.max_count;
        for tier in CustomerTier::ALL {
            assert!(counts.standard <= *counts.get(tier), "{tier}");
        }
        for (currency, tiers) in &config.currencies {
            let standard = tiers.standard;
            for (tier, limits) in tiers.iter() {
                for (s, other) in [
                    (standard.single_max_minor, limits.single_max_minor),
                    (standard.single_review_above_minor, limits.single_review_above_minor),
                    (standard.daily_max_minor, limits.daily_max_minor),
                    (standard.window_max_minor, limits.window_max_minor),
                    (
                        standard.new_beneficiary_review_above_minor,
                        limits.new_beneficiary_review_above_minor,
                    ),
                ] {
                    assert!(s <= other, "{} {tier}", currency.code());
                }
            }
        }
    }

    #[test]
    fn a_small_payment_with_a_clean_history_is_allowed() {
        let rules = RiskRules::default();
        for beneficiary in [internal(), erika()] {
            let decision = evaluate(&rules, &pay(beneficiary, 100_00, "EUR"), &STANDARD, &CLEAN);
            assert_eq!(decision, RiskDecision { outcome: RiskOutcome::Allow, reasons: vec![] });
            assert_eq!(decision.trigger(), PaymentTrigger::RiskAllowed);
        }
    }

    #[test]
    fn tier_limit_denies_and_review_threshold_reviews() {
        let rules = RiskRules::default();
        let at_review = pay(internal(), 5_000_00, "EUR");
        assert_eq!(check(&rules, &at_review, CLEAN), (RiskOutcome::Allow, vec![]));
        let over_review = pay(internal(), 5_000_01, "EUR");
        assert_eq!(
            check(&rules, &over_review, CLEAN),
            (RiskOutcome::Review, vec!["amount_over_review_threshold"])
        );
        let at_max = pay(internal(), 10_000_00, "EUR");
        assert_eq!(check(&rules, &at_max, CLEAN).0, RiskOutcome::Review);
        let over_max = pay(internal(), 10_000_01, "EUR");
        assert_eq!(
            check(&rules, &over_max, CLEAN),
            (
                RiskOutcome::Deny,
                vec!["amount_over_tier_limit", "amount_over_review_threshold", "velocity_amount"]
            )
        );
        // The same amount is fine for a business customer.
        let business = CustomerRisk { tier: CustomerTier::Business };
        assert_eq!(evaluate(&rules, &over_max, &business, &CLEAN).outcome, RiskOutcome::Allow);
    }

    #[test]
    fn daily_limit_counts_what_was_paid_today() {
        let rules = RiskRules::default();
        let payment = pay(internal(), 1_000_00, "EUR");
        let today = |minor| RiskHistory { amount_today_minor: minor, ..CLEAN };
        assert_eq!(check(&rules, &payment, today(19_000_00)), (RiskOutcome::Allow, vec![]));
        assert_eq!(
            check(&rules, &payment, today(19_000_01)),
            (RiskOutcome::Deny, vec!["daily_limit"])
        );
    }

    #[test]
    fn velocity_counts_payments_and_amounts_in_the_window() {
        let rules = RiskRules::default();
        let payment = pay(internal(), 10_00, "EUR");
        let count = |n| RiskHistory { count_in_window: n, ..CLEAN };
        assert_eq!(check(&rules, &payment, count(9)), (RiskOutcome::Allow, vec![]));
        assert_eq!(
            check(&rules, &payment, count(10)),
            (RiskOutcome::Review, vec!["velocity_count"])
        );
        let window = |minor| RiskHistory { amount_in_window_minor: minor, ..CLEAN };
        assert_eq!(check(&rules, &payment, window(9_990_00)), (RiskOutcome::Allow, vec![]));
        assert_eq!(
            check(&rules, &payment, window(9_990_01)),
            (RiskOutcome::Review, vec!["velocity_amount"])
        );

        let mut config = RiskRulesConfig::default();
        config.velocity.action = RuleAction::Deny;
        let strict = RiskRules::new(config).unwrap();
        assert_eq!(
            check(&strict, &payment, count(10)),
            (RiskOutcome::Deny, vec!["velocity_count"])
        );
    }

    #[test]
    fn a_large_first_payment_to_a_beneficiary_is_reviewed() {
        let rules = RiskRules::default();
        let unseen = RiskHistory { beneficiary_seen: false, ..CLEAN };
        assert_eq!(
            check(&rules, &pay(erika(), 1_000_00, "EUR"), unseen),
            (RiskOutcome::Allow, vec![])
        );
        assert_eq!(
            check(&rules, &pay(erika(), 1_000_01, "EUR"), unseen),
            (RiskOutcome::Review, vec!["new_beneficiary"])
        );
        assert_eq!(
            check(&rules, &pay(internal(), 1_000_01, "EUR"), unseen).1,
            vec!["new_beneficiary"]
        );
        assert_eq!(
            check(&rules, &pay(erika(), 1_000_01, "EUR"), CLEAN),
            (RiskOutcome::Allow, vec![])
        );
    }

    #[test]
    fn blocked_countries_match_the_beneficiary_or_its_iban() {
        let rules = RiskRules::default();
        let mut config = RiskRulesConfig::default();
        config.blocked_countries.push(CountryCode::parse("DE").unwrap());
        let no_germany = RiskRules::new(config).unwrap();
        // A German IBAN held by someone in France, and a French IBAN held by someone in Iran.
        let german_account = external("DE89370400440532013000", "Jean Dupont", "FR");
        let iranian_holder = external("FR1420041010050500013M02606", "Someone", "IR");
        assert_eq!(
            check(&rules, &pay(german_account.clone(), 10_00, "EUR"), CLEAN).0,
            RiskOutcome::Allow
        );
        assert_eq!(
            check(&no_germany, &pay(german_account, 10_00, "EUR"), CLEAN),
            (RiskOutcome::Deny, vec!["blocked_country"])
        );
        assert_eq!(
            check(&rules, &pay(iranian_holder, 10_00, "EUR"), CLEAN),
            (RiskOutcome::Deny, vec!["blocked_country"])
        );
    }

    #[test]
    fn blocked_parties_match_by_iban_or_normalized_name() {
        let mut config = RiskRulesConfig::default();
        config.blocked_parties.names =
            vec!["  Mallory   STRAUSS ".to_owned(), "Σίσυφος".to_owned()];
        config.blocked_parties.ibans = vec![Iban::parse("GB29 NWBK 6016 1331 9268 19").unwrap()];
        let rules = RiskRules::new(config).unwrap();
        for name in ["mallory strauss", "MALLORY   STRAUSS", "Mallory Strauß", "ΣΊΣΥΦΟΣ"] {
            let payment = pay(external("DE89370400440532013000", name, "DE"), 10_00, "EUR");
            assert_eq!(
                check(&rules, &payment, CLEAN),
                (RiskOutcome::Deny, vec!["blocked_party"]),
                "{name}"
            );
        }
        let blocked_account = pay(external("GB29NWBK60161331926819", "Anyone", "GB"), 10_00, "EUR");
        assert_eq!(
            check(&rules, &blocked_account, CLEAN),
            (RiskOutcome::Deny, vec!["blocked_party"])
        );
        let near_miss =
            pay(external("DE89370400440532013000", "Mallory Strauss Jr", "DE"), 10_00, "EUR");
        assert_eq!(check(&rules, &near_miss, CLEAN).0, RiskOutcome::Allow);
    }

    #[test]
    fn the_decision_is_the_strictest_outcome_with_every_reason() {
        let mut config = RiskRulesConfig::default();
        config.blocked_parties.names = vec!["Erika Mustermann".to_owned()];
        let rules = RiskRules::new(config).unwrap();
        let history = RiskHistory {
            count_in_window: 50,
            amount_in_window_minor: 1,
            amount_today_minor: 1,
            beneficiary_seen: false,
        };
        let decision = evaluate(&rules, &pay(erika(), 20_000_00, "EUR"), &STANDARD, &history);
        assert_eq!(decision.outcome, RiskOutcome::Deny);
        let codes: Vec<_> = decision.reasons.iter().map(|r| (r.code.code(), r.outcome)).collect();
        assert_eq!(
            codes,
            vec![
                ("blocked_party", RiskOutcome::Deny),
                ("velocity_count", RiskOutcome::Review),
                ("amount_over_tier_limit", RiskOutcome::Deny),
                ("amount_over_review_threshold", RiskOutcome::Review),
                ("daily_limit", RiskOutcome::Deny),
                ("velocity_amount", RiskOutcome::Review),
                ("new_beneficiary", RiskOutcome::Review),
            ]
        );
        assert_eq!(decision.trigger(), PaymentTrigger::RiskDenied);
    }

    #[test]
    fn overflowing_totals_deny_instead_of_panicking() {
        let rules = RiskRules::default();
        let history =
            RiskHistory { amount_today_minor: u64::MAX, amount_in_window_minor: u64::MAX, ..CLEAN };
        let payment = pay(internal(), i64::MAX, "EUR");
        let (outcome, codes) = check(&rules, &payment, history);
        assert_eq!(outcome, RiskOutcome::Deny);
        assert_eq!(
            codes,
            vec![
                "amount_over_tier_limit",
                "amount_over_review_threshold",
                "daily_limit",
                "amount_overflow",
                "velocity_amount",
            ]
        );
        let (_, codes) = check(
            &rules,
            &pay(internal(), 1, "EUR"),
            RiskHistory { count_in_window: u32::MAX, ..history },
        );
        assert!(codes.contains(&"amount_overflow") && codes.contains(&"velocity_count"));
    }

    #[test]
    fn a_currency_without_limits_is_denied() {
        let rules = RiskRules::default();
        assert_eq!(
            check(&rules, &pay(internal(), 100, "JPY"), CLEAN),
            (RiskOutcome::Deny, vec!["currency_not_configured"])
        );
    }

    #[test]
    fn configuration_deserializes_strictly_and_validates() {
        let json = serde_json::json!({
            "velocity": { "window_s": 600, "max_count": { "standard": 3, "premium": 5, "business": 50 } },
            "currencies": { "EUR": {
                "standard": { "single_max_minor": 100, "single_review_above_minor": 50, "daily_max_minor": 200,
                              "window_max_minor": 150, "new_beneficiary_review_above_minor": 0 },
                "premium": { "single_max_minor": 100, "single_review_above_minor": 50, "daily_max_minor": 200,
                             "window_max_minor": 150, "new_beneficiary_review_above_minor": 0 },
                "business": { "single_max_minor": 100, "single_review_above_minor": 50, "daily_max_minor": 200,
                              "window_max_minor": 150, "new_beneficiary_review_above_minor": 0 }
            } },
            "blocked_countries": ["KP"],
            "blocked_parties": { "names": ["Bad Actor"], "ibans": ["GB29 NWBK 6016 1331 9268 19"] }
        });
        let rules: RiskRules = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(rules.window_s(), 600);
        assert_eq!(rules.config().velocity.action, RuleAction::Review);
        let unseen = RiskHistory { beneficiary_seen: false, ..CLEAN };
        assert_eq!(check(&rules, &pay(internal(), 1, "EUR"), unseen).1, vec!["new_beneficiary"]);
        // The printed form reads back to the same rules.
        let printed = serde_json::to_value(rules.config()).unwrap();
        assert_eq!(serde_json::from_value::<RiskRules>(printed).unwrap(), rules);

        let refused = |pointer: &str, value: serde_json::Value| {
            let mut bad = json.clone();
            *bad.pointer_mut(pointer).unwrap() = value;
            serde_json::from_value::<RiskRules>(bad).unwrap_err().to_string()
        };
        assert!(refused("/velocity/window_s", 0.into()).contains("window_s"));
        assert!(refused("/velocity/max_count/premium", 0.into()).contains("max_count.premium"));
        assert!(
            refused("/currencies/EUR/business/daily_max_minor", 0.into())
                .contains("EUR.business.daily_max_minor")
        );
        assert!(
            refused("/currencies/EUR/standard/single_review_above_minor", 101.into())
                .contains("above")
        );
        assert!(
            refused("/currencies/EUR/standard/single_max_minor", (-1).into())
                .contains("invalid value")
        );
        assert!(
            refused("/currencies/EUR/standard/single_max_minor", 1.5.into())
                .contains("invalid type")
        );
        assert!(refused("/currencies", serde_json::json!({ "EURO": {} })).contains("EURO"));
        assert!(refused("/currencies", serde_json::json!({})).contains("at least one currency"));
        assert!(refused("/blocked_countries", serde_json::json!(["UK"])).contains("UK"));
        assert!(
            refused("/blocked_parties/names", serde_json::json!(["  "])).contains("empty name")
        );
        assert!(
            refused("/blocked_parties/ibans", serde_json::json!(["DE00"]))
                .contains("22 characters")
        );
        let mut warn = json.clone();
        warn["velocity"]["action"] = "warn".into();
        assert!(
            serde_json::from_value::<RiskRules>(warn)
                .unwrap_err()
                .to_string()
                .contains("unknown variant")
        );
        let mut extra = json.clone();
        extra["currencies"]["EUR"]["standard"]["single_max"] = 1.into();
        assert!(
            serde_json::from_value::<RiskRules>(extra)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        let mut extra = json.clone();
        extra["velocity"]["windows"] = 1.into();
        assert!(
            serde_json::from_value::<RiskRules>(extra)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
        let mut extra = json;
        extra["limits"] = 1.into();
        assert!(
            serde_json::from_value::<RiskRules>(extra)
                .unwrap_err()
                .to_string()
                .contains("unknown field")
        );
    }

    #[test]
    fn reason_codes_serialize_as_their_codes() {
        let all = [
            ReasonCode::AmountOverTierLimit,
            ReasonCode::AmountOverReviewThreshold,
            ReasonCode::VelocityCount,
            ReasonCode::VelocityAmount,
            ReasonCode::DailyLimit,
            ReasonCode::NewBeneficiary,
            ReasonCode::BlockedCountry,
            ReasonCode::BlockedParty,
            ReasonCode::AmountOverflow,
            ReasonCode::CurrencyNotConfigured,
        ];
        for code in all {
            assert_eq!(serde_json::to_string(&code).unwrap(), format!("\"{code}\""));
        }
        let decision = RiskDecision {
            outcome: RiskOutcome::Review,
            reasons: vec![RiskReason {
                code: ReasonCode::NewBeneficiary,
                outcome: RiskOutcome::Review,
            }],
        };
        assert_eq!(
            serde_json::to_string(&decision).unwrap(),
            r#"{"outcome":"review","reasons":[{"code":"new_beneficiary","outcome":"review"}]}"#
        );
    }
}
