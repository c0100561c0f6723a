#!/usr/bin/env python3
"""Strict offline validation of Kubernetes manifests, core and custom kinds, plus
ferrobank's own rules on them. Run by scripts/validate-deploy.sh.

    check.py [--profile base|production] [--label NAME] FILE...   ('-' reads stdin)
    check.py --self-test                                          the checks can fail

Each YAML document is routed by its apiVersion:
- Kubernetes kinds: `kubernetes-validate --strict` (unknown fields are errors; a kind it has
  no schema for is an error too: fail closed);
- Istio kinds (*.istio.io) and Prometheus Operator kinds (monitoring.coreos.com): the CRD
  schemas published in @kubernetes-models/istio and @kubernetes-models/prometheus-operator,
  plus an unknown-key walk against the models' type definitions (check.mjs), because those
  schemas accept any extra key;
- then ferrobank's key checks (KEY CHECKS below): the conventions of deploy/ that the
  gateway relies on and the defects of the original seed design that no schema can see
  (a token read from a query parameter, a rule that grants anyone an API path, a
  misspelled metric in an alert...).

`--profile base` (deploy/istio as loaded on a laptop) and `--profile production` (the
rendered production overlay) select the expected issuer, hosts and Gateway servers; without
a profile those checks are skipped.
"""
import argparse
import copy
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# --- the conventions (see deploy/README.md) ------------------------------------------------
NAMESPACES = {"istio-system", "banking-system"}
ROOT_NAMESPACE = "istio-system"
WORKLOADS = {
    "keycloak",
    "accounts-service",
    "payment-service",
    "loan-service",
    "customer-service",
    "notification-service",
    "audit-service",
    "banking-web-service",
}
DATA_STORES = {"postgres", "redis", "rabbitmq", "kafka", "mongodb"}
INGRESS_LABELS = {"istio": "ingressgateway"}
INGRESS_SA = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
REALM_ROLES = {"customer", "loan-officer", "banking-admin", "risk-analyst", "compliance-officer"}
AUDIENCES = ["banking-api"]
ISSUERS = {
    "base": "http://127.0.0.1:8080/realms/banking",
    "production": "https://auth.banking.local/realms/banking",
}
PRODUCTION_HOSTS = ["banking.local", "auth.banking.local", "api.banking.local"]
# Retry conditions under which the request never reached the upstream: safe for POST.
SAFE_RETRY_ON = {"connect-failure", "refused-stream"}
# AuthorizationPolicy: the features ferrobank's gateway implements (it refuses the rest).
AP_SPEC_KEYS = {"selector", "action", "rules"}
AP_RULE_KEYS = {"from", "to", "when"}
AP_SOURCE_KEYS = {
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
    "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
}
AP_OPERATION_KEYS = {"methods", "notMethods", "paths", "notPaths", "hosts", "notHosts", "ports", "notPorts"}
AP_WHEN_KEY = re.compile(
    r"^(request\.auth\.claims(\[[^\[\]]+\])+|request\.auth\.(principal|audiences|presenter)"
    r"|request\.headers\[[^\[\]]+\]|source\.(ip|namespace|principal)|remote\.ip|destination\.port)$"
)
ROLES_KEY = "request.auth.claims[realm_access][roles]"
# Paths an ALLOW rule open to anyone (no `from`, no `when`) must never grant, with the
# workload the routes send them to (None: any workload serves it).
PROTECTED_PATHS = {
    "/api/admin/x": "banking-web-service",
    "/api/accounts/1": "accounts-service",
    "/api/transfers/1": "accounts-service",
    "/api/payments/1": "payment-service",
    "/api/risk/reviews/1": "payment-service",
    "/api/loans/1": "loan-service",
    "/api/loans/my/1": "loan-service",
    "/api/customers/1": "customer-service",
    "/api/customers/me": "customer-service",
    "/api/notifications/1": "notification-service",
    "/api/webhooks/1": "notification-service",
    "/api/audit": "audit-service",
    "/admin/realms/banking/users": "keycloak",
    "/metrics": None,
}
# EnvoyFilter: Envoy's LocalRateLimit message (envoy.extensions.filters.http.local_ratelimit.v3).
LOCAL_RATE_LIMIT = "type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
LOCAL_RATE_LIMIT_KEYS = {
    "@type", "stat_prefix", "status", "token_bucket", "filter_enabled", "filter_enforced",
    "request_headers_to_add_when_not_enforced", "response_headers_to_add", "descriptors", "stage",
    "local_rate_limit_per_downstream_connection", "local_cluster_rate_limit",
    "enable_x_ratelimit_headers", "vh_rate_limits", "always_consume_default_token_bucket",
    "rate_limited_as_resource_exhausted",
}
TOKEN_BUCKET = {"max_tokens": 100, "tokens_per_fill": 100, "fill_interval": "60s"}
RUNTIME_FRACTION_KEYS = {"runtime_key", "default_value"}
FRACTION_KEYS = {"numerator", "denominator"}
HEADER_OPTION_KEYS = {"header", "append", "append_action", "keep_empty_value"}
HEADER_KEYS = {"key", "value", "raw_value"}
# Metrics an alert may use: Istio's standard metrics, Prometheus' own, and ferrobank's
# (read from the source: every counter!/gauge!/histogram!/describe_* name in crates/).
ISTIO_METRICS = {
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "istio_request_duration_milliseconds_sum",
    "istio_request_duration_milliseconds_count",
    "istio_request_bytes_bucket", "istio_request_bytes_sum", "istio_request_bytes_count",
    "istio_response_bytes_bucket", "istio_response_bytes_sum", "istio_response_bytes_count",
    "istio_tcp_connections_opened_total", "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total", "istio_tcp_received_bytes_total",
}
PROMETHEUS_METRICS = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
SEVERITIES = {"critical", "warning", "info"}
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
    "unless", "offset", "inf", "nan", "atan2", "start", "end",
}
ISTIO_GROUPS_SUFFIX = ".istio.io"
MODEL_GROUPS = {"monitoring.coreos.com"}


