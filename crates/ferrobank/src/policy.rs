//! `ferrobank policy test DIR MATRIX`: replays a table of requests against the Istio YAML
//! the gateway enforces and prints who gets what, marking every cell that differs from
//! the expectation.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use ferrobank_adapters::istio::Mesh;
use ferrobank_adapters::istio::plan::{Plan, Token, Verdict};
use ferrobank_domain::policy::{Request, RequestAuth, normalize};
use serde::Deserialize;
use serde_json::json;

/// The matrix file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    subjects: serde_norway::Mapping,
    cases: Vec<RawCase>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    request: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: BTreeMap<String, serde_norway::Value>,
}

/// A policy matrix: who (columns) sends what (rows), and what the edge must answer.
#[derive(Debug)]
pub struct Matrix {
    /// Columns, in file order.
    pub subjects: Vec<(String, Subject)>,
    /// Rows.
    pub cases: Vec<Case>,
}

/// One column: who sends the request.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Subject {
    /// `invalid`: a token that fails verification.
    #[serde(default)]
    pub token: Option<String>,
    /// Realm roles of a valid token.
    #[serde(default)]
    pub roles: Option<Vec<String>>,
    /// Extra or replaced claims of a valid token.
    #[serde(default)]
    pub claims: BTreeMap<String, serde_json::Value>,
}

/// One row.
#[derive(Debug)]
pub struct Case {
    /// `METHOD PATH` as written.
    pub request: String,
    /// The method.
    pub method: String,
    /// The path and query, unnormalized.
    pub target: String,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Outcome per subject: `allow`, `400`, `401`, `403`, `404`.
    pub expect: BTreeMap<String, String>,
}

/// The outcomes a matrix cell may expect.
const OUTCOMES: [&str; 5] = ["allow", "400", "401", "403", "404"];

impl Matrix {
    /// Reads and checks a matrix file: every row names every subject with a known outcome.
    pub fn load(file: &Path) -> Result<Matrix, String> {
        let at = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
        let text = std::fs::read_to_string(file).map_err(|e| at(&e))?;
        let raw: RawMatrix = serde_norway::from_str(&text).map_err(|e| at(&e))?;
        let mut subjects = Vec::new();
        for (name, subject) in raw.subjects {
            let name = name.as_str().ok_or_else(|| at(&"subject names are strings"))?.to_owned();
            let subject: Subject = serde_norway::from_value(subject)
                .map_err(|e| at(&format!("subject `{name}`: {e}")))?;
            subjects.push((name, subject));
        }
        let mut cases = Vec::new();
        for raw in raw.cases {
            let (method, target) = raw
                .request
                .split_once(' ')
                .ok_or_else(|| at(&format!("case `{}`: expected `METHOD PATH`", raw.request)))?;
            let mut expect = BTreeMap::new();
            for (name, _) in &subjects {
                let outcome = match raw.expect.get(name) {
                    Some(serde_norway::Value::String(s)) => s.clone(),
                    Some(serde_norway::Value::Number(n)) => n.to_string(),
                    _ => {
                        return Err(at(&format!(
                            "case `{}`: no expectation for `{name}`",
                            raw.request
                        )));
                    }
                };
                if !OUTCOMES.contains(&outcome.as_str()) {
                    return Err(at(&format!(
                        "case `{}`, `{name}`: `{outcome}` is not one of {OUTCOMES:?}",
                        raw.request
                    )));
                }
                expect.insert(name.clone(), outcome);
            }
            if let Some(extra) = raw.expect.keys().find(|k| !expect.contains_key(*k)) {
                return Err(at(&format!("case `{}`: `{extra}` is not a subject", raw.request)));
            }
            cases.push(Case {
                method: method.to_owned(),
                target: target.to_owned(),
                request: raw.request.clone(),
                headers: raw.headers,
                expect,
            });
        }
        Ok(Matrix { subjects, cases })
    }
}

