//! The edge's decision for one request, as Istio makes it: the ingress gateway routes and
//! judges, then the destination workload's sidecar judges again.
//!
//! Shared by ferrobank's gateway (with verified tokens) and `ferrobank policy test` (with
//! the claims a matrix row describes), so both give the same answer by construction.

use std::collections::HashMap;

use ferrobank_domain::policy::{Decision, Request, RequestAuth, Workload, WorkloadPolicies};

use super::{BoundRoute, Mesh, resources::JwtRule};

/// The ingress gateway's identity as a sidecar sees it (Istio's default service account).
pub const INGRESS_PRINCIPAL: &str =
    "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

/// The ingress gateway workload of Istio's default install.
pub fn ingress_workload() -> Workload {
    Workload {
        namespace: super::ROOT_NAMESPACE.to_owned(),
        labels: [("istio".to_owned(), "ingressgateway".to_owned())].into_iter().collect(),
    }
}

/// A destination service and the policies of its workload.
#[derive(Debug, Clone)]
pub struct DestinationPlan {
    /// The service's short name (`payment-service`), also its `app` label.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The workload (`app: <name>` in the namespace).
    pub workload: Workload,
    /// The AuthorizationPolicies that apply to it.
    pub policies: WorkloadPolicies,
    /// The JWT rules its sidecar applies.
    pub jwt_rules: Vec<JwtRule>,
}

/// What the edge does with a request.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The ingress gateway workload.
    pub ingress: Workload,
    /// Its policies.
    pub ingress_policies: WorkloadPolicies,
    /// Its JWT rules.
    pub ingress_jwt_rules: Vec<JwtRule>,
    /// Routes in order.
    pub routes: Vec<BoundRoute>,
    /// By destination host as written in the routes.
    pub destinations: HashMap<String, DestinationPlan>,
}

/// The token a request carries, as far as the edge is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Token<'a> {
    /// No `Authorization: Bearer`.
    Missing,
    /// Present, verified.
    Valid(&'a RequestAuth),
    /// Present, refused by verification.
    Invalid,
}

/// The edge's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward to the route's destination.
    Allow,
    /// 401: a token was presented and failed verification (`who` = ingress or service).
    Unauthenticated {
        /// Where.
        at: String,
    },
    /// 403 `RBAC: access denied`.
    Denied {
        /// Where (`ingress` or the service name).
        at: String,
        /// The deciding policy.
        by: String,
    },
}

impl Plan {
    /// Builds the plan for Istio's default ingress gateway.
    pub fn new(mesh: &Mesh) -> Plan {
        let ingress = ingress_workload();
        let routes = mesh.gateway_routes(&ingress);
        let mut destinations = HashMap::new();
        for route in &routes {
            let host = route.route.route[0].destination.host.clone();
            let name = host.split('.').next().unwrap_or(&host).to_owned();
            let namespace = host.split('.').nth(1).unwrap_or(&route.namespace).to_owned();
            let workload = Workload {
                namespace: namespace.clone(),
                labels: [("app".to_owned(), name.clone())].into_iter().collect(),
            };
            destinations.entry(host).or_insert_with(|| DestinationPlan {
                policies: mesh.authorization_for(&workload),
                jwt_rules: mesh.jwt_rules_for(&workload),
                name,
                namespace,
                workload,
            });
        }
        Plan {
            ingress_policies: mesh.authorization_for(&ingress),
            ingress_jwt_rules: mesh.jwt_rules_for(&ingress),
            ingress,
            routes,
            destinations,
        }
    }

    /// The first route that takes the request.
    pub fn route(
        &self,
        host: &str,
        method: &str,
        path: &str,
        header: &dyn Fn(&str) -> Option<String>,
    ) -> Option<&BoundRoute> {
        self.routes.iter().find(|r| r.matches(host, method, path, header))
    }

    /// The destination of a route.
    pub fn destination(&self, route: &BoundRoute) -> Option<&DestinationPlan> {
        self.destinations.get(&route.route.route[0].destination.host)
    }

    /// Ingress then sidecar: `request` as the ingress sees it (client address, no peer
    /// identity); the sidecar sees the ingress's mTLS identity.
    pub fn judge(&self, route: &BoundRoute, request: &Request<'_>, token: Token<'_>) -> Verdict {
        let auth_for = |rules: &[JwtRule]| match token {
            Token::Valid(auth) if !rules.is_empty() => Ok(Some(auth)),
            Token::Invalid if !rules.is_empty() => Err(()),
            // Without a RequestAuthentication nothing reads the token (as in Istio).
            _ => Ok(None),
        };
        let Ok(auth) = auth_for(&self.ingress_jwt_rules) else {
            return Verdict::Unauthenticated { at: "ingress".into() };
        };
        let at_ingress = Request { auth, ..*request };
        if let Decision::Deny { by } = self.ingress_policies.evaluate(&at_ingress) {
            return Verdict::Denied { at: "ingress".into(), by };
        }
        let Some(destination) = self.destination(route) else {
            return Verdict::Allow;
        };
        let Ok(auth) = auth_for(&destination.jwt_rules) else {
            return Verdict::Unauthenticated { at: destination.name.clone() };
        };
        let at_sidecar = Request { auth, source_principal: Some(INGRESS_PRINCIPAL), ..*request };
        match destination.policies.evaluate(&at_sidecar) {
            Decision::Allow { .. } => Verdict::Allow,
            Decision::Deny { by } => Verdict::Denied { at: destination.name.clone(), by },
        }
    }
}