def ferrobank_metrics():
    names = set()
    pattern = re.compile(r'\b(counter|gauge|histogram|describe_counter|describe_gauge|describe_histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
    for path in glob.glob(os.path.join(ROOT, "crates", "**", "*.rs"), recursive=True):
        with open(path, encoding="utf-8", errors="replace") as source:
            for kind, name in pattern.findall(source.read()):
                if kind.endswith("histogram"):
                    names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
                else:
                    names.add(name)
    return names


# --- loading -------------------------------------------------------------------------------
def stringify_keys(value):
    """YAML may give non-string keys (`8080:`); Kubernetes turns them into strings."""
    if isinstance(value, dict):
        return {str(k): stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [stringify_keys(v) for v in value]
    return value


def load(paths):
    """[(where, doc)] for every non-empty document of the files."""
    docs = []
    for path in paths:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
        name = "<stdin>" if path == "-" else os.path.relpath(path, ROOT)
        for index, doc in enumerate(yaml.safe_load_all(text)):
            if doc is None:
                continue
            docs.append((f"{name}#{index}", stringify_keys(doc)))
    return docs


def describe(where, doc):
    meta = doc.get("metadata") or {} if isinstance(doc, dict) else {}
    kind = doc.get("kind", "?") if isinstance(doc, dict) else "?"
    return f"{where} {kind} {meta.get('namespace', '-')}/{meta.get('name', '?')}"


def group_of(doc):
    api = str(doc.get("apiVersion", ""))
    return api.split("/")[0] if "/" in api else ""


def is_model_kind(doc):
    group = group_of(doc)
    return group.endswith(ISTIO_GROUPS_SUFFIX) or group in MODEL_GROUPS


# --- schema checks ---------------------------------------------------------------------------
def check_core(docs):
    """kubernetes-validate --strict on the Kubernetes documents; fail closed on missing schemas."""
    if not docs:
        return []
    errors = []
    with tempfile.TemporaryDirectory() as work:
        files = []
        for i, (where, doc) in enumerate(docs):
            path = os.path.join(work, f"doc{i}.yaml")
            with open(path, "w") as out:
                yaml.safe_dump(doc, out, sort_keys=False)
            files.append((path, where, doc))
        done = subprocess.run(
            ["kubernetes-validate", "--strict", "--quiet"] + [f for f, _, _ in files],
            capture_output=True, text=True,
        )
        output = done.stdout + done.stderr
        for path, where, doc in files:
            lines = [line for line in output.splitlines() if path in line or os.path.basename(path) in line]
            for line in lines:
                text = line.replace(path, describe(where, doc))
                if "Couldn't find schema" in line:
                    errors.append(f"{text}: no schema for this kind (add a check before adding the kind)")
                elif "INFO" not in line and "validated" not in line:
                    errors.append(text)
        if done.returncode != 0 and not errors:
            errors.append(f"kubernetes-validate failed:\n{output}")
    return errors


def check_models(docs):
    """check.mjs: CRD schema + unknown keys. Returns (errors, {where: [free-form paths]})."""
    if not docs:
        return [], {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as out:
        json.dump([{"where": where, "doc": doc} for where, doc in docs], out, default=str)
        name = out.name
    try:
        done = subprocess.run(["node", os.path.join(HERE, "check.mjs"), name], capture_output=True, text=True)
    finally:
        os.unlink(name)
    if done.returncode != 0:
        return [f"check.mjs failed:\n{done.stdout}{done.stderr}"], {}
    results = json.loads(done.stdout)["results"]
    errors, free = [], {}
    by_where = dict(docs)
    for result in results:
        doc = by_where[result["where"]]
        for error in result["errors"]:
            errors.append(f"{describe(result['where'], doc)}: {error}")
        free[result["where"]] = result["freeForm"]
    return errors, free


# --- key checks ------------------------------------------------------------------------------
def istio_match(pattern, value):
    """Istio string match: exact, `prefix*`, `*suffix`, `*` = any non-empty value."""
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def operation_may_match_path(operation, path):
    paths, not_paths = operation.get("paths") or [], operation.get("notPaths") or []
    if paths and not any(istio_match(p, path) for p in paths):
        return False
    return not (not_paths and any(istio_match(p, path) for p in not_paths))


def selector_labels(spec, field="selector"):
    selector = spec.get(field)
    if selector is None:
        return None
    return selector.get("matchLabels", selector.get("labels")) or {}


def check_selector(problems, labels, namespace, what="selector"):
    if labels is None:
        return
    if namespace == "istio-system" and labels == INGRESS_LABELS:
        return
    if set(labels) == {"app"} and labels["app"] in WORKLOADS and namespace == "banking-system":
        return
    problems.append(
        f"{what} {labels} selects no ferrobank workload (app: one of {sorted(WORKLOADS)} in "
        f"banking-system, or istio: ingressgateway in istio-system)"
    )


def check_authorization_policy(doc, problems):
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    for key in spec:
        if key not in AP_SPEC_KEYS:
            problems.append(f"spec.{key}: not a field ferrobank's gateway implements (or misplaced)")
    action = spec.get("action", "ALLOW")
    if action not in ("ALLOW", "DENY"):
        problems.append(f"spec.action {action}: only ALLOW and DENY are supported")
    check_selector(problems, selector_labels(spec), meta.get("namespace"))
    rules = spec.get("rules") or []
    for i, rule in enumerate(rules):
        at = f"spec.rules[{i}]"
        for key in rule:
            if key not in AP_RULE_KEYS:
                problems.append(f"{at}.{key}: not a rule field")
        for j, item in enumerate(rule.get("from") or []):
            for key in item:
                if key != "source":
                    problems.append(f"{at}.from[{j}].{key}: not supported")
            for key, values in (item.get("source") or {}).items():
                if key not in AP_SOURCE_KEYS:
                    problems.append(f"{at}.from[{j}].source.{key}: not supported by ferrobank's gateway")
                if key in ("requestPrincipals", "notRequestPrincipals") and values != ["*"]:
                    problems.append(
                        f"{at}.from[{j}].source.{key}: {values}: match any valid token with [\"*\"], "
                        "never a literal issuer (it differs per environment)"
                    )
        for j, item in enumerate(rule.get("to") or []):
            for key in item:
                if key != "operation":
                    problems.append(f"{at}.to[{j}].{key}: not supported")
            operation = item.get("operation") or {}
            for key in operation:
                if key not in AP_OPERATION_KEYS:
                    problems.append(f"{at}.to[{j}].operation.{key}: not supported by ferrobank's gateway")
            for key in ("paths", "notPaths"):
                for path in operation.get(key) or []:
                    inner = path.strip("*")
                    if "{" in path or "*" in inner or path.startswith("**") or not (path.startswith("/") or path.startswith("*")):
                        problems.append(f"{at}.to[{j}].operation.{key}: {path!r}: only exact, prefix*, *suffix")
        for j, condition in enumerate(rule.get("when") or []):
            key = condition.get("key", "")
            if not AP_WHEN_KEY.match(key):
                problems.append(f"{at}.when[{j}].key {key!r}: not supported by ferrobank's gateway")
            if key.lower() == "request.headers[x-forwarded-proto]":
                problems.append(f"{at}.when[{j}]: no x-forwarded-proto conditions (TLS is the gateway's job)")
            if key == ROLES_KEY:
                for role in (condition.get("values") or []) + (condition.get("notValues") or []):
                    if role not in REALM_ROLES:
                        problems.append(f"{at}.when[{j}]: {role!r} is not a realm role")
            for extra in condition:
                if extra not in ("key", "values", "notValues"):
                    problems.append(f"{at}.when[{j}].{extra}: not supported")
        # Least privilege: an ALLOW rule names what it grants.
        if action == "ALLOW" and not rule.get("to"):
            problems.append(f"{at}: an ALLOW rule without `to` grants every path and method of the workload")
        # An ALLOW rule open to anyone must not reach a protected path: this is how the
        # seed's admin policy went wrong (its `to` became a rule of its own).
        if action == "ALLOW" and not rule.get("from") and not rule.get("when"):
            operations = [item.get("operation") or {} for item in rule.get("to") or []] or [{}]
            selected = (selector_labels(spec) or {}).get("app")
            for path, workload in PROTECTED_PATHS.items():
                if selected and workload and selected != workload:
                    continue
                if any(operation_may_match_path(op, path) for op in operations):
                    problems.append(
                        f"{at}: grants anyone (no from/when) the protected path {path} "
                        "(a rule split from its from/when?)"
                    )


def check_request_authentication(doc, problems, profile):
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    labels = selector_labels(spec)
    namespace = meta.get("namespace")
    if namespace == "istio-system" and labels != INGRESS_LABELS:
        problems.append("in istio-system a RequestAuthentication must select istio: ingressgateway")
    if namespace == "banking-system" and labels is not None:
        check_selector(problems, labels, namespace)
    rules = spec.get("jwtRules") or []
    if len(rules) != 1:
        problems.append(f"spec.jwtRules: exactly one rule (the banking realm), found {len(rules)}")
    for i, rule in enumerate(rules):
        at = f"spec.jwtRules[{i}]"
        for key in rule:
            if key not in ("issuer", "jwksUri", "audiences", "fromHeaders", "forwardOriginalToken"):
                why = {
                    "fromParams": "a token in a query parameter leaks into logs, history and Referer (RFC 9700, OAuth 2.1)",
                    "fromCookies": "a token in a cookie is sent on cross-site requests (CSRF)",
                    "outputPayloadToHeader": "the services validate the token themselves",
                }.get(key, "not used by ferrobank")
                problems.append(f"{at}.{key}: not allowed: {why}")
        if rule.get("audiences") != AUDIENCES:
            problems.append(f"{at}.audiences {rule.get('audiences')}: must be {AUDIENCES} (what the realm issues)")
        if rule.get("fromHeaders") != [{"name": "Authorization", "prefix": "Bearer "}]:
            problems.append(f"{at}.fromHeaders: only Authorization with prefix 'Bearer '")
        if rule.get("forwardOriginalToken") is not True:
            problems.append(f"{at}.forwardOriginalToken: true (the sidecars and services validate the token again)")
        issuer = rule.get("issuer", "")
        if profile and issuer != ISSUERS[profile]:
            problems.append(f"{at}.issuer {issuer!r}: the {profile} issuer is {ISSUERS[profile]!r}")
        if rule.get("jwksUri") != f"{issuer}/protocol/openid-connect/certs":
            problems.append(f"{at}.jwksUri: must be the issuer's {issuer}/protocol/openid-connect/certs")


def check_peer_authentication(doc, problems):
    spec = doc.get("spec") or {}
    check_selector(problems, selector_labels(spec), (doc.get("metadata") or {}).get("namespace"))
    if (spec.get("mtls") or {}).get("mode") != "STRICT":
        problems.append("spec.mtls.mode: STRICT (no plain text in the bank)")
    for port, setting in (spec.get("portLevelMtls") or {}).items():
        if (setting or {}).get("mode") != "STRICT":
            problems.append(f"spec.portLevelMtls[{port}]: {setting}: no port accepts plain text")


def check_virtual_service(doc, problems, profile):
    spec = doc.get("spec") or {}
    hosts = spec.get("hosts")
    if profile == "base" and hosts != ["*"]:
        problems.append(f"spec.hosts {hosts}: the base serves any host ([\"*\"])")
    if profile == "production" and hosts != PRODUCTION_HOSTS:
        problems.append(f"spec.hosts {hosts}: production hosts are {PRODUCTION_HOSTS}")
    if spec.get("tcp") or spec.get("tls"):
        problems.append("only http routes")
    for i, route in enumerate(spec.get("http") or []):
        at = f"spec.http[{i}]" + (f" ({route['name']})" if route.get("name") else "")
        for key in route:
            if key not in ("name", "match", "route", "timeout", "retries"):
                why = {"fault": "fault injection does not belong in production routes"}.get(key, "not used by the edge")
                problems.append(f"{at}.{key}: {why}")
        for j, match in enumerate(route.get("match") or []):
            if set(match) - {"uri"}:
                problems.append(f"{at}.match[{j}]: route by path only (found {sorted(set(match) - {'uri'})})")
            if set((match.get("uri") or {})) - {"prefix", "exact"}:
                problems.append(f"{at}.match[{j}].uri: prefix or exact only")
        destinations = route.get("route") or []
        if len(destinations) != 1:
            problems.append(f"{at}.route: exactly one destination")
        for dest in destinations:
            d = dest.get("destination") or {}
            if d.get("host") not in WORKLOADS:
                problems.append(f"{at}: destination host {d.get('host')!r} is no ferrobank workload")
            if (d.get("port") or {}).get("number") != 8080:
                problems.append(f"{at}: destination port must be 8080")
            if set(dest) - {"destination"}:
                problems.append(f"{at}.route: only a destination (no weights, no header rewrites)")
        if "timeout" not in route:
            problems.append(f"{at}: needs a timeout")
        retries = route.get("retries")
        if retries is None:
            problems.append(f"{at}: needs an explicit retries policy (Istio's default retries 503s, POSTs included)")
        else:
            conditions = {c.strip() for c in str(retries.get("retryOn", "")).split(",") if c.strip()}
            if not conditions or conditions - SAFE_RETRY_ON:
                problems.append(
                    f"{at}.retries.retryOn {retries.get('retryOn')!r}: only {sorted(SAFE_RETRY_ON)}, "
                    "the route carries non-idempotent POSTs"
                )


def check_gateway(doc, problems, profile):
    spec = doc.get("spec") or {}
    if spec.get("selector") != INGRESS_LABELS:
        problems.append("spec.selector: istio: ingressgateway")
    servers = spec.get("servers") or []
    shape = sorted(((s.get("port") or {}).get("number"), (s.get("port") or {}).get("protocol")) for s in servers)
    if profile == "base":
        if shape != [(80, "HTTP")] or servers[0].get("hosts") != ["*"] or servers[0].get("tls"):
            problems.append("spec.servers: the base has one server, port 80 HTTP, hosts [\"*\"], no tls/httpsRedirect")
    if profile == "production":
        if shape != [(80, "HTTP"), (443, "HTTPS")]:
            problems.append("spec.servers: production has 443 HTTPS and 80 HTTP (redirect)")
        for server in servers:
            port = (server.get("port") or {}).get("number")
            tls = server.get("tls") or {}
            if server.get("hosts") != PRODUCTION_HOSTS:
                problems.append(f"server {port}: hosts must be {PRODUCTION_HOSTS}")
            if port == 80 and tls != {"httpsRedirect": True}:
                problems.append("server 80: tls.httpsRedirect: true and nothing else")
            if port == 443 and (tls.get("mode") != "SIMPLE" or not tls.get("credentialName")):
                problems.append("server 443: tls mode SIMPLE with a credentialName")


WILDCARD_HOST = "*.banking-system.svc.cluster.local"


def check_destination_rule(doc, problems):
    spec = doc.get("spec") or {}
    if spec.get("host") not in WORKLOADS | {WILDCARD_HOST}:
        problems.append(f"spec.host {spec.get('host')!r}: a ferrobank workload or {WILDCARD_HOST}")
    policy = spec.get("trafficPolicy") or {}
    outlier = policy.get("outlierDetection") or {}
    for key in ("consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime", "maxEjectionPercent"):
        if key not in outlier:
            problems.append(f"spec.trafficPolicy.outlierDetection.{key}: missing")
    http = (policy.get("connectionPool") or {}).get("http") or {}
    if 0 < int(http.get("maxRequestsPerConnection", 0) or 0) < 10:
        problems.append("connectionPool.http.maxRequestsPerConnection below 10: a new mTLS connection every few requests")


def check_fields(problems, at, value, allowed):
    if not isinstance(value, dict):
        problems.append(f"{at}: must be an object")
        return
    for key in value:
        if key not in allowed:
            problems.append(f"{at}.{key}: unknown field")


def check_envoy_filter(doc, problems, free_paths):
    spec = doc.get("spec") or {}
    meta = doc.get("metadata") or {}
    if meta.get("namespace") != "istio-system" or (spec.get("workloadSelector") or {}).get("labels") != INGRESS_LABELS:
        problems.append("EnvoyFilters apply to the ingress gateway only (istio-system, workloadSelector istio: ingressgateway)")
    patches = spec.get("configPatches") or []
    checked = set()
    for i, patch in enumerate(patches):
        at = f"spec.configPatches[{i}]"
        match = patch.get("match") or {}
        if patch.get("applyTo") != "HTTP_FILTER" or match.get("context") != "GATEWAY":
            problems.append(f"{at}: only HTTP_FILTER patches in the GATEWAY context")
        value = (patch.get("patch") or {}).get("value") or {}
        checked.add(f"{at}.patch.value")
        check_fields(problems, f"{at}.patch.value", value, {"name", "typed_config"})
        if value.get("name") != "envoy.filters.http.local_ratelimit":
            problems.append(
                f"{at}: filter {value.get('name')!r}: only envoy.filters.http.local_ratelimit "
                "(a wasm filter needs a vm_config with its code, and ferrobank's gateway runs no wasm)"
            )
            continue
        config = value.get("typed_config") or {}
        if config.get("@type") != LOCAL_RATE_LIMIT:
            problems.append(f"{at}: typed_config @type must be {LOCAL_RATE_LIMIT} (not a TypedStruct wrapper)")
        check_fields(problems, f"{at}.patch.value.typed_config", config, LOCAL_RATE_LIMIT_KEYS)
        bucket = config.get("token_bucket")
        if bucket != TOKEN_BUCKET:
            problems.append(f"{at}: token_bucket {bucket} must be {TOKEN_BUCKET}")
        for key in ("filter_enabled", "filter_enforced"):
            if key in config:
                check_fields(problems, f"{at}...{key}", config[key], RUNTIME_FRACTION_KEYS)
                check_fields(problems, f"{at}...{key}.default_value", config[key].get("default_value") or {}, FRACTION_KEYS)
        for j, option in enumerate(config.get("response_headers_to_add") or []):
            check_fields(problems, f"{at}...response_headers_to_add[{j}]", option, HEADER_OPTION_KEYS)
            check_fields(problems, f"{at}...response_headers_to_add[{j}].header", option.get("header") or {}, HEADER_KEYS)
    for path in free_paths:
        if path not in checked:
            problems.append(f"{path}: free-form field nobody checks")


def promql_metrics(expr):
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        name = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in PROMQL_WORDS:
            continue
        before = text[: match.start()]
        if re.search(r"[0-9.]$", before):  # 5m, 1e3
            continue
        names.add(name)
    return names


def check_prometheus_rule(doc, problems, known_metrics):
    for g, group in enumerate((doc.get("spec") or {}).get("groups") or []):
        for r, rule in enumerate(group.get("rules") or []):
            at = f"spec.groups[{g}].rules[{r}] ({rule.get('alert') or rule.get('record')})"
            expr = str(rule.get("expr", ""))
            for name in sorted(promql_metrics(expr)):
                if name not in known_metrics:
                    problems.append(f"{at}: metric {name!r} is exported by neither Istio nor ferrobank")
            # Istio reports every request twice (client and server side): pick one.
            for selector in re.findall(r"\bistio_[a-z_]+(\{[^{}]*\})?", expr):
                if "reporter" not in selector:
                    problems.append(f"{at}: an istio_* selector without reporter= counts every request twice")
            severity = (rule.get("labels") or {}).get("severity")
            if rule.get("alert") and severity not in SEVERITIES:
                problems.append(f"{at}: severity {severity!r}: one of {sorted(SEVERITIES)}")


def check_service_monitor(doc, problems):
    spec = doc.get("spec") or {}
    selector = spec.get("selector") or {}
    apps = set()
    if (selector.get("matchLabels") or {}).get("app"):
        apps.add(selector["matchLabels"]["app"])
    for expression in selector.get("matchExpressions") or []:
        if expression.get("key") == "app" and expression.get("operator") == "In":
            apps.update(expression.get("values") or [])
    if not apps or apps - WORKLOADS:
        problems.append(f"spec.selector: must select ferrobank workloads by app (found {sorted(apps) or selector})")
    for i, endpoint in enumerate(spec.get("endpoints") or []):
        if endpoint.get("path") != "/metrics":
            problems.append(f"spec.endpoints[{i}].path: /metrics")
        if endpoint.get("honorLabels"):
            problems.append(f"spec.endpoints[{i}].honorLabels: a target must not overwrite job/namespace/instance")


def check_network_policy(doc, problems):
    def selectors(value, at):
        if isinstance(value, dict):
            for key, item in value.items():
                here = f"{at}.{key}"
                if key == "namespaceSelector":
                    for label in (item or {}).get("matchLabels") or {}:
                        if label != "kubernetes.io/metadata.name":
                            problems.append(f"{here}: select namespaces by kubernetes.io/metadata.name (found {label})")
                if key == "podSelector":
                    labels = (item or {}).get("matchLabels") or {}
                    for label, v in labels.items():
                        ok = (label == "app" and (v in WORKLOADS | DATA_STORES or v == "istiod")) or \
                             (label, v) in (("istio", "ingressgateway"), ("k8s-app", "kube-dns"))
                        if not ok:
                            problems.append(f"{here}: {label}: {v} is no known workload label")
                    for expression in (item or {}).get("matchExpressions") or []:
                        values = set(expression.get("values") or [])
                        if expression.get("key") != "app" or values - (WORKLOADS | DATA_STORES):
                            problems.append(f"{here}: {expression} selects unknown workloads")
                selectors(item, here)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                selectors(item, f"{at}[{i}]")

    selectors(doc.get("spec") or {}, "spec")


def key_checks(docs, free, profile):
    known_metrics = ISTIO_METRICS | PROMETHEUS_METRICS | ferrobank_metrics()
    errors = []
    for where, doc in docs:
        kind = doc.get("kind")
        meta = doc.get("metadata") or {}
        problems = []
        if is_model_kind(doc) and group_of(doc).endswith(ISTIO_GROUPS_SUFFIX):
            if meta.get("namespace") not in NAMESPACES:
                problems.append(f"metadata.namespace {meta.get('namespace')!r}: one of {sorted(NAMESPACES)}")
        if kind == "AuthorizationPolicy":
            check_authorization_policy(doc, problems)
        elif kind == "RequestAuthentication":
            check_request_authentication(doc, problems, profile)
        elif kind == "PeerAuthentication":
            check_peer_authentication(doc, problems)
        elif kind == "VirtualService":
            check_virtual_service(doc, problems, profile)
        elif kind == "Gateway":
            check_gateway(doc, problems, profile)
        elif kind == "DestinationRule":
            check_destination_rule(doc, problems)
        elif kind == "EnvoyFilter":
            check_envoy_filter(doc, problems, free.get(where, []))
        elif kind == "PrometheusRule":
            check_prometheus_rule(doc, problems, known_metrics)
        elif kind == "ServiceMonitor" and group_of(doc) == "monitoring.coreos.com":
            check_service_monitor(doc, problems)
        elif kind == "NetworkPolicy":
            check_network_policy(doc, problems)
        if kind != "EnvoyFilter":
            for path in free.get(where, []):
                problems.append(f"{path}: free-form field nobody checks")
        errors += [f"{describe(where, doc)}: {p}" for p in problems]
    # Set-level rules.
    kinds = [(doc.get("kind"), (doc.get("metadata") or {})) for _, doc in docs]
    if any(k == "AuthorizationPolicy" for k, _ in kinds):
        names = {(m.get("namespace"), m.get("name")) for k, m in kinds if k == "AuthorizationPolicy"}
        deny_all = [doc for _, doc in docs if doc.get("kind") == "AuthorizationPolicy"
                    and (doc.get("metadata") or {}).get("namespace") == "banking-system" and not doc.get("spec")]
        if not deny_all:
            errors.append("banking-system needs the deny-by-default AuthorizationPolicy (spec: {})")
        del names
    if any(k == "RequestAuthentication" for k, _ in kinds):
        ingress = [m for k, m in kinds if k == "RequestAuthentication" and m.get("namespace") == "istio-system"]
        mesh = [m for k, m in kinds if k == "RequestAuthentication" and m.get("namespace") == "banking-system"]
        if len(ingress) != 1 or len(mesh) != 1:
            errors.append("RequestAuthentication: one for the ingress gateway (istio-system) and one namespace-wide in banking-system")
    netpols = [doc for _, doc in docs if doc.get("kind") == "NetworkPolicy"]
    if any((d.get("spec") or {}).get("podSelector") in ({}, None) and "Egress" in ((d.get("spec") or {}).get("policyTypes") or [])
           for d in netpols):
        egress_ports = {p.get("port") for d in netpols if (d.get("spec") or {}).get("podSelector") in ({}, None)
                        for rule in (d.get("spec") or {}).get("egress") or [] for p in rule.get("ports") or []}
        for port, what in ((53, "DNS"), (15012, "istiod (sidecar configuration and certificates)")):
            if port not in egress_ports:
                errors.append(f"NetworkPolicy: egress is denied by default but no policy for every pod allows {what} (port {port})")
    vs_hosts = {((d.get("destination") or {}).get("host"))
                for _, doc in docs if doc.get("kind") == "VirtualService"
                for r in (doc.get("spec") or {}).get("http") or [] for d in r.get("route") or []}
    dr_hosts = {(doc.get("spec") or {}).get("host") for _, doc in docs if doc.get("kind") == "DestinationRule"}
    if dr_hosts and WILDCARD_HOST not in dr_hosts and vs_hosts - dr_hosts:
        errors.append(f"DestinationRule missing for {sorted(vs_hosts - dr_hosts)}")
    return errors


def kustomizations_complete(directories):
    """Every manifest beside a kustomization.yaml is one of its resources, and the reverse:
    what ferrobank's gateway loads from a directory is what Kubernetes gets."""
    errors = []
    for directory in directories:
        with open(os.path.join(directory, "kustomization.yaml"), encoding="utf-8") as source:
            kustomization = yaml.safe_load(source) or {}
        listed = {r for r in kustomization.get("resources") or [] if not r.startswith("..")}
        present = {os.path.basename(p) for p in glob.glob(os.path.join(directory, "*.y*ml"))} - {"kustomization.yaml"}
        for name in sorted(present - listed):
            errors.append(f"{directory}/{name}: not a resource of {directory}/kustomization.yaml")
        for name in sorted(listed - present):
            errors.append(f"{directory}/kustomization.yaml: resource {name} does not exist")
    return errors


def validate(docs, profile):
    core = [(w, d) for w, d in docs if isinstance(d, dict) and not is_model_kind(d)]
    models = [(w, d) for w, d in docs if isinstance(d, dict) and is_model_kind(d)]
    errors = [f"{w}: not a Kubernetes object" for w, d in docs if not isinstance(d, dict)]
    for where, doc in core:
        if doc.get("kind") == "Kustomization":
            errors.append(f"{where}: a Kustomization is not a manifest (validate the rendered overlay instead)")
    core = [(w, d) for w, d in core if d.get("kind") != "Kustomization"]
    errors += check_core(core)
    model_errors, free = check_models(models)
    errors += model_errors
    errors += key_checks(core + models, free, profile)
    return errors


# --- self-test -------------------------------------------------------------------------------
# Known-good documents the self-test breaks one defect at a time (self-contained, so that a
# broken deploy/ cannot break the self-test itself; they must pass first).
SELF_TEST_GOOD = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payment-service, namespace: banking-system}
spec:
  selector: {matchLabels: {app: payment-service}}
  rules:
    - from: [{source: {requestPrincipals: ["*"]}}]
      to: [{operation: {methods: [GET, POST], paths: ["/api/payments*"]}}]
      when: [{key: "request.auth.claims[realm_access][roles]", values: [customer, banking-admin]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: banking-web-service, namespace: banking-system}
spec:
  selector: {matchLabels: {app: banking-web-service}}
  rules:
    - to: [{operation: {notPaths: ["/api/*", "/metrics"]}}]
    - from: [{source: {requestPrincipals: ["*"]}}]
      to: [{operation: {methods: [GET, POST, PUT, DELETE], paths: ["/api/admin", "/api/admin/*"]}}]
      when: [{key: "request.auth.claims[realm_access][roles]", values: [banking-admin]}]
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: banking-system}
spec:
  jwtRules:
    - issuer: http://127.0.0.1:8080/realms/banking
      jwksUri: http://127.0.0.1:8080/realms/banking/protocol/openid-connect/certs
      audiences: [banking-api]
      fromHeaders: [{name: Authorization, prefix: "Bearer "}]
      forwardOriginalToken: true
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: banking-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: banking, namespace: banking-system}
spec:
  hosts: ["*"]
  gateways: [istio-system/banking-gateway]
  http:
    - name: loans
      match: [{uri: {prefix: /api/loans}}]
      route: [{destination: {host: loan-service, port: {number: 8080}}}]
      timeout: 10s
      retries: {attempts: 2, perTryTimeout: 10s, retryOn: "connect-failure,refused-stream"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: loan-service, namespace: banking-system}
spec:
  host: loan-service
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 3s}
      http: {http1MaxPendingRequests: 100, maxRetries: 3}
    outlierDetection: {consecutive5xxErrors: 5, consecutiveGatewayErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
---
apiVersion: networking.istio.io/v1alpha3
kind: EnvoyFilter
metadata: {name: ingress-local-rate-limit, namespace: istio-system}
spec:
  workloadSelector: {labels: {istio: ingressgateway}}
  configPatches:
    - applyTo: HTTP_FILTER
      match: {context: GATEWAY, listener: {filterChain: {filter: {name: envoy.filters.network.http_connection_manager}}}}
      patch:
        operation: INSERT_FIRST
        value:
          name: envoy.filters.http.local_ratelimit
          typed_config:
            "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
            stat_prefix: http_local_rate_limiter
            token_bucket: {max_tokens: 100, tokens_per_fill: 100, fill_interval: 60s}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata: {name: alerts, namespace: banking-system}
spec:
  groups:
    - name: g
      rules:
        - alert: BankingJWTValidationFailure
          labels: {severity: warning}
          expr: sum(rate(istio_requests_total{reporter="source", response_code="401"}[5m])) > 0.05
---
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: ferrobank-services, namespace: banking-system}
spec:
  selector: {matchLabels: {app: accounts-service}}
  endpoints: [{port: http, path: /metrics}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-from-ingress-gateway, namespace: banking-system}
