#!/usr/bin/env python3
"""TEST ONLY: a standard OpenID Connect relying party (pyoidc, PyPI `oic`) against an issuer.

crates/ferrobank/tests/oidc_rp_interop.rs runs it against `ferrobank up`; it works against
any provider with a password login form shaped like ferrobank's (Keycloak's paths).

    python3 rp.py --issuer URL --client-id ID --username USER --redirect-uri URI
    # secrets from the environment (never on a command line other users can read):
    #   OIC_RP_CLIENT_SECRET, OIC_RP_PASSWORD  (or --client-secret / --password)

What pyoidc does, as an RP would: discovery and JWKS, the authorization request (PKCE
S256, state, nonce), parsing the authorization response (state, RFC 9207 `iss`), the code
exchange with client_secret_basic, ID token verification (signature against the JWKS,
iss, aud, azp, exp, iat, nonce, at_hash), userinfo, refresh, and the RP-initiated logout
request. What a browser does is done with a `requests.Session`: it follows the provider's
redirects, fills the login form and stops at the redirect back to the RP (nothing listens
there).

Prints one JSON line: {"ok": true|false, "failed": {check: why}, "passed": [checks],
"refusals": {attack: how pyoidc refused it}, ...}. Exits 0 when every check passed, else 1
with each failure repeated on stderr. A failed check that later steps build on stops the
run ("stopped_at"); the others are reported and the run goes on.
"""

import argparse
import json
import os
import secrets
import sys
import traceback
from html.parser import HTMLParser
from urllib.parse import parse_qs, urljoin, urlparse

import requests
from oic.oauth2.grant import Token
from oic.oauth2.message import ErrorResponse, Message
from oic.oic import Client
from oic.oic.message import (
    AccessTokenResponse,
    AuthorizationErrorResponse,
    AuthorizationRequest,
    AuthorizationResponse,
    EndSessionRequest,
    EndSessionResponse,
    RegistrationResponse,
    verify_id_token,
)
from oic.utils.authn.client import CLIENT_AUTHN_METHOD
from oic.utils.settings import OicClientSettings

# Longest one HTTP request may take: argon2 password checks on a loaded CI machine.
HTTP_TIMEOUT_S = 30
# Most provider-internal redirects the "browser" follows before giving up.
MAX_REDIRECTS = 10
LOGIN_COOKIE = "FERROBANK_LOGIN"
SESSION_COOKIE = "FERROBANK_SESSION"


class InteropFailure(Exception):
    """A check failed: `name` says which, the message what was seen."""

    def __init__(self, name, message):
        super().__init__(message)
        self.name = name


class Checks:
    """Records the checks that passed and the ones that failed."""

    def __init__(self):
        self.passed = []
        # Failed checks that later steps do not depend on: name -> message.
        self.failed = {}
        # Why pyoidc refused each attack: shows it failed for the right reason.
        self.refusals = {}

    def that(self, name, condition, message):
        """A check later steps build on: a failure ends the run."""
        if not condition:
            raise InteropFailure(name, message)
        self.passed.append(name)

    def expect(self, name, condition, message):
        """A check nothing later depends on: a failure is reported, the run goes on."""
        if condition:
            self.passed.append(name)
        else:
            self.failed[name] = message

    def passes(self, name, action):
        """`action()` must not raise (pyoidc verifies something); returns its result."""
        try:
            result = action()
        except Exception as error:  # noqa: BLE001 - pyoidc raises many kinds
            raise InteropFailure(name, f"{type(error).__name__}: {error}") from error
        self.passed.append(name)
        return result

    def raises(self, name, what, action):
        """`action()` must raise (it is an attack pyoidc has to refuse)."""
        try:
            action()
        except Exception as error:  # noqa: BLE001 - any refusal by pyoidc will do
            self.passed.append(name)
            self.refusals[name] = f"{type(error).__name__}: {error}"[:200]
            return self.refusals[name]
        raise InteropFailure(name, f"pyoidc accepted {what}")


