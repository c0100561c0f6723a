#!/usr/bin/env python3
"""Reference evaluation of a policy matrix (POLICY_MATRIX.yaml) against a directory of Istio
resources, as Istio enforces them. Run by scripts/validate-deploy.sh; the same matrix is
what `ferrobank policy test DIR POLICY_MATRIX.yaml` checks with ferrobank's own engine, so
the two must agree.

    policy_matrix.py DIR MATRIX                       every row must hold
    policy_matrix.py DIR MATRIX --expect-failures MD  exactly the failures listed in MD's
                                                      table (rows `| `REQUEST` | subject |
                                                      expected | actual |`)
    policy_matrix.py DIR MATRIX --print-failures      print the failures as such a table
    policy_matrix.py --expect-load-error TEXT DIR     DIR must be refused by the strict
                                                      loader, with TEXT in the reason

Model (POLICY_MATRIX.yaml's header says the same):
1. the request path is normalized as Istio's DECODE_AND_MERGE_SLASHES (decode unreserved
   %XX and %2F/%5C, backslash to slash, merge slashes, remove dot segments); case is kept;
2. the ingress gateway (istio-system, istio: ingressgateway): RequestAuthentication (an
   invalid token, an unknown issuer or a foreign audience -> 401; no token is not an
   error), then its AuthorizationPolicies (and the root namespace's) -> 403;
3. the VirtualService bound to the Gateway routes by path to a destination host, the
   workload labelled app: HOST in banking-system;
4. the token goes on only if forwardOriginalToken is true;
5. the workload's sidecar: RequestAuthentication again (401), then the AuthorizationPolicies
   of banking-system selecting it or namespace-wide, and the root namespace's (403); the
   sidecar sees the ingress gateway's identity (principal
   cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account).

The loader is strict like ferrobank's: an AuthorizationPolicy field outside the supported
set, or action CUSTOM/AUDIT, refuses the whole directory.
"""
import argparse
import glob
import ipaddress
import os
import re
import sys

import yaml

ROOT_NAMESPACE = "istio-system"
INGRESS = ("istio-system", {"istio": "ingressgateway", "app": "istio-ingressgateway"})
INGRESS_SA = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"
SERVICES_NAMESPACE = "banking-system"
DEFAULT_ISSUER = "http://127.0.0.1:8080/realms/banking"
CLIENT_IP = "203.0.113.10"
INGRESS_POD_IP = "10.0.0.10"
TOKEN_AUDIENCE = ["banking-api"]  # what the banking realm issues
EXPECT_VALUES = {"allow", "401", "403"}

SPEC_KEYS = {"selector", "action", "rules"}
RULE_KEYS = {"from", "to", "when"}
SOURCE_KEYS = {
    "principals", "notPrincipals", "requestPrincipals", "notRequestPrincipals", "namespaces",
    "notNamespaces", "ipBlocks", "notIpBlocks", "remoteIpBlocks", "notRemoteIpBlocks",
}
OPERATION_KEYS = {"methods", "notMethods", "paths", "notPaths", "hosts", "notHosts", "ports", "notPorts"}
WHEN_KEY = re.compile(
    r"^(request\.auth\.claims(\[[^\[\]]+\])+|request\.auth\.(principal|audiences|presenter)"
    r"|request\.headers\[[^\[\]]+\]|source\.(ip|namespace|principal)|remote\.ip|destination\.port)$"
)


class LoadError(Exception):
    pass


# --- path normalization ----------------------------------------------------------------------
UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize(path):
    out, i = [], 0
    while i < len(path):
        c = path[i]
        if c == "%" and re.fullmatch(r"[0-9A-Fa-f]{2}", path[i + 1:i + 3]):
            ch = chr(int(path[i + 1:i + 3], 16))
            if ch in "/\\":
                out.append("/")
            elif ch in UNRESERVED:
                out.append(ch)
            else:
                out.append("%" + path[i + 1:i + 3].upper())
            i += 3
            continue
        out.append("/" if c == "\\" else c)
        i += 1
    merged = re.sub(r"/+", "/", "".join(out))
    segments, parts = [], merged.split("/")[1:]
    trailing = False
    for index, segment in enumerate(parts):
        last = index == len(parts) - 1
        if segment == ".":
            trailing = last
        elif segment == "..":
            if segments:
                segments.pop()
            trailing = last
        else:
            segments.append(segment)
            trailing = False
    result = "".join("/" + s for s in segments)
    if not result or (trailing and not result.endswith("/")):
        result += "/"
    return result


