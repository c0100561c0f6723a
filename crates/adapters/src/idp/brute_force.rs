//! Keycloak's brute-force detector (`DefaultBruteForceProtector`), as a pure function of
//! the realm's settings, the failure record and the time.
//!
//! After every `failureFactor` failures the user must wait `waitIncrementSeconds` times the
//! number of such rounds, at most `maxFailureWaitSeconds`; two failures closer than
//! `quickLoginCheckMilliSeconds` cost at least `minimumQuickLoginWaitSeconds`; a failure
//! more than `maxDeltaTimeSeconds` after the previous one starts the count again. With
//! `permanentLockout` the user is disabled instead. A success clears the record.

use super::realm::BruteForce;

/// One user's recent failures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// Failures counted.
    pub count: u32,
    /// When the last one happened.
    pub last_failure_ms: i64,
    /// No login is even checked before this.
    pub not_before_ms: i64,
}

/// What a failure leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing more than the failure.
    Counted,
    /// The user must wait until `Failures::not_before_ms`.
    TemporarilyLocked,
    /// The user must be disabled (permanent lockout).
    Disable,
}

impl Failures {
    /// Whether a login attempt at `now_ms` is refused without looking at the password.
    pub fn locked(&self, now_ms: i64) -> bool {
        now_ms < self.not_before_ms
    }

    /// Records a failure at `now_ms`.
    pub fn fail(&mut self, settings: &BruteForce, now_ms: i64) -> Verdict {
        let delta_ms = if self.count > 0 { now_ms - self.last_failure_ms } else { 0 };
        let max_delta_ms =
            i64::try_from(settings.max_delta_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if delta_ms > max_delta_ms {
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.last_failure_ms = now_ms;
        let factor = settings.failure_factor.max(1);
        if settings.permanent && self.count >= factor {
            return Verdict::Disable;
        }
        let quick_ms = i64::try_from(settings.quick_login_check_ms).unwrap_or(i64::MAX);
        let mut wait_s =
            if delta_ms > 0 && delta_ms < quick_ms { settings.min_quick_login_wait_s } else { 0 };
        if self.count.is_multiple_of(factor) {
            let rounds = u64::from(self.count / factor);
            wait_s = wait_s.max(rounds.saturating_mul(settings.wait_increment_s));
        }
        let wait_s = wait_s.min(settings.max_wait_s);
        if wait_s == 0 {
            return Verdict::Counted;
        }
        self.not_before_ms = now_ms + i64::try_from(wait_s * 1000).unwrap_or(i64::MAX / 2);
        Verdict::TemporarilyLocked
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The banking realm's numbers.
    const BANKING: BruteForce = BruteForce {
        enabled: true,
        permanent: false,
        failure_factor: 5,
        wait_increment_s: 60,
        max_wait_s: 900,
        quick_login_check_ms: 1000,
        min_quick_login_wait_s: 60,
        max_delta_s: 43_200,
    };

    #[test]
    fn the_fifth_failure_locks_for_a_minute_and_rounds_grow_to_the_maximum() {
        let mut f = Failures::default();
        let mut now = 1_000_000;
        for _ in 0..4 {
            now += 5_000;
            assert_eq!(f.fail(&BANKING, now), Verdict::Counted);
            assert!(!f.locked(now));
        }
        now += 5_000;
        assert_eq!(f.fail(&BANKING, now), Verdict::TemporarilyLocked);
        assert!(f.locked(now + 59_999) && !f.locked(now + 60_000));
        for _ in 0..75 {
            now += 61_000;
            f.fail(&BANKING, now);
        }
        assert_eq!(f.not_before_ms - now, 900_000, "capped at maxFailureWaitSeconds");
    }

    #[test]
    fn quick_failures_wait_and_old_ones_are_forgotten() {
        let mut f = Failures::default();
        f.fail(&BANKING, 10_000);
        assert_eq!(f.fail(&BANKING, 10_500), Verdict::TemporarilyLocked, "500 ms apart is quick");
        assert_eq!(f.not_before_ms, 70_500);
        let later = 10_500 + 43_200_001;
        f.fail(&BANKING, later);
        assert_eq!(f.count, 1, "a failure after maxDeltaTimeSeconds starts over");
    }

    #[test]
    fn permanent_lockout_disables() {
        let settings = BruteForce { permanent: true, ..BANKING };
        let mut f = Failures::default();
        let verdicts: Vec<_> = (0..5).map(|i| f.fail(&settings, 10_000 * (i + 1))).collect();
        assert_eq!(verdicts[4], Verdict::Disable);
    }
}
