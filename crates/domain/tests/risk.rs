//! Property tests of the risk rules.
//!
//! Random valid configurations (limits per currency and tier, velocity, blocked lists) and
//! random payments and histories, including totals near `u64::MAX`:
//!
//! - a payment under every limit, with a clean history, to a party and country nobody
//!   blocked, is allowed with no reasons;
//! - making a case worse in any single way (a larger amount, more payments or money in the
//!   window or today, an unseen beneficiary, a blocked country, name or IBAN, a lower limit,
//!   velocity set to deny) never makes the decision more lenient and never drops a reason;
//! - `review` and `deny` always carry reasons, `allow` none; the outcome is the strictest
//!   reason's; no reason is listed twice; the decision maps onto the payment state machine.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};

use ferrobank_domain::risk::{
    BlockedParties, CurrencyLimits, MAX_WINDOW_S, RuleAction, Tiered, VelocityConfig,
};
use ferrobank_domain::{
    AccountId, Amount, Beneficiary, BeneficiaryName, CountryCode, Currency, CustomerRisk,
    CustomerTier, Iban, NewPayment, PaymentId, PaymentStatus, Reference, RiskDecision, RiskHistory,
    RiskOutcome, RiskRules, RiskRulesConfig, evaluate,
};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use uuid::Uuid;

const CASES: u32 = 512;
/// Largest generated limit or amount, in minor units; histories sometimes go far beyond.
const MAX_MINOR: u64 = 3_000_000;

const IBANS: &[&str] = &[
    "DE89370400440532013000",
    "FR1420041010050500013M02606",
    "GB29NWBK60161331926819",
    "CH9300762011623852957",
    "NO9386011117947",
    "SA0380000000608010167519",
];
const NAMES: &[&str] = &["Erika Mustermann", "Jean Dupont", "Hans Straße", "ACME Ltd", "Ωmega"];
const COUNTRIES: &[&str] = &["DE", "FR", "GB", "CH", "NO", "SA", "IR", "KP"];
const CURRENCIES: &[&str] = &["EUR", "USD", "JPY"];

#[derive(Debug, Clone)]
struct Case {
    config: RiskRulesConfig,
    payment: NewPayment,
    customer: CustomerRisk,
    history: RiskHistory,
}

/// One way of making a case worse.
#[derive(Debug, Clone)]
enum Worse {
    Amount(u64),
    Count(u32),
    WindowTotal(u64),
    TodayTotal(u64),
    UnseenBeneficiary,
    BlockBeneficiaryCountry,
    BlockIbanCountry,
    BlockName,
    BlockIban,
    /// Multiply one limit of every tier and currency by `numerator / 1000`.
    LowerLimit {
        field: usize,
        per_mille: u64,
    },
    LowerMaxCount(u32),
    VelocityDenies,
}

fn limits(min_review: u64) -> impl Strategy<Value = CurrencyLimits> + Clone {
    (1..=MAX_MINOR, 1..=MAX_MINOR, 1..=MAX_MINOR, min_review..=MAX_MINOR).prop_flat_map(
        move |(single, daily, window, new_beneficiary)| {
            (min_review.min(single)..=single).prop_map(move |review| CurrencyLimits {
                single_max_minor: single,
                single_review_above_minor: review,
                daily_max_minor: daily,
                window_max_minor: window,
                new_beneficiary_review_above_minor: new_beneficiary,
            })
        },
    )
}

fn tiered<T: std::fmt::Debug + Clone>(
    each: impl Strategy<Value = T> + Clone,
) -> impl Strategy<Value = Tiered<T>> {
    (each.clone(), each.clone(), each).prop_map(|(standard, premium, business)| Tiered {
        standard,
        premium,
        business,
    })
}

fn subset(pool: &'static [&'static str]) -> impl Strategy<Value = Vec<&'static str>> {
    proptest::sample::subsequence(pool.to_vec(), 0..=pool.len())
}

fn config(min_review: u64) -> impl Strategy<Value = RiskRulesConfig> {
    let velocity = (1..=MAX_WINDOW_S, tiered(1u32..40), any::<bool>()).prop_map(
        |(window_s, max_count, deny)| VelocityConfig {
            window_s,
            max_count,
            action: if deny { RuleAction::Deny } else { RuleAction::Review },
        },
    );
    // EUR always has limits, USD sometimes, JPY never (it must be denied).
    let currencies = (tiered(limits(min_review)), proptest::option::of(tiered(limits(min_review))))
        .prop_map(|(eur, usd)| {
            let mut map = HashMap::from([(Currency::parse("EUR").unwrap(), eur)]);
            if let Some(usd) = usd {
                map.insert(Currency::parse("USD").unwrap(), usd);
            }
            map
        });
    (velocity, currencies, subset(COUNTRIES), subset(NAMES), subset(IBANS)).prop_map(
        |(velocity, currencies, countries, names, ibans)| RiskRulesConfig {
            velocity,
            currencies,
            blocked_countries: countries.iter().map(|c| CountryCode::parse(c).unwrap()).collect(),
            blocked_parties: BlockedParties {
                names: names.iter().map(|n| (*n).to_owned()).collect(),
                ibans: ibans.iter().map(|i| Iban::parse(i).unwrap()).collect(),
            },
        },
    )
}

