//! The webhook deliverer: claims due deliveries, POSTs them signed the Standard Webhooks
//! way, and records every attempt (the service schedules retries by its policy).
//!
//! Each request carries `webhook-id` (the message id, the same on every retry and replay),
//! `webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature`
//! (`v1,` + base64 of HMAC-SHA256 over `{id}.{timestamp}.{body}` keyed with the base64
//! part of the endpoint's `whsec_` secret). Any 2xx is delivered; anything else (another
//! status, a connection error, the timeout) is a failed attempt. Redirects are not followed.
//!
//! Unless [`WebhookPolicy::allow_private`] is on, the sender connects to no loopback,
//! private or link-local address ([`forbidden_address`]): an IP literal is refused before
//! any connection, and a name is refused when any address it resolves to is one (a name
//! that passed registration and resolves elsewhere later: DNS rebinding). The attempt is
//! then a failed one whose error says so.
//!
//! [`WebhookPolicy::allow_private`]: ferrobank_application::WebhookPolicy::allow_private

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use ferrobank_application::StoreError;
use ferrobank_application::notifications::{
    AttemptOutcome, ClaimedDelivery, MAX_RESPONSE_PREFIX_BYTES, NotificationService,
    forbidden_address, forbidden_host, secret_key,
};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::task::{JoinHandle, JoinSet};

/// The `User-Agent` of webhook requests.
pub const USER_AGENT: &str = concat!("ferrobank-webhooks/", env!("CARGO_PKG_VERSION"));
/// Longest error text kept in the delivery log, in characters.
const MAX_ERROR_CHARS: usize = 200;

/// How often and how much the deliverer works.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DelivererOptions {
    /// Wait between two looks for due deliveries when the last found less than a batch,
    /// in milliseconds.
    pub poll_interval_ms: u64,
    /// Most deliveries claimed (and sent concurrently) at once.
    pub max_batch: u32,
}

impl Default for DelivererOptions {
    fn default() -> Self {
        Self { poll_interval_ms: 1_000, max_batch: 16 }
    }
}

/// The Standard Webhooks signature header value of one attempt: `v1,<base64 HMAC>`;
/// `None` when `secret` is not a `whsec_` base64 secret.
pub fn sign(secret: &str, message_id: &str, timestamp_s: i64, body: &[u8]) -> Option<String> {
    let key = secret_key(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp_s.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// The resolver of webhook hosts: the system's, refusing names that resolve to a
/// [`forbidden_address`] unless private addresses are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            // Any forbidden address refuses the name: the connector would try them all.
            if !allow_private
                && let Some(address) = addresses.iter().find(|a| forbidden_address(a.ip()))
            {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "refused: {name} resolves to {}, a loopback, private or link-local \
                         address",
                        address.ip()
                    ),
                ));
            }
            Ok(addresses.into_iter())
        })
    }
}

/// Sends webhook requests: one HTTP/1.1 client (https with the system's roots, and http)
/// and a per-attempt timeout.
#[derive(Debug, Clone)]
pub struct WebhookSender {
    client: Client<HttpsConnector<HttpConnector<GuardedResolver>>, Full<Bytes>>,
    timeout: Duration,
    allow_private: bool,
}

impl WebhookSender {
    /// A sender whose attempts give up after `timeout_ms`, connecting to loopback, private
    /// or link-local addresses only when `allow_private`.
    pub fn new(timeout_ms: u64, allow_private: bool) -> Result<Self, String> {
        let timeout = Duration::from_millis(timeout_ms);
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match builder
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
        {
            Ok(builder) => builder.https_or_http().enable_http1().wrap_connector(http),
            Err(error) => {
                // No system roots (a bare container): https endpoints fail, http ones work.
                tracing::warn!(%error, "no system CA certificates: https webhooks will fail");
                let config = rustls::ClientConfig::builder_with_provider(
                    rustls::crypto::ring::default_provider().into(),
                )
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
            allow_private,
        })
    }

