//! Who is calling: the principal a validated access token stands for, and the realm roles.
//!
//! Built by the OIDC adapter from a token's claims once its signature and claims were
//! checked; nothing here parses or verifies tokens. Whatever a principal says (roles,
//! tier) comes from the validated token only, never from a request body or header.

use std::collections::BTreeSet;
use std::fmt;

use crate::risk::CustomerTier;

/// A realm role of the ferrobank realm that the services act on.
///
/// Roles the IdP adds on its own (`offline_access`, `uma_authorization`,
/// `default-roles-*`) or that ferrobank does not know are not represented: a service can
/// only ever grant something for a role it names here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Operates the bank: accounts, limits, configuration.
    BankingAdmin,
    /// Decides on loan applications.
    LoanOfficer,
    /// A customer acting on their own accounts.
    Customer,
    /// Reads risk data and scores.
    RiskAnalyst,
    /// Reviews flagged activity and audits.
    ComplianceOfficer,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 5] = [
        Role::BankingAdmin,
        Role::LoanOfficer,
        Role::Customer,
        Role::RiskAnalyst,
        Role::ComplianceOfficer,
    ];

    /// The role's name in the realm, as it appears in `realm_access.roles`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::BankingAdmin => "banking-admin",
            Role::LoanOfficer => "loan-officer",
            Role::Customer => "customer",
            Role::RiskAnalyst => "risk-analyst",
            Role::ComplianceOfficer => "compliance-officer",
        }
    }

    /// The role with this realm name, or `None` for a role ferrobank does not know.
    /// Names are compared exactly: IdP role names are case-sensitive.
    pub fn from_name(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The authenticated caller behind a validated access token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`: the stable id of the user (or service account) at the issuer.
    pub subject: String,
    /// `preferred_username`, for display and logs; never an identifier.
    pub username: Option<String>,
    /// The known roles granted to the caller.
    pub roles: BTreeSet<Role>,
    /// The OAuth client the token was issued to (`azp`).
    pub client_id: Option<String>,
    /// The granted scopes (`scope`, space-separated in the token).
    pub scopes: BTreeSet<String>,
    /// The issuer (`iss`) that vouched for all of the above.
    pub issuer: String,
    /// The customer's tier from the token's `tier` claim (a KYC outcome the identity
    /// provider keeps as the user attribute `tier`); `None` when the claim is missing or
    /// names no tier ferrobank knows.
    pub tier: Option<CustomerTier>,
}

impl Principal {
    /// Whether the caller holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether the caller holds at least one of `roles`.
    pub fn has_any_role(&self, roles: &[Role]) -> bool {
        roles.iter().any(|role| self.has_role(*role))
    }

    /// Whether the token granted `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_and_unknown_names_are_not_roles() {
        for role in Role::ALL {
            assert_eq!(Role::from_name(role.as_str()), Some(role));
        }
        assert_eq!(Role::from_name("offline_access"), None);
        assert_eq!(Role::from_name("Banking-Admin"), None);
    }

    #[test]
    fn has_role_and_scope() {
        let principal = Principal {
            subject: "u-1".into(),
            username: Some("alice".into()),
            roles: [Role::Customer].into_iter().collect(),
            client_id: Some("ferrobank-web".into()),
            scopes: ["openid".to_owned(), "profile".to_owned()].into_iter().collect(),
            issuer: "https://idp.example/realms/ferrobank".into(),
            tier: None,
        };
        assert!(principal.has_role(Role::Customer));
        assert!(!principal.has_role(Role::BankingAdmin));
        assert!(principal.has_any_role(&[Role::BankingAdmin, Role::Customer]));
        assert!(principal.has_scope("profile"));
        assert!(!principal.has_scope("email"));
    }
}