fn beneficiary() -> impl Strategy<Value = Beneficiary> {
    prop_oneof![
        (2u128..100).prop_map(|n| Beneficiary::Internal { account: AccountId(Uuid::from_u128(n)) }),
        (
            proptest::sample::select(IBANS),
            proptest::sample::select(NAMES),
            proptest::sample::select(COUNTRIES)
        )
            .prop_map(|(iban, name, country)| Beneficiary::External {
                iban: Iban::parse(iban).unwrap(),
                name: BeneficiaryName::parse(name).unwrap(),
                country: CountryCode::parse(country).unwrap(),
            }),
    ]
}

fn payment(amount: u64, currency: &str, beneficiary: Beneficiary) -> NewPayment {
    NewPayment::new(
        PaymentId(Uuid::from_u128(1)),
        AccountId(Uuid::from_u128(1)),
        beneficiary,
        Amount::new(i64::try_from(amount).unwrap()).unwrap(),
        Currency::parse(currency).unwrap(),
        Reference::default(),
    )
    .unwrap()
}

fn tier() -> impl Strategy<Value = CustomerTier> {
    proptest::sample::select(vec![
        CustomerTier::Standard,
        CustomerTier::Premium,
        CustomerTier::Business,
    ])
}

/// A total: mostly ordinary, sometimes at the edge of `u64`.
fn total() -> impl Strategy<Value = u64> {
    prop_oneof![8 => 0..=MAX_MINOR, 1 => Just(u64::MAX), 1 => (u64::MAX - MAX_MINOR)..=u64::MAX]
}

fn case() -> impl Strategy<Value = Case> {
    (
        config(0),
        1..=MAX_MINOR,
        proptest::sample::select(CURRENCIES),
        beneficiary(),
        tier(),
        (0u32..60, total(), total(), any::<bool>()),
    )
        .prop_map(|(config, amount, currency, beneficiary, tier, history)| Case {
            config,
            payment: payment(amount, currency, beneficiary),
            customer: CustomerRisk { tier },
            history: RiskHistory {
                count_in_window: history.0,
                amount_in_window_minor: history.1,
                amount_today_minor: history.2,
                beneficiary_seen: history.3,
            },
        })
}

fn worse() -> impl Strategy<Value = Worse> {
    prop_oneof![
        (1..=MAX_MINOR).prop_map(Worse::Amount),
        (1u32..100).prop_map(Worse::Count),
        total().prop_map(Worse::WindowTotal),
        total().prop_map(Worse::TodayTotal),
        Just(Worse::UnseenBeneficiary),
        Just(Worse::BlockBeneficiaryCountry),
        Just(Worse::BlockIbanCountry),
        Just(Worse::BlockName),
        Just(Worse::BlockIban),
        (0usize..5, 0u64..1000)
            .prop_map(|(field, per_mille)| Worse::LowerLimit { field, per_mille }),
        (1u32..40).prop_map(Worse::LowerMaxCount),
        Just(Worse::VelocityDenies),
    ]
}

fn decide(case: &Case) -> RiskDecision {
    let rules = RiskRules::new(case.config.clone()).unwrap();
    evaluate(&rules, &case.payment, &case.customer, &case.history)
}