/// Whether an outcome satisfies an expectation. ferrobank refuses `;` path parameters
/// outright (400) where Istio would go on to deny: a refusal at least as strict as the one
/// expected counts as a match.
pub fn satisfies(got: &str, expected: &str) -> bool {
    got == expected || (got == "400" && (expected == "401" || expected == "403"))
}

/// The table and whether every cell matched.
#[derive(Debug)]
pub struct Report {
    /// Printable table.
    pub table: String,
    /// Cells that differ.
    pub mismatches: usize,
    /// Cells checked.
    pub cells: usize,
}

/// What the edge does with one request from one subject.
pub fn outcome(
    plan: &Plan,
    method: &str,
    target: &str,
    headers: &BTreeMap<String, String>,
    token: Token<'_>,
) -> String {
    let Ok((path, _query)) = normalize(target) else {
        return "400".into();
    };
    let lookup = |name: &str| headers.get(name).cloned();
    let host = headers.get("host").map_or("localhost", String::as_str);
    let Some(route) = plan.route(host, method, &path, &lookup) else {
        return "404".into();
    };
    let request = Request {
        method,
        path: &path,
        host,
        port: 80,
        headers,
        source_ip: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        remote_ip: Some(std::net::IpAddr::from([203, 0, 113, 7])),
        source_principal: None,
        auth: None,
    };
    match plan.judge(route, &request, token) {
        Verdict::Allow => "allow".into(),
        Verdict::Unauthenticated { .. } => "401".into(),
        Verdict::Denied { .. } => "403".into(),
    }
}

/// Runs the matrix in `matrix_file` against the YAML in `dir`.
pub fn run(dir: &Path, matrix_file: &Path) -> Result<Report, String> {
    let mesh = Mesh::load(dir).map_err(|e| e.to_string())?;
    let plan = Plan::new(&mesh);
    let matrix = Matrix::load(matrix_file)?;
    let (issuer, audience) = plan
        .ingress_jwt_rules
        .first()
        .map(|rule| (rule.issuer.clone(), rule.audiences.first().cloned().unwrap_or_default()))
        .unwrap_or_default();
    let auths: Vec<Option<RequestAuth>> = matrix
        .subjects
        .iter()
        .map(|(name, subject)| {
            subject.claims(name, &issuer, &audience).map(RequestAuth::from_claims)
        })
        .collect();
    let width = matrix.cases.iter().map(|c| c.request.len()).max().unwrap_or(7).max(7);
    let mut table = format!("{:width$}", "request");
    for (name, _) in &matrix.subjects {
        let _ = write!(table, "  {name:>w$}", w = name.len().max(5));
    }
    table.push('\n');
    let (mut mismatches, mut cells) = (0, 0);
    for case in &matrix.cases {
        let _ = write!(table, "{:width$}", case.request);
        for ((name, subject), auth) in matrix.subjects.iter().zip(&auths) {
            let expected = &case.expect[name];
            let token = match (subject, auth) {
                (_, Some(auth)) => Token::Valid(auth),
                (Subject { token: Some(_), .. }, None) => Token::Invalid,
                _ => Token::Missing,
            };
            let got = outcome(&plan, &case.method, &case.target, &case.headers, token);
            cells += 1;
            let cell = if satisfies(&got, expected) {
                got
            } else {
                mismatches += 1;
                format!("{got}!={expected}")
            };
            let _ = write!(table, "  {cell:>w$}", w = name.len().max(5));
        }
        table.push('\n');
    }
    Ok(Report { table, mismatches, cells })
}

impl Subject {
    /// The claims of the valid token this subject presents; `None` for no token or an
    /// invalid one.
    pub fn claims(&self, name: &str, issuer: &str, audience: &str) -> Option<serde_json::Value> {
        if self.token.is_some() || (self.roles.is_none() && self.claims.is_empty()) {
            return None;
        }
        let mut claims = json!({
            "iss": issuer,
            "sub": format!("matrix-{name}"),
            "aud": [audience],
            "azp": "banking-web-app",
            "realm_access": {"roles": self.roles.clone().unwrap_or_default()},
        });
        for (key, value) in &self.claims {
            claims[key] = value.clone();
        }
        Some(claims)
    }
}