    /// POSTs `body` to `url` as one attempt at `timestamp_s`, signed with `secret`.
    pub async fn send(
        &self,
        url: &str,
        message_id: &str,
        secret: &str,
        timestamp_s: i64,
        body: &str,
    ) -> (Option<u16>, Option<String>, Option<String>) {
        // IP literals never reach the resolver: checked here.
        if !self.allow_private
            && let Some(why) = url::Url::parse(url).ok().as_ref().and_then(forbidden_host)
        {
            return (None, Some(bounded(&format!("refused: {why}"))), None);
        }
        let Some(signature) = sign(secret, message_id, timestamp_s, body.as_bytes()) else {
            return (None, Some("the endpoint's secret is unusable".into()), None);
        };
        let request = axum::http::Request::post(url)
            .header(axum::http::header::CONTENT_TYPE, "application/json")
            .header(axum::http::header::USER_AGENT, USER_AGENT)
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp_s.to_string())
            .header("webhook-signature", signature)
            .body(Full::new(Bytes::from(body.to_owned())));
        let request = match request {
            Ok(request) => request,
            Err(error) => return (None, Some(bounded(&error.to_string())), None),
        };
        let deadline = tokio::time::Instant::now() + self.timeout;
        let response = match tokio::time::timeout_at(deadline, self.client.request(request)).await {
            Err(_) => return (None, Some(format!("timed out after {:?}", self.timeout)), None),
            Ok(Err(error)) => return (None, Some(error_chain(&error)), None),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        // Only a small prefix of the answer is kept; the rest is never read.
        let mut body = response.into_body();
        let mut prefix = Vec::new();
        while prefix.len() < MAX_RESPONSE_PREFIX_BYTES {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        prefix.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
        prefix.truncate(MAX_RESPONSE_PREFIX_BYTES);
        let prefix = (!prefix.is_empty()).then(|| String::from_utf8_lossy(&prefix).into_owned());
        (Some(status), None, prefix)
    }
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// An error with its causes (`client error (Connect): tcp connect error: refused`), at
/// most [`MAX_ERROR_CHARS`] characters: what a delivery log keeps.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    bounded(&text)
}

/// One attempt of one claimed delivery, recorded.
async fn attempt(service: &NotificationService, sender: &WebhookSender, claimed: ClaimedDelivery) {
    let at_ms = service.now_ms();
    let started = Instant::now();
    let (status_code, error, response_prefix) = if claimed.endpoint.active() {
        sender
            .send(
                &claimed.endpoint.url,
                &claimed.delivery.message_id,
                &claimed.endpoint.secret,
                at_ms.div_euclid(1_000),
                &claimed.delivery.payload,
            )
            .await
    } else {
        (None, Some("the endpoint was deleted".to_owned()), None)
    };
    let duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let outcome = AttemptOutcome { at_ms, duration_ms, status_code, error, response_prefix };
    let delivered = outcome.delivered();
    match service.record_attempt(&claimed, outcome).await {
        Ok(Some(status)) => {
            metrics::counter!(
                "ferrobank_webhook_attempts_total",
                "outcome" => if delivered { "delivered" } else { "failed" }
            )
            .increment(1);
            tracing::debug!(
                delivery = %claimed.delivery.id, status = status.as_str(), ?status_code,
                "webhook attempt"
            );
        }
        Ok(None) => tracing::info!(
            delivery = %claimed.delivery.id,
            "webhook attempt not recorded: its claim was lost (lease expired, endpoint deleted)"
        ),
        Err(error) => tracing::warn!(
            delivery = %claimed.delivery.id, %error,
            "recording a webhook attempt failed; it is attempted again after its lease"
        ),
    }
}

/// Claims one batch of due deliveries and attempts each once, concurrently; returns how
/// many were claimed.
pub async fn deliver_due(
    service: &NotificationService,
    sender: &WebhookSender,
    max_batch: u32,
) -> Result<usize, StoreError> {
    let claimed = service.claim_due(max_batch).await?;
    Ok(attempt_all(claimed, |claimed| {
        let (service, sender) = (service.clone(), sender.clone());
        async move { attempt(&service, &sender, claimed).await }
    })
    .await)
}

/// Runs one attempt per claimed item, concurrently, until all are done; returns how many.
pub(crate) async fn attempt_all<T, Fut>(claimed: Vec<T>, attempt: impl Fn(T) -> Fut) -> usize
where
    Fut: Future<Output = ()> + Send + 'static,
{
    let count = claimed.len();
    let mut attempts = JoinSet::new();
    for claimed in claimed {
        attempts.spawn(attempt(claimed));
    }
    while attempts.join_next().await.is_some() {}
    count
}

/// Runs `round` (claim a batch of at most the given size, attempt each once, return how
/// many were claimed) back to back while batches come back full, else every
/// `poll_interval_ms`, until aborted. The loop of every deliverer; `what` names it in logs.
pub fn spawn_rounds<F, Fut>(
    what: &'static str,
    options: DelivererOptions,
    mut round: F,
) -> JoinHandle<()>
where
    F: FnMut(u32) -> Fut + Send + 'static,
    Fut: Future<Output = Result<usize, StoreError>> + Send + 'static,
{
    let max_batch = options.max_batch.max(1);
    let poll = Duration::from_millis(options.poll_interval_ms.max(1));
    tokio::spawn(async move {
        loop {
            match round(max_batch).await {
                Ok(count) if count >= max_batch as usize => continue,
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "claiming due {what} failed"),
            }
            tokio::time::sleep(poll).await;
        }
    })
}