/// `case` made worse in one way.
fn make_worse(case: &Case, worse: &Worse) -> Case {
    let mut case = case.clone();
    let external = match case.payment.beneficiary() {
        Beneficiary::External { iban, name, country } => {
            Some((iban.clone(), name.clone(), *country))
        }
        Beneficiary::Internal { .. } => None,
    };
    match *worse {
        Worse::Amount(extra) => {
            let amount = case.payment.amount().minor_units().unsigned_abs().saturating_add(extra);
            let amount = amount.min(i64::MAX.unsigned_abs());
            let p = &case.payment;
            case.payment = NewPayment::new(
                p.id(),
                p.debtor_account(),
                p.beneficiary().clone(),
                Amount::new(i64::try_from(amount).unwrap()).unwrap(),
                p.currency(),
                p.reference().clone(),
            )
            .unwrap();
        }
        Worse::Count(extra) => {
            case.history.count_in_window = case.history.count_in_window.saturating_add(extra);
        }
        Worse::WindowTotal(extra) => {
            let total = &mut case.history.amount_in_window_minor;
            *total = total.saturating_add(extra);
        }
        Worse::TodayTotal(extra) => {
            let total = &mut case.history.amount_today_minor;
            *total = total.saturating_add(extra);
        }
        Worse::UnseenBeneficiary => case.history.beneficiary_seen = false,
        Worse::BlockBeneficiaryCountry => {
            if let Some((_, _, country)) = external {
                case.config.blocked_countries.push(country);
            }
        }
        Worse::BlockIbanCountry => {
            if let Some((iban, ..)) = external {
                case.config.blocked_countries.push(iban.country());
            }
        }
        Worse::BlockName => {
            if let Some((_, name, _)) = external {
                // Another spelling of the same name: upper case, spaces doubled.
                let variant = name.as_str().to_uppercase().replace(' ', "  ");
                case.config.blocked_parties.names.push(format!(" {variant} "));
            }
        }
        Worse::BlockIban => {
            if let Some((iban, ..)) = external {
                case.config.blocked_parties.ibans.push(iban);
            }
        }
        Worse::LowerLimit { field, per_mille } => {
            for tiers in case.config.currencies.values_mut() {
                for limits in [&mut tiers.standard, &mut tiers.premium, &mut tiers.business] {
                    let lower = |v: u64| v / 1000 * per_mille + v % 1000 * per_mille / 1000;
                    match field {
                        0 => {
                            limits.single_max_minor = lower(limits.single_max_minor).max(1);
                            limits.single_review_above_minor =
                                limits.single_review_above_minor.min(limits.single_max_minor);
                        }
                        1 => {
                            limits.single_review_above_minor =
                                lower(limits.single_review_above_minor);
                        }
                        2 => limits.daily_max_minor = lower(limits.daily_max_minor).max(1),
                        3 => limits.window_max_minor = lower(limits.window_max_minor).max(1),
                        _ => {
                            limits.new_beneficiary_review_above_minor =
                                lower(limits.new_beneficiary_review_above_minor);
                        }
                    }
                }
            }
        }
        Worse::LowerMaxCount(by) => {
            let counts = &mut case.config.velocity.max_count;
            for count in [&mut counts.standard, &mut counts.premium, &mut counts.business] {
                *count = count.saturating_sub(by).max(1);
            }
        }
        Worse::VelocityDenies => case.config.velocity.action = RuleAction::Deny,
    }
    case
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_payment_under_every_limit_with_a_clean_history_is_allowed(
        mut config in config(1),
        beneficiary in beneficiary(),
        tier in tier(),
        usd in any::<bool>(),
        fraction in 1u64..=1000,
        beneficiary_seen in any::<bool>(),
        count_in_window in 0u32..40,
    ) {
        // Nobody blocked this beneficiary.
        if let Beneficiary::External { iban, name, country } = &beneficiary {
            config.blocked_countries.retain(|c| c != country && *c != iban.country());
            config.blocked_parties.names.retain(|n| n != name.as_str());
            config.blocked_parties.ibans.retain(|i| i != iban);
        }
        let currency = if usd && config.currencies.contains_key(&Currency::parse("USD").unwrap()) {
            "USD"
        } else {
            "EUR"
        };
        let limits = config.currencies[&Currency::parse(currency).unwrap()].get(tier);
        let mut ceiling = limits
            .single_review_above_minor
            .min(limits.daily_max_minor)
            .min(limits.window_max_minor);
        if !beneficiary_seen {
            ceiling = ceiling.min(limits.new_beneficiary_review_above_minor);
        }
        let amount = (ceiling * fraction / 1000).max(1);
        let history = RiskHistory {
            count_in_window: count_in_window.min(*config.velocity.max_count.get(tier) - 1),
            amount_in_window_minor: 0,
            amount_today_minor: 0,
            beneficiary_seen,
        };
        let rules = RiskRules::new(config).unwrap();
        let decision =
            evaluate(&rules, &payment(amount, currency, beneficiary), &CustomerRisk { tier }, &history);
        prop_assert_eq!(decision, RiskDecision { outcome: RiskOutcome::Allow, reasons: vec![] });
    }

    #[test]
    fn making_a_case_worse_never_makes_the_decision_more_lenient(case in case(), worse in worse()) {
        let before = decide(&case);
        let after = decide(&make_worse(&case, &worse));
        prop_assert!(
            after.outcome >= before.outcome,
            "{:?} turned {:?} into {:?}", worse, before, after
        );
        for reason in &before.reasons {
            prop_assert!(after.has(reason.code), "{:?} dropped {:?}: {:?}", worse, reason.code, after);
        }
    }

    #[test]
    fn decisions_are_well_formed(case in case()) {
        let decision = decide(&case);
        let strictest = decision.reasons.iter().map(|r| r.outcome).max();
        prop_assert_eq!(decision.outcome, strictest.unwrap_or(RiskOutcome::Allow));
        prop_assert_eq!(decision.reasons.is_empty(), decision.outcome == RiskOutcome::Allow);
        prop_assert!(decision.reasons.iter().all(|r| r.outcome != RiskOutcome::Allow));
        let codes: HashSet<_> = decision.reasons.iter().map(|r| r.code).collect();
        prop_assert_eq!(codes.len(), decision.reasons.len(), "a reason is listed twice");

        let status = PaymentStatus::PendingRisk.transition(decision.trigger()).unwrap().status;
        let expected = match decision.outcome {
            RiskOutcome::Allow => PaymentStatus::Pending,
            RiskOutcome::Review => PaymentStatus::HeldForReview,
            RiskOutcome::Deny => PaymentStatus::Rejected,
        };
        prop_assert_eq!(status, expected);
    }
}