# --- loading ---------------------------------------------------------------------------------
def load_dir(directory):
    resources = []
    files = sorted(glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml")))
    if not files:
        raise LoadError(f"{directory}: no YAML files")
    for path in files:
        with open(path, encoding="utf-8") as source:
            for doc in yaml.safe_load_all(source):
                if not doc or doc.get("kind") == "Kustomization":
                    continue
                meta = doc.get("metadata") or {}
                if not meta.get("namespace"):
                    raise LoadError(f"{path}: {doc.get('kind')} {meta.get('name')}: metadata.namespace is required")
                if doc.get("kind") == "AuthorizationPolicy":
                    check_policy(path, doc)
                resources.append(doc)
    return resources


def check_policy(path, doc):
    name = f"{path}: AuthorizationPolicy {doc['metadata']['namespace']}/{doc['metadata'].get('name')}"
    spec = doc.get("spec") or {}

    def only(value, allowed, at):
        if not isinstance(value, dict):
            raise LoadError(f"{name}: {at}: must be a mapping")
        for key in value:
            if key not in allowed:
                raise LoadError(f"{name}: {at}.{key}: unknown or unsupported field")

    only(spec, SPEC_KEYS, "spec")
    if spec.get("action", "ALLOW") not in ("ALLOW", "DENY"):
        raise LoadError(f"{name}: spec.action {spec.get('action')}: unsupported")
    if "selector" in spec:
        only(spec["selector"], {"matchLabels"}, "spec.selector")
    for i, rule in enumerate(spec.get("rules") or []):
        only(rule, RULE_KEYS, f"spec.rules[{i}]")
        for j, item in enumerate(rule.get("from") or []):
            only(item, {"source"}, f"spec.rules[{i}].from[{j}]")
            only(item.get("source") or {}, SOURCE_KEYS, f"spec.rules[{i}].from[{j}].source")
        for j, item in enumerate(rule.get("to") or []):
            only(item, {"operation"}, f"spec.rules[{i}].to[{j}]")
            operation = item.get("operation") or {}
            only(operation, OPERATION_KEYS, f"spec.rules[{i}].to[{j}].operation")
            for key in ("paths", "notPaths"):
                for pattern in operation.get(key) or []:
                    inner = pattern.strip("*")
                    if "{" in pattern or "*" in inner or pattern.startswith("**"):
                        raise LoadError(f"{name}: path {pattern!r}: only exact, prefix*, *suffix")
        for j, condition in enumerate(rule.get("when") or []):
            only(condition, {"key", "values", "notValues"}, f"spec.rules[{i}].when[{j}]")
            if not WHEN_KEY.match(condition.get("key", "")):
                raise LoadError(f"{name}: when key {condition.get('key')!r}: unsupported")


# --- evaluation ------------------------------------------------------------------------------
def string_match(pattern, value):
    if pattern == "*":
        return value != ""
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return pattern == value


def field(positive, negative, values, eq=string_match):
    values = [v for v in values if v is not None]
    hit = lambda patterns: any(eq(p, v) for p in patterns for v in values)  # noqa: E731
    return (not positive or hit(positive)) and (not negative or not hit(negative))


def ip_in(blocks, ip):
    if ip is None:
        return False
    return any(ipaddress.ip_address(ip) in ipaddress.ip_network(b, strict=False) for b in blocks)


def ip_field(positive, negative, ip):
    return (not positive or ip_in(positive, ip)) and (not negative or not ip_in(negative, ip))


def claim(auth, path):
    value = auth
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return []
        value = value[key]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def source_namespace(principal):
    match = re.search(r"/ns/([^/]+)/", principal or "")
    return match.group(1) if match else None


def condition_values(key, request):
    auth = request["auth"]
    if key.startswith("request.auth.claims"):
        return claim(auth, re.findall(r"\[([^\[\]]+)\]", key)) if auth else []
    if key == "request.auth.principal":
        return [f"{auth['iss']}/{auth['sub']}"] if auth else []
    if key == "request.auth.audiences":
        return claim(auth, ["aud"]) if auth else []
    if key == "request.auth.presenter":
        return claim(auth, ["azp"]) if auth else []
    if key.startswith("request.headers["):
        name = key[len("request.headers["):-1].lower()
        return [request["headers"][name]] if name in request["headers"] else []
    if key == "source.namespace":
        return [source_namespace(request["principal"])]
    if key == "source.principal":
        return [request["principal"]]
    if key == "destination.port":
        return [str(request["port"])]
    raise LoadError(f"condition key {key} not evaluated")


def rule_matches(rule, request):
    auth = request["auth"]
    request_principal = f"{auth['iss']}/{auth['sub']}" if auth else None

    def source_ok(source):
        return (
            field(source.get("principals"), source.get("notPrincipals"), [request["principal"]])
            and field(source.get("requestPrincipals"), source.get("notRequestPrincipals"), [request_principal])
            and field(source.get("namespaces"), source.get("notNamespaces"), [source_namespace(request["principal"])])
            and ip_field(source.get("ipBlocks"), source.get("notIpBlocks"), request["source_ip"])
            and ip_field(source.get("remoteIpBlocks"), source.get("notRemoteIpBlocks"), request["remote_ip"])
        )

    def operation_ok(operation):
        host_eq = lambda p, v: string_match(p.lower(), v.lower())  # noqa: E731
        return (
            field(operation.get("hosts"), operation.get("notHosts"), [request["host"]], host_eq)
            and field(operation.get("ports"), operation.get("notPorts"), [str(request["port"])])
            and field(operation.get("methods"), operation.get("notMethods"), [request["method"]])
            and field(operation.get("paths"), operation.get("notPaths"), [request["path"]])
        )

    def condition_ok(condition):
        key = condition["key"]
        if key in ("source.ip", "remote.ip"):
            ip = request["source_ip"] if key == "source.ip" else request["remote_ip"]
            return ip_field(condition.get("values"), condition.get("notValues"), ip)
        return field(condition.get("values"), condition.get("notValues"), condition_values(key, request))

    froms = rule.get("from") or []
    tos = rule.get("to") or []
    return (
        (not froms or any(source_ok(f.get("source") or {}) for f in froms))
        and (not tos or any(operation_ok(t.get("operation") or {}) for t in tos))
        and all(condition_ok(c) for c in rule.get("when") or [])
    )


def applies(resource, workload):
    namespace, labels = workload
    meta = resource["metadata"]
    if meta["namespace"] not in (namespace, ROOT_NAMESPACE):
        return False
    spec = resource.get("spec") or {}
    selector = spec.get("selector", spec.get("workloadSelector"))
    if selector is None:
        return True
    wanted = selector.get("matchLabels", selector.get("labels")) or {}
    return all(labels.get(k) == v for k, v in wanted.items())


def authorize(resources, workload, request):
    policies = [r for r in resources if r["kind"] == "AuthorizationPolicy" and applies(r, workload)]
    deny = [p for p in policies if (p.get("spec") or {}).get("action", "ALLOW") == "DENY"]
    allow = [p for p in policies if (p.get("spec") or {}).get("action", "ALLOW") == "ALLOW"]
    for policy in deny:
        if any(rule_matches(rule, request) for rule in (policy.get("spec") or {}).get("rules") or []):
            return False, f"DENY {policy['metadata']['namespace']}/{policy['metadata']['name']}"
    if not allow:
        return True, "no ALLOW policy"
    for policy in allow:
        if any(rule_matches(rule, request) for rule in (policy.get("spec") or {}).get("rules") or []):
            return True, f"ALLOW {policy['metadata']['namespace']}/{policy['metadata']['name']}"
    return False, "no ALLOW policy matched"


def authenticate(resources, workload, token):
    """(status, auth, forward): status None = go on; auth = verified claims or None."""
    rules = [rule for r in resources if r["kind"] == "RequestAuthentication" and applies(r, workload)
             for rule in (r.get("spec") or {}).get("jwtRules") or []]
    if token is None:
        return None, None, None
    if not rules:
        return None, None, token  # nobody validates it here; it goes on untouched
    if token == "invalid":
        return "401", None, None
    for rule in rules:
        if rule.get("issuer") != token["iss"]:
            continue
        audiences = rule.get("audiences") or []
        if audiences and not set(audiences) & set(token["aud"]):
            return "401", None, None
        headers = rule.get("fromHeaders") or [{"name": "Authorization", "prefix": "Bearer "}]
        if not any(h.get("name", "").lower() == "authorization" and h.get("prefix") == "Bearer " for h in headers):
            return None, None, token  # the token is not where this rule looks: not seen
        return None, token, token if rule.get("forwardOriginalToken") else None
    return "401", None, None  # an issuer no rule accepts


def route(resources, path):
    gateways = {(g["metadata"]["namespace"], g["metadata"]["name"]) for g in resources if g["kind"] == "Gateway"}
    for vs in resources:
        if vs["kind"] != "VirtualService":
            continue
        namespace = vs["metadata"]["namespace"]
        bound = {tuple(ref.split("/", 1)) if "/" in ref else (namespace, ref) for ref in (vs.get("spec") or {}).get("gateways") or []}
        if not bound & gateways:
            continue
        for http in (vs.get("spec") or {}).get("http") or []:
            matches = http.get("match") or [{}]
            for match in matches:
                uri = match.get("uri") or {}
                if set(match) - {"uri", "name"}:
                    raise LoadError(f"VirtualService {vs['metadata']['name']}: only uri matches are evaluated")
                ok = (
                    ("prefix" not in uri or path.startswith(uri["prefix"]))
                    and ("exact" not in uri or path == uri["exact"])
                    and ("regex" not in uri or re.fullmatch(uri["regex"], path))
                )
                if ok:
                    host = http["route"][0]["destination"]["host"]
                    return host.split(".")[0]
    return None


def evaluate(resources, issuer, method, target, subject):
    path = normalize(target.split("?", 1)[0])
    token = None
    if subject.get("token") == "invalid":
        token = "invalid"
    elif "roles" in subject:
        token = {
            "iss": issuer, "sub": f"user-{'-'.join(subject['roles']) or 'none'}", "aud": TOKEN_AUDIENCE,
            "azp": "banking-web-app", "realm_access": {"roles": list(subject["roles"])},
        }
    status, auth, forward = authenticate(resources, INGRESS, token)
    if status:
        return status, "ingress RequestAuthentication"
    headers = {"host": "localhost"}
    request = {"method": method, "path": path, "host": "localhost", "port": 8080, "headers": headers,
               "principal": None, "source_ip": CLIENT_IP, "remote_ip": CLIENT_IP, "auth": auth}
    allowed, why = authorize(resources, INGRESS, request)
    if not allowed:
        return "403", f"ingress: {why}"
    host = route(resources, path)
    if host is None:
        return "404", "no route"
    workload = (SERVICES_NAMESPACE, {"app": host})
    status, auth, _ = authenticate(resources, workload, forward)
    if status:
        return status, f"{host} RequestAuthentication"
    request = dict(request, principal=INGRESS_SA, source_ip=INGRESS_POD_IP, auth=auth)
    allowed, why = authorize(resources, workload, request)
    if not allowed:
        return "403", f"{host}: {why}"
    return "allow", f"{host}: {why}"


# --- the matrix ------------------------------------------------------------------------------
def load_matrix(path):
    with open(path, encoding="utf-8") as source:
        matrix = yaml.safe_load(source)
    subjects = matrix.get("subjects") or {}
    if not subjects:
        raise LoadError(f"{path}: no subjects")
    for name, subject in subjects.items():
        if set(subject or {}) - {"roles", "token"} or (subject or {}).get("token") not in (None, "invalid"):
            raise LoadError(f"{path}: subject {name}: only roles: [...] or token: invalid")
    for i, case in enumerate(matrix.get("cases") or []):
        request, expect = case.get("request", ""), case.get("expect") or {}
        if not re.fullmatch(r"[A-Z]+ \S+", request):
            raise LoadError(f"{path}: cases[{i}]: request {request!r} is not 'METHOD PATH'")
        if set(expect) != set(subjects):
            raise LoadError(f"{path}: cases[{i}] {request}: expect must name every subject "
                            f"(missing {sorted(set(subjects) - set(expect))}, unknown {sorted(set(expect) - set(subjects))})")
        for subject, value in expect.items():
            if str(value) not in EXPECT_VALUES:
                raise LoadError(f"{path}: cases[{i}] {request} {subject}: {value!r} not in {sorted(EXPECT_VALUES)}")
    return matrix


def run(directory, matrix_path):
    resources = load_dir(directory)
    matrix = load_matrix(matrix_path)
    issuers = [rule.get("issuer") for r in resources if r["kind"] == "RequestAuthentication"
               and r["metadata"]["namespace"] == ROOT_NAMESPACE for rule in (r.get("spec") or {}).get("jwtRules") or []]
    issuer = issuers[0] if issuers else DEFAULT_ISSUER
    results = []
    for case in matrix["cases"]:
        method, target = case["request"].split(" ", 1)
        for name, subject in matrix["subjects"].items():
            actual, why = evaluate(resources, issuer, method, target, subject or {})
            results.append((case["request"], name, str(case["expect"][name]), actual, why))
    return results


def failures_table(failures):
    lines = ["| request | subject | expected | actual | decided by |", "|---|---|---|---|---|"]
    for request, subject, expected, actual, why in failures:
        lines.append(f"| `{request}` | {subject} | {expected} | {actual} | {why} |")
    return "\n".join(lines)


def listed_failures(markdown):
    listed = set()
    with open(markdown, encoding="utf-8") as source:
        for line in source:
            match = re.match(r"^\|\s*`([^`]+)`\s*\|\s*([^|\s]+)\s*\|\s*([^|\s]+)\s*\|\s*([^|\s]+)\s*\|", line)
            if match:
                listed.add(match.groups())
    return listed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--expect-failures")
    parser.add_argument("--print-failures", action="store_true")
    parser.add_argument("--expect-load-error")
    parser.add_argument("--label", help="name of DIR in messages")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args()
    if args.expect_load_error:
        try:
            load_dir(args.paths[0])
        except LoadError as error:
            if args.expect_load_error in str(error):
                print(f"{args.paths[0]}: refused by the strict loader, as expected ({error})")
                return 0
            print(f"error: {args.paths[0]}: refused for another reason: {error}")
            return 1
        print(f"error: {args.paths[0]}: loaded, but must be refused ({args.expect_load_error})")
        return 1
    directory, matrix = args.paths
    label = args.label or directory
    try:
        results = run(directory, matrix)
    except LoadError as error:
        print(f"error: {error}")
        return 1
    failures = [r for r in results if r[2] != r[3]]
    if args.print_failures:
        print(failures_table(failures))
        return 0
    if args.expect_failures:
        got = {(r[0], r[1], r[2], r[3]) for r in failures}
        listed = listed_failures(args.expect_failures)
        if got != listed:
            for row in sorted(got - listed):
                print(f"error: {label}: fails {row} not listed in {args.expect_failures}")
            for row in sorted(listed - got):
                print(f"error: {label}: {row} is listed in {args.expect_failures} but does not fail")
            return 1
        print(f"{label}: the matrix catches exactly the {len(got)} listed failure(s) "
              f"({len(results)} checks)")
        return 0
    if failures:
        print(f"error: {label} does not satisfy {matrix}:")
        print(failures_table(failures))
        return 1
    rows = len({r[0] for r in results})
    print(f"{label}: {rows} requests x {len(results) // max(rows, 1)} subjects = {len(results)} checks hold ({matrix})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