spec:
  podSelector: {matchLabels: {app: accounts-service}}
  policyTypes: [Ingress]
  ingress:
    - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: istio-system}}, podSelector: {matchLabels: {istio: ingressgateway}}}]
      ports: [{protocol: TCP, port: 8080}]
"""


def self_test():
    """Each broken document must be refused, for the expected reason."""
    base = {d["kind"] + "/" + d["metadata"]["name"]: stringify_keys(d) for d in yaml.safe_load_all(SELF_TEST_GOOD) if d}
    good = validate([(f"self-test-good:{key}", doc) for key, doc in base.items()], "base")
    good = [e for e in good if e.startswith("self-test-good:")]
    if good:
        print("self-test FAILED: the known-good documents are refused:\n  " + "\n  ".join(good))
        return 1
    payment = copy.deepcopy(base["AuthorizationPolicy/payment-service"])
    payment["spec"]["to"] = payment["spec"]["rules"][0].pop("to")
    circuit = copy.deepcopy(base["DestinationRule/loan-service"])
    circuit["spec"]["trafficPolicy"]["connectionPool"]["http"].update(
        consecutiveGatewayErrors=5, interval="30s", baseEjectionTime="30s", maxEjectionPercent=50)
    split = copy.deepcopy(base["AuthorizationPolicy/banking-web-service"])
    admin = split["spec"]["rules"].pop()
    split["spec"]["rules"] += [{"from": admin["from"], "when": admin["when"]}, {"to": admin["to"]}]
    params = copy.deepcopy(base["RequestAuthentication/jwt"])
    params["spec"]["jwtRules"][0]["fromParams"] = ["access_token"]
    audiences = copy.deepcopy(base["RequestAuthentication/jwt"])
    audiences["spec"]["jwtRules"][0]["audiences"] = ["banking-web-app", "banking-api-gateway"]
    issuer = copy.deepcopy(base["AuthorizationPolicy/payment-service"])
    issuer["spec"]["rules"][0]["from"][0]["source"]["requestPrincipals"] = ["https://auth.banking.local/realms/banking/*"]
    nobody = copy.deepcopy(base["RequestAuthentication/jwt"])
    nobody["spec"]["selector"] = {"matchLabels": {"app": "banking-service"}}
    permissive = copy.deepcopy(base["PeerAuthentication/default"])
    permissive["spec"]["selector"] = {"matchLabels": {"app": "keycloak"}}
    permissive["spec"]["portLevelMtls"] = {8080: {"mode": "PERMISSIVE"}}
    fault = copy.deepcopy(base["VirtualService/banking"])
    fault["spec"]["http"][0]["fault"] = {"delay": {"percentage": {"value": 0.1}, "fixedDelay": "5s"}}
    retry = copy.deepcopy(base["VirtualService/banking"])
    retry["spec"]["http"][0]["retries"]["retryOn"] = "5xx,reset,connect-failure,refused-stream"
    wasm = copy.deepcopy(base["EnvoyFilter/ingress-local-rate-limit"])
    wasm["spec"]["configPatches"].append({
        "applyTo": "HTTP_FILTER", "match": {"context": "GATEWAY"},
        "patch": {"operation": "INSERT_BEFORE", "value": {"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "banking_security_filter", "root_id": "banking_security"}}}}})
    typed_struct = copy.deepcopy(base["EnvoyFilter/ingress-local-rate-limit"])
    typed_struct["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["tokens_per_fil"] = 100
    metric = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
              "metadata": {"name": "typo", "namespace": "banking-system"},
              "spec": {"groups": [{"name": "g", "rules": [{
                  "alert": "BankingJWTValidationFailure", "labels": {"severity": "warning"},
                  "expr": 'rate(istio_request_total{response_code="401"}[5m]) > 0.05'}]}]}}
    monitor_v1 = {"apiVersion": "v1", "kind": "ServiceMonitor", "metadata": {"name": "banking-services", "namespace": "banking-system"},
                  "spec": {"selector": {"matchLabels": {"app": "accounts-service"}}, "endpoints": [{"port": "http", "path": "/metrics"}]}}
    monitor = {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
               "metadata": {"name": "banking-services", "namespace": "banking-system"},
               "spec": {"selector": {"matchLabels": {"app": "banking-service"}},
                        "endpoints": [{"port": "metrics", "path": "/actuator/prometheus", "honorLabels": True}]}}
    netpol = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "x", "namespace": "banking-system"},
              "spec": {"podSelector": {"matchLabels": {"tier": "application"}}, "ingress": [{"fromm": []}]}}
    cases = [
        ("payment policy with spec.to", payment, "spec.to: unknown field"),
        ("outlier fields under connectionPool.http", circuit, "connectionPool.http.consecutiveGatewayErrors: unknown field"),
        ("admin rule split from its from/when", split, "grants anyone (no from/when) the protected path /api/admin/x"),
        ("admin rule split: the from/when half", split, "an ALLOW rule without `to` grants every path"),
        ("token from a query parameter", params, "fromParams: not allowed"),
        ("audiences the realm does not issue", audiences, "audiences ['banking-web-app', 'banking-api-gateway']"),
        ("literal issuer in requestPrincipals", issuer, "never a literal issuer"),
        ("selector matching no workload", nobody, "selects no ferrobank workload"),
        ("PERMISSIVE port", permissive, "portLevelMtls[8080]"),
        ("fault injection in a route", fault, "fault: fault injection"),
        ("POST retries on 5xx/reset", retry, "retryOn '5xx,reset,connect-failure,refused-stream'"),
        ("wasm filter without vm_config", wasm, "only envoy.filters.http.local_ratelimit"),
        ("misspelled LocalRateLimit field", typed_struct, "tokens_per_fil: unknown field"),
        ("misspelled metric in an alert", metric, "metric 'istio_request_total' is exported by neither"),
        ("ServiceMonitor with apiVersion v1", monitor_v1, "no schema for this kind"),
        ("ServiceMonitor selecting nothing", monitor, "must select ferrobank workloads by app"),
        ("ServiceMonitor honoring target labels", monitor, "honorLabels"),
        ("NetworkPolicy unknown field and label", netpol, "fromm"),
    ]
    # One run for all of them (the schema tools start once); each document's errors carry
    # its name.
    errors = validate([(f"self-test:{name}", doc) for name, doc, _ in cases], None)
    failures = 0
    for name, doc, expected in cases:
        mine = [e for e in errors if e.startswith(f"self-test:{name}#") or f"self-test:{name} " in e]
        if not any(expected in e for e in mine):
            failures += 1
            print(f"self-test FAILED: {name}: expected an error containing {expected!r}, got:")
            for e in mine or ["(no error)"]:
                print(f"  {e}")
    if failures:
        return 1
    print(f"self-test: {len(cases)} broken documents refused, each for its defect")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", choices=sorted(ISSUERS))
    parser.add_argument("--label", help="name for the summary line")
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("--expect-errors", metavar="FILE",
                        help="the files must fail, with every line of FILE in the errors")
    parser.add_argument("--kustomization", action="append", default=[], metavar="DIR",
                        help="a directory whose kustomization.yaml must list exactly its manifests (repeatable)")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    docs = load(args.files)
    errors = kustomizations_complete(args.kustomization) + validate(docs, args.profile)
    if args.expect_errors:
        with open(args.expect_errors, encoding="utf-8") as source:
            wanted = [line.rstrip("\n") for line in source if line.strip() and not line.startswith("#")]
        missing = [w for w in wanted if not any(w in e for e in errors)]
        for w in missing:
            print(f"error: {args.label or 'files'}: expected an error containing: {w}")
        if missing:
            print("errors found:\n  " + "\n  ".join(errors))
            return 1
        print(f"{args.label or 'files'}: refused, with all {len(wanted)} expected errors ({len(errors)} in all)")
        return 0
    if errors:
        for error in errors:
            print(f"error: {error}")
        return 1
    print(f"{args.label or 'manifests'}: {len(docs)} document(s) valid (strict schemas, key checks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
