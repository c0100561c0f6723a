//! Edge policy: Istio's request-path normalization and `AuthorizationPolicy` evaluation.
//!
//! The same YAML Istio enforces in a cluster is evaluated here, so one policy matrix test
//! proves both. Loading the YAML files is the adapters' job; this module holds the pure
//! model and the rules.

pub mod authz;
pub mod path;

pub use authz::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Decision, Headers, IpBlock, Labels,
    Request, RequestAuth, Workload, WorkloadPolicies, WorkloadSelector, string_match,
};
pub use path::{PathRejection, normalize, normalize_path};
