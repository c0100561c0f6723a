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

/// The matrix file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Matrix {
    /// Columns, in file order: who sends the request.
    subjects: serde_norway::Mapping,
    /// Rows.
    cases: Vec<Case>,
}

/// One column.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Subject {
    /// `invalid`: a token that fails verification.
    #[serde(default)]
    token: Option<String>,
    /// Realm roles of a valid token.
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// Extra or replaced claims of a valid token.
    #[serde(default)]
    claims: BTreeMap<String, serde_json::Value>,
}

/// One row.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// `METHOD PATH`.
    request: String,
    /// Extra request headers.
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Outcome per subject: `allow`, `400`, `401`, `403`, `404`.
    expect: BTreeMap<String, serde_norway::Value>,
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
    let text = std::fs::read_to_string(matrix_file)
        .map_err(|e| format!("{}: {e}", matrix_file.display()))?;
    let matrix: Matrix =
        serde_norway::from_str(&text).map_err(|e| format!("{}: {e}", matrix_file.display()))?;
    let issuer = plan
        .ingress_jwt_rules
        .first()
        .map(|rule| (rule.issuer.clone(), rule.audiences.first().cloned().unwrap_or_default()))
        .unwrap_or_default();
    let mut subjects: Vec<(String, Subject, Option<RequestAuth>)> = Vec::new();
    for (name, subject) in matrix.subjects {
        let name = name.as_str().ok_or("subject names are strings")?.to_owned();
        let subject: Subject =
            serde_norway::from_value(subject).map_err(|e| format!("subject `{name}`: {e}"))?;
        let auth = subject.auth(&name, &issuer);
        subjects.push((name, subject, auth));
    }
    let names: Vec<&str> = subjects.iter().map(|(name, ..)| name.as_str()).collect();
    let width = matrix.cases.iter().map(|c| c.request.len()).max().unwrap_or(7).max(7);
    let mut table = format!("{:width$}", "request");
    for name in &names {
        let _ = write!(table, "  {name:>w$}", w = name.len().max(5));
    }
    table.push('\n');
    let (mut mismatches, mut cells) = (0, 0);
    for case in &matrix.cases {
        let (method, target) = case
            .request
            .split_once(' ')
            .ok_or_else(|| format!("case `{}`: expected `METHOD PATH`", case.request))?;
        let _ = write!(table, "{:width$}", case.request);
        for (name, subject, auth) in &subjects {
            let expected = match case.expect.get(name) {
                Some(serde_norway::Value::String(s)) => s.clone(),
                Some(serde_norway::Value::Number(n)) => n.to_string(),
                _ => return Err(format!("case `{}`: no expectation for `{name}`", case.request)),
            };
            if !["allow", "400", "401", "403", "404"].contains(&expected.as_str()) {
                return Err(format!(
                    "case `{}`, `{name}`: `{expected}` is not allow/400/401/403/404",
                    case.request
                ));
            }
            let token = match (subject, auth) {
                (_, Some(auth)) => Token::Valid(auth),
                (Subject { token: Some(_), .. }, None) => Token::Invalid,
                _ => Token::Missing,
            };
            let got = outcome(&plan, method, target, &case.headers, token);
            cells += 1;
            // ferrobank refuses `;` path parameters outright (400) where Istio would go on to
            // deny: a refusal at least as strict as the one expected counts as a match.
            let stricter = got == "400" && (expected == "401" || expected == "403");
            let cell = if got == expected || stricter {
                got
            } else {
                mismatches += 1;
                format!("{got}!={expected}")
            };
            let _ = write!(table, "  {cell:>w$}", w = name.len().max(5));
        }
        table.push('\n');
        if let Some(extra) = case.expect.keys().find(|k| !names.contains(&k.as_str())) {
            return Err(format!("case `{}`: `{extra}` is not a subject", case.request));
        }
    }
    Ok(Report { table, mismatches, cells })
}

impl Subject {
    /// The verified token this subject presents, `None` for no token or an invalid one.
    fn auth(&self, name: &str, (issuer, audience): &(String, String)) -> Option<RequestAuth> {
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
        Some(RequestAuth::from_claims(claims))
    }
}