class FormParser(HTMLParser):
    """The first POST form of a page: its action and its named inputs' values."""

    def __init__(self):
        super().__init__()
        self.action = None
        self.fields = {}
        self._in_form = False
        self._done = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if self._done:
            return
        if tag == "form" and (attrs.get("method") or "get").lower() == "post":
            self.action = attrs.get("action")
            self._in_form = True
        elif tag == "input" and self._in_form and attrs.get("name"):
            self.fields[attrs["name"]] = attrs.get("value") or ""

    def handle_endtag(self, tag):
        if tag == "form" and self._in_form:
            self._in_form = False
            self._done = True


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--issuer", default=os.environ.get("OIC_RP_ISSUER"))
    parser.add_argument("--client-id", default=os.environ.get("OIC_RP_CLIENT_ID"))
    parser.add_argument("--client-secret", default=os.environ.get("OIC_RP_CLIENT_SECRET"))
    parser.add_argument("--username", default=os.environ.get("OIC_RP_USERNAME"))
    parser.add_argument("--password", default=os.environ.get("OIC_RP_PASSWORD"))
    parser.add_argument("--redirect-uri", default=os.environ.get("OIC_RP_REDIRECT_URI"))
    parser.add_argument(
        "--post-logout-redirect-uri",
        default=os.environ.get("OIC_RP_POST_LOGOUT_REDIRECT_URI"),
        help="default: /logged-out on the redirect URI's origin",
    )
    args = parser.parse_args()
    missing = [
        name
        for name in ("issuer", "client_id", "client_secret", "username", "password", "redirect_uri")
        if not getattr(args, name)
    ]
    if missing:
        parser.error("missing: " + ", ".join("--" + m.replace("_", "-") for m in missing))
    if not args.post_logout_redirect_uri:
        origin = urlparse(args.redirect_uri)
        args.post_logout_redirect_uri = f"{origin.scheme}://{origin.netloc}/logged-out"
    return args


def shown(response):
    """A pyoidc message (or an unparsed HTTP response) for a failure message."""
    if isinstance(response, Message):
        return repr(response.to_dict())
    if isinstance(response, requests.Response):
        return f"HTTP {response.status_code} {response.text[:300]!r}"
    return repr(response)


def query_of(location):
    return {k: v[0] for k, v in parse_qs(urlparse(location).query).items()}