/// Starts the deliverer: batches of due deliveries, back to back while there are full
/// batches, else every `poll_interval_ms`. Runs until aborted.
pub fn spawn_deliverer(
    service: NotificationService,
    options: DelivererOptions,
) -> Result<JoinHandle<()>, String> {
    let policy = service.policy();
    let sender = WebhookSender::new(policy.timeout_ms, policy.allow_private)?;
    Ok(spawn_rounds("webhook deliveries", options, move |max_batch| {
        let (service, sender) = (service.clone(), sender.clone());
        async move { deliver_due(&service, &sender, max_batch).await }
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_test_vector() {
        let signature = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature.unwrap(), "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert_eq!(sign("not-a-secret", "msg", 1, b"{}"), None);
    }

    #[tokio::test]
    async fn private_destinations_are_refused_before_connecting_unless_allowed() {
        let guarded = WebhookSender::new(2_000, false).unwrap();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        for (url, why) in [
            ("http://127.0.0.1:9/hook", "refused: 127.0.0.1 is a loopback"),
            ("http://[::1]:9/hook", "refused: ::1 is a loopback"),
            ("http://169.254.169.254/latest", "refused: 169.254.169.254 is a loopback"),
            ("http://localhost:9/hook", "refused: localhost is a loopback name"),
        ] {
            let (status, error, _) = guarded.send(url, "msg_1", secret, 1, "{}").await;
            assert_eq!(status, None);
            assert!(error.as_deref().is_some_and(|e| e.starts_with(why)), "{url}: {error:?}");
        }
        // A name is judged by what it resolves to (this one resolves to loopback).
        let mut resolver = GuardedResolver { allow_private: false };
        let name: Name = "localhost".parse().unwrap();
        let refused = tower::Service::call(&mut resolver, name.clone()).await.unwrap_err();
        assert!(refused.to_string().contains("resolves to"), "{refused}");
        let mut open = GuardedResolver { allow_private: true };
        assert!(tower::Service::call(&mut open, name).await.unwrap().next().is_some());
        // Through the sender: another name of this machine's loopback, if /etc/hosts has one.
        let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let alias = hosts.lines().find_map(|line| {
            let mut fields = line.split_whitespace();
            let ip = fields.next()?;
            (ip.starts_with("127.") && !line.trim_start().starts_with('#'))
                .then(|| fields.find(|name| !name.contains("localhost")))?
        });
        if let Some(alias) = alias {
            let url = format!("http://{alias}:9/hook");
            let (status, error, _) = guarded.send(&url, "msg_1", secret, 1, "{}").await;
            assert_eq!(status, None);
            assert!(error.as_deref().is_some_and(|e| e.contains("resolves to 127.")), "{error:?}");
        }
    }
}