class RelyingParty:
    def __init__(self, args, checks):
        self.args = args
        self.checks = checks
        self.client = Client(
            client_authn_method=CLIENT_AUTHN_METHOD,
            settings=OicClientSettings(timeout=HTTP_TIMEOUT_S, verify_ssl=True),
        )
        # The browser: cookies of the provider (login binding, SSO session) live here.
        self.browser = requests.Session()

    # --- what pyoidc does -----------------------------------------------------------------

    def discover(self):
        c, args = self.checks, self.args
        config = self.client.provider_config(args.issuer)
        c.that("discovery_issuer", config["issuer"] == args.issuer,
               f"discovery issuer {config['issuer']!r} != {args.issuer!r}")
        methods = config.get("code_challenge_methods_supported", [])
        c.that("discovery_pkce_s256_only", "S256" in methods and "plain" not in methods,
               f"code_challenge_methods_supported = {methods!r}")
        c.that("discovery_rfc9207",
               config.get("authorization_response_iss_parameter_supported") is True,
               "authorization_response_iss_parameter_supported is not true")
        c.that("discovery_end_session", bool(config.get("end_session_endpoint")),
               "no end_session_endpoint")
        keys = self.client.keyjar.get_issuer_keys(args.issuer)
        # The keys are fetched lazily: ask for the verification keys to load the JWKS.
        sig_keys = self.client.keyjar.get_verify_key(owner=args.issuer)
        c.that("jwks_loaded", bool(keys) and bool(sig_keys),
               f"no verification keys from {config['jwks_uri']}")
        # Static registration: what an operator copies from the realm into the RP.
        self.client.store_registration_info(RegistrationResponse(
            client_id=args.client_id,
            client_secret=args.client_secret,
            redirect_uris=[args.redirect_uri],
            post_logout_redirect_uris=[args.post_logout_redirect_uri],
            token_endpoint_auth_method="client_secret_basic",
            id_token_signed_response_alg="RS256",
            response_types=["code"],
        ))
        self.client.redirect_uris = [args.redirect_uri]
        self.client.post_logout_redirect_uris = [args.post_logout_redirect_uri]
        return config

    def authorization_url(self, pkce_args, extra=None):
        """A code flow request built by pyoidc; returns (url, state, nonce, request)."""
        state = secrets.token_urlsafe(24)
        nonce = secrets.token_urlsafe(24)
        request_args = {
            "response_type": "code",
            "scope": ["openid", "profile", "email"],
            "redirect_uri": self.args.redirect_uri,
            "state": state,
            "nonce": nonce,
            **pkce_args,
            **(extra or {}),
        }
        # request_info (not construct_*) records state -> nonce, which pyoidc then checks
        # against the ID token of the code exchange.
        url, _, _, request = self.client.request_info(
            AuthorizationRequest, method="GET", request_args=request_args)
        self.client.authz_req[state] = request
        return url, state, nonce, request

    def parse_redirect(self, location, state):
        """The authorization response at the redirect URI, parsed and verified by pyoidc."""
        return self.client.parse_response(
            AuthorizationResponse, info=location, sformat="urlencoded", state=state)

    def exchange(self, state, verifier, name, authn_method):
        c = self.checks
        # pyoidc verifies the ID token while parsing the response: signature against the
        # JWKS, iss, aud, azp, exp, iat; then the nonce it recorded for this state.
        response = c.passes(f"{name}_token_exchange", lambda: self.client.do_access_token_request(
            state=state,
            request_args={"code_verifier": verifier, "redirect_uri": self.args.redirect_uri},
            authn_method=authn_method,
        ))
        c.that(f"{name}_token_response", isinstance(response, AccessTokenResponse),
               f"the token endpoint answered {shown(response)}")
        for field in ("access_token", "id_token", "refresh_token", "session_state"):
            c.that(f"{name}_has_{field}", field in response, f"no {field} in the token response")
        c.that(f"{name}_token_type", response["token_type"].lower() == "bearer",
               f"token_type {response['token_type']!r}")
        return response

    def verify_id_token_fully(self, response, request, name):
        """What pyoidc checks beyond its automatic verification: the nonce against the
        request, and at_hash (pyoidc checks it automatically only for the implicit flow)."""
        c, args = self.checks, self.args
        id_token = response["id_token"]  # already verified by parse_response
        # iss, aud, exp and the nonce against the authorization request.
        c.passes(f"{name}_id_token_verified",
                 lambda: self.client.verify_id_token(id_token, request))
        raw = response["id_token_jwt"]
        # OIDC Core §3.1.3.6 at_hash, checked by pyoidc's own verify_id_token.
        c.that(f"{name}_has_at_hash", "at_hash" in id_token, "no at_hash in the ID token")
        c.passes(f"{name}_at_hash", lambda: verify_id_token(
            Message(id_token=raw, access_token=response["access_token"]),
            check_hash=True, keyjar=self.client.keyjar, iss=args.issuer,
            client_id=args.client_id))
        c.raises(f"{name}_at_hash_mismatch_refused", "an ID token with another access token",
                 lambda: verify_id_token(
                     Message(id_token=raw, access_token=response["access_token"] + "x"),
                     check_hash=True, keyjar=self.client.keyjar, iss=args.issuer,
                     client_id=args.client_id))
        c.that(f"{name}_alg_rs256", id_token.jws_header.get("alg") == "RS256",
               f"ID token alg {id_token.jws_header.get('alg')!r}")
        c.that(f"{name}_typ_id", id_token.get("typ") == "ID", f"typ {id_token.get('typ')!r}")
        c.that(f"{name}_aud", id_token["aud"] == [args.client_id], f"aud {id_token['aud']!r}")
        c.that(f"{name}_sid_auth_time", "sid" in id_token and "auth_time" in id_token,
               "ID token lacks sid or auth_time")
        c.that(f"{name}_session_state", response["session_state"] == id_token["sid"],
               "session_state differs from the ID token's sid")
        # The signature is really checked: one changed byte and pyoidc refuses the token.
        head, payload, signature = raw.split(".")
        flipped = ("A" if signature[10] != "A" else "B")
        forged = ".".join([head, payload, signature[:10] + flipped + signature[11:]])
        c.raises(f"{name}_forged_signature_refused", "an ID token with a changed signature",
                 lambda: verify_id_token(Message(id_token=forged), keyjar=self.client.keyjar,
                                         iss=args.issuer, client_id=args.client_id))
        return id_token

    def refresh(self, state, token=None):
        kwargs = {"token": token} if token is not None else {}
        return self.client.do_access_token_refresh(
            state=state, authn_method="client_secret_basic", **kwargs)

    # --- what the browser does ------------------------------------------------------------

    def navigate(self, url):
        """GET `url` as a browser would, following the provider's own redirects; stops at
        the first redirect that leaves the provider (to the RP). Returns the last response
        and, if it stopped at such a redirect, its Location."""
        issuer_origin = urlparse(self.args.issuer).netloc
        for _ in range(MAX_REDIRECTS):
            response = self.browser.get(url, allow_redirects=False, timeout=HTTP_TIMEOUT_S)
            if response.status_code not in (301, 302, 303, 307, 308):
                return response, None
            location = urljoin(url, response.headers["location"])
            if urlparse(location).netloc != issuer_origin:
                return response, location
            url = location
        raise InteropFailure("browser_redirects",
                             f"more than {MAX_REDIRECTS} redirects, the last to {url}")

    def login(self, url, name):
        """Opens the authorization URL, fills the login form, returns the RP redirect."""
        c, args = self.checks, self.args
        page, location = self.navigate(url)
        c.that(f"{name}_page", location is None and page.status_code == 200
               and page.headers.get("content-type", "").startswith("text/html"),
               f"authorization endpoint answered {page.status_code} "
               f"{page.headers.get('location', '')} {page.text[:300]!r}")
        form = FormParser()
        form.feed(page.text)
        c.that(f"{name}_form", form.action and "csrf" in form.fields
               and "username" in form.fields and "password" in form.fields,
               f"no login form with csrf/username/password on {page.url}: {page.text[:500]!r}")
        c.that(f"{name}_cookie", LOGIN_COOKIE in self.browser.cookies,
               f"the login page set no {LOGIN_COOKIE} cookie")
        data = dict(form.fields, username=args.username, password=args.password)
        action = urljoin(page.url, form.action)
        response = self.browser.post(action, data=data, allow_redirects=False,
                                     timeout=HTTP_TIMEOUT_S)
        location = response.headers.get("location", "")
        c.that(f"{name}_redirect",
               response.status_code in (302, 303) and location.startswith(args.redirect_uri),
               f"posting the login form answered {response.status_code} {location!r} "
               f"{response.text[:300]!r}")
        c.that(f"{name}_sso_cookie", SESSION_COOKIE in self.browser.cookies,
               f"no {SESSION_COOKIE} cookie after the login")
        return location

    # --- the scenario ---------------------------------------------------------------------

    def code_flow(self, name, expect_form, authn_method):
        """Authorization request, login (or SSO), response, code exchange authenticated
        with `authn_method`; returns (state, token response, verified ID token)."""
        c, args = self.checks, self.args
        pkce_args, verifier = self.client.add_code_challenge()
        c.that(f"{name}_pkce_s256", pkce_args["code_challenge_method"] == "S256",
               f"pyoidc built PKCE {pkce_args!r}")
        url, state, _, request = self.authorization_url(pkce_args)
        if expect_form:
            location = self.login(url, name)
        else:
            # A live SSO session: straight back to the RP, no form (OIDC Core §3.1.2.3).
            response, location = self.navigate(url)
            c.that(f"{name}_without_form", location is not None
                   and location.startswith(args.redirect_uri),
                   f"with an SSO session the provider answered {response.status_code} "
                   f"{response.text[:300]!r}")
        params = query_of(location)
        c.that(f"{name}_rfc9207_iss_present", params.get("iss") == args.issuer,
               f"authorization response iss {params.get('iss')!r}, expected {args.issuer!r}")
        parsed = self.parse_redirect(location, state)
        c.that(f"{name}_authorization_response", isinstance(parsed, AuthorizationResponse)
               and "code" in parsed, f"pyoidc parsed {shown(parsed)}")
        c.that(f"{name}_state", parsed["state"] == state, "state differs from the request's")
        tokens = self.exchange(state, verifier, name, authn_method)
        id_token = self.verify_id_token_fully(tokens, request, name)
        return state, tokens, id_token

    def run(self):
        c, args = self.checks, self.args
        result = {}
        self.discover()

        # 1. Login, code, tokens.
        state, tokens, id_token = self.code_flow(
            "login", expect_form=True, authn_method="client_secret_basic")
        result["sub"] = id_token["sub"]

        # RFC 9207: a response claiming another issuer is refused by pyoidc (mix-up).
        _, mixup_state, _, _ = self.authorization_url(self.client.add_code_challenge()[0])
        mixup = f"{args.redirect_uri}?code=x&state={mixup_state}&iss=https%3A%2F%2Fevil.example"
        c.raises("rfc9207_wrong_iss_refused", "an authorization response from another issuer",
                 lambda: self.parse_redirect(mixup, mixup_state))

        # 2. Userinfo, as pyoidc sends it (GET, bearer header); pyoidc checks `sub`
        # against the ID token's.
        info = self.client.do_user_info_request(method="GET", state=state)
        c.that("userinfo", not isinstance(info, ErrorResponse) and "error" not in info,
               f"userinfo answered {shown(info)}")
        c.that("userinfo_sub", info["sub"] == id_token["sub"], "userinfo sub differs")
        c.that("userinfo_username", info.get("preferred_username") == args.username,
               f"preferred_username {info.get('preferred_username')!r}")
        # pyoidc's default userinfo request: POST with the token in the form body (RFC 6750
        # §2.2, which OIDC Core §5.3.1 allows and Keycloak accepts).
        info = self.client.do_user_info_request(state=state)
        c.expect("userinfo_post_form_body",
                 not isinstance(info, ErrorResponse) and info.get("sub") == id_token["sub"],
                 "pyoidc's default userinfo request (POST, access_token in the form body, "
                 f"RFC 6750 §2.2; Keycloak accepts it) was answered {shown(info)}")

        # 3. Refresh: rotation, and the ID token of a refresh (OIDC Core §12.2).
        old_refresh = tokens["refresh_token"]
        old_token = Token(tokens)
        refreshed = self.refresh(state)
        c.that("refresh", isinstance(refreshed, AccessTokenResponse)
               and "access_token" in refreshed,
               f"refresh answered {shown(refreshed)}")
        c.that("refresh_rotated", refreshed.get("refresh_token") not in (None, old_refresh),
               "the refresh response carries no new refresh token")
        if "id_token" in refreshed:
            new_id = refreshed["id_token"]  # verified by pyoidc
            same = all(new_id.get(k) == id_token.get(k)
                       for k in ("iss", "sub", "aud", "azp", "auth_time", "sid"))
            c.that("refresh_id_token_same_session", same,
                   f"refreshed ID token {shown(new_id)} vs {shown(id_token)}")

        # 4. The rotated-out refresh token is refused, and (RFC 9700 §4.14.2) its reuse
        # revokes the family: the new one goes too.
        reused = self.refresh(state, token=old_token)
        c.that("refresh_reuse_invalid_grant", isinstance(reused, ErrorResponse)
               and reused.get("error") == "invalid_grant",
               f"reusing the old refresh token answered {shown(reused)}")
        after_reuse = self.refresh(state, token=Token(refreshed))
        c.that("refresh_reuse_revokes_family", isinstance(after_reuse, ErrorResponse)
               and after_reuse.get("error") == "invalid_grant",
               f"the new refresh token still works after the old one was replayed: "
               f"{shown(after_reuse)}")

        # 5. A second login in the same browser: SSO, no form; the client authenticates
        # with the realm's other method this time.
        state2, tokens2, id_token2 = self.code_flow(
            "sso", expect_form=False, authn_method="client_secret_post")
        c.that("sso_same_session", id_token2["sid"] == id_token["sid"]
               and id_token2["sub"] == id_token["sub"], "SSO login started another session")

        # 6. RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0 §2-3), the request
        # built by pyoidc, sent by the browser.
        logout_state = secrets.token_urlsafe(16)
        url, _, _, _ = self.client.request_info(
            EndSessionRequest, method="GET", state=state2,
            request_args={"post_logout_redirect_uri": args.post_logout_redirect_uri,
                          "state": logout_state})
        c.that("logout_request_hint",
               query_of(url).get("id_token_hint") == tokens2["id_token_jwt"],
               f"pyoidc's end-session request carries no id_token_hint: {url}")
        response, location = self.navigate(url)
        c.that("logout_redirect", location is not None
               and location.startswith(args.post_logout_redirect_uri),
               f"logout answered {response.status_code} {response.headers.get('location')!r} "
               f"{response.text[:300]!r}")
        ended = self.client.parse_response(EndSessionResponse, info=location,
                                           sformat="urlencoded")
        c.that("logout_state", ended.get("state") == logout_state,
               f"logout redirect state {ended.get('state')!r}, expected {logout_state!r}")

        # 7. After logout: the session's tokens are dead, the next login asks again.
        after = self.refresh(state2)
        c.that("logout_refresh_invalid_grant", isinstance(after, ErrorResponse)
               and after.get("error") == "invalid_grant",
               f"refresh after logout answered {shown(after)}")
        info = self.client.do_user_info_request(method="GET", token=tokens2["access_token"])
        c.that("logout_access_token_refused", isinstance(info, ErrorResponse)
               and info.get("error") == "invalid_token",
               f"userinfo after logout answered {shown(info)}")
        c.expect("logout_sso_cookie_cleared", SESSION_COOKIE not in self.browser.cookies,
                 f"the {SESSION_COOKIE} cookie survived the logout")
        url, _, _, _ = self.authorization_url(self.client.add_code_challenge()[0])
        page, location = self.navigate(url)
        c.that("logout_login_again", location is None and page.status_code == 200
               and 'name="password"' in page.text,
               f"after logout the authorization endpoint answered {page.status_code} {location!r}")
        url, none_state, _, _ = self.authorization_url(self.client.add_code_challenge()[0],
                                                       {"prompt": "none"})
        _, location = self.navigate(url)
        error = self.parse_redirect(location, none_state) if location else None
        c.expect("logout_prompt_none_login_required",
                 isinstance(error, AuthorizationErrorResponse)
                 and error["error"] == "login_required",
                 f"prompt=none after logout answered {location!r}")

        # 8. Refused authorization requests come back to the RP as errors (RFC 6749
        # §4.1.2.1) with state and iss: PKCE plain, and no PKCE at all.
        verifier = secrets.token_urlsafe(48)
        cases = {
            "pkce_plain": {"code_challenge": verifier, "code_challenge_method": "plain"},
            "pkce_missing": {},
        }
        for name, pkce_args in cases.items():
            url, err_state, _, _ = self.authorization_url(pkce_args)
            response, location = self.navigate(url)
            c.that(f"{name}_error_redirect", location is not None
                   and location.startswith(args.redirect_uri),
                   f"{name}: the provider answered {response.status_code} "
                   f"{response.headers.get('location')!r} {response.text[:300]!r}")
            error = self.parse_redirect(location, err_state)
            c.that(f"{name}_invalid_request", isinstance(error, AuthorizationErrorResponse)
                   and error["error"] == "invalid_request",
                   f"{name}: pyoidc parsed {shown(error)}")
            params = query_of(location)
            c.that(f"{name}_state_iss", params.get("state") == err_state
                   and params.get("iss") == args.issuer,
                   f"{name}: error response without state/iss: {location}")
            c.that(f"{name}_no_code", "code" not in params, f"{name}: a code was issued")

        return result


def main():
    args = parse_args()
    checks = Checks()
    result = {}
    try:
        result = RelyingParty(args, checks).run()
    except InteropFailure as failure:
        checks.failed[failure.name] = str(failure)
        result["stopped_at"] = failure.name
    except Exception as error:  # noqa: BLE001 - pyoidc raises many kinds; report any
        traceback.print_exc()
        after = checks.passed[-1] if checks.passed else "the start"
        checks.failed["exception"] = f"{type(error).__name__} after {after}: {error}"
        result["stopped_at"] = "exception"
    ok = not checks.failed
    print(json.dumps({"ok": ok, "issuer": args.issuer, "failed": checks.failed,
                      "passed": checks.passed, "refusals": checks.refusals, **result}))
    for name, message in checks.failed.items():
        print(f"oic-rp interop FAILED {name}: {message}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
