//! The email deliverer: claims due emails of payment events and sends them through the
//! configured SMTP server (lettre), recording every attempt; the service schedules retries
//! by the same policy as webhooks.
//!
//! Each message is plain text, `From` the configured address, `To` the owner's address as
//! recorded with the event, with a `Message-ID` fixed per delivery (`<id@ferrobank>`), so a
//! copy sent again after a lost answer is recognisable as the same message. A 5xx answer
//! or an unusable address fails the delivery at once; anything else (connection refused,
//! timeout, 4xx) is retried after its backoff.

use std::time::Duration;

use ferrobank_application::StoreError;
use ferrobank_application::notifications::{ClaimedEmail, EmailOutcome, NotificationService};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use tokio::task::JoinHandle;

use crate::webhooks::{DelivererOptions, attempt_all, error_chain, spawn_rounds};

/// Longest error text kept on the delivery row, in characters.
const MAX_ERROR_CHARS: usize = 200;

/// Sends emails through one SMTP server, from one address, one connection per message.
#[derive(Debug, Clone)]
pub struct EmailSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl EmailSender {
    /// A sender to `smtp_url` (`smtp://host:port`, `smtps://user:pass@host:465`,
    /// `smtp://host:587?tls=required` for STARTTLS) from `from`, each message giving up
    /// after `timeout_ms`.
    pub fn new(smtp_url: &str, from: &str, timeout_ms: u64) -> Result<Self, String> {
        let from: Mailbox = from.parse().map_err(|e| format!("email_from {from:?}: {e}"))?;
        let timeout = Duration::from_millis(timeout_ms);
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(smtp_url)
            .map_err(|e| format!("smtp_url: {e}"))?
            .timeout(Some(timeout))
            .build();
        Ok(Self { transport, from, timeout })
    }

    /// Sends one email: `Sent` once the server accepted it.
    pub async fn send(
        &self,
        email: &ferrobank_application::notifications::EmailDelivery,
    ) -> EmailOutcome {
        let permanent =
            |error: String| EmailOutcome::Failed { error: bounded(&error), permanent: true };
        let Some(recipient) = &email.recipient else {
            return permanent("no recipient".into());
        };
        let to: Mailbox = match recipient.parse() {
            Ok(to) => to,
            Err(error) => return permanent(format!("unusable address {recipient:?}: {error}")),
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(email.subject.clone())
            .message_id(Some(format!("<{}@ferrobank>", email.id.simple())))
            .header(ContentType::TEXT_PLAIN)
            .body(email.body.clone());
        let message = match message {
            Ok(message) => message,
            Err(error) => return permanent(error.to_string()),
        };
        // lettre's timeout is per SMTP command: the whole exchange is bounded here.
        let sent = tokio::time::timeout(self.timeout * 2, self.transport.send(message)).await;
        match sent {
            Ok(Ok(_)) => EmailOutcome::Sent,
            Ok(Err(error)) => {
                EmailOutcome::Failed { error: error_chain(&error), permanent: error.is_permanent() }
            }
            Err(_) => EmailOutcome::Failed {
                error: format!("timed out after {:?}", self.timeout * 2),
                permanent: false,
            },
        }
    }
}

fn bounded(text: &str) -> String {
    text.chars().take(MAX_ERROR_CHARS).collect()
}

/// One attempt of one claimed email, recorded.
async fn attempt(service: &NotificationService, sender: &EmailSender, claimed: ClaimedEmail) {
    let outcome = sender.send(&claimed.email).await;
    let label = match &outcome {
        EmailOutcome::Sent => "delivered",
        EmailOutcome::Failed { .. } => "failed",
    };
    match service.record_email_attempt(&claimed, outcome).await {
        Ok(Some(status)) => {
            metrics::counter!("ferrobank_email_attempts_total", "outcome" => label).increment(1);
            tracing::debug!(email = %claimed.email.id, status = status.as_str(), "email attempt");
        }
        Ok(None) => tracing::info!(
            email = %claimed.email.id,
            "email attempt not recorded: its claim was lost (lease expired)"
        ),
        Err(error) => tracing::warn!(
            email = %claimed.email.id, %error,
            "recording an email attempt failed; it is attempted again after its lease"
        ),
    }
}

/// Claims one batch of due emails and attempts each once, concurrently; returns how many
/// were claimed.
pub async fn deliver_due_emails(
    service: &NotificationService,
    sender: &EmailSender,
    max_batch: u32,
) -> Result<usize, StoreError> {
    let claimed = service.claim_due_emails(max_batch).await?;
    Ok(attempt_all(claimed, |claimed| {
        let (service, sender) = (service.clone(), sender.clone());
        async move { attempt(&service, &sender, claimed).await }
    })
    .await)
}

/// Starts the email deliverer (the webhook deliverer's loop). Runs until aborted.
pub fn spawn_email_deliverer(
    service: NotificationService,
    sender: EmailSender,
    options: DelivererOptions,
) -> JoinHandle<()> {
    spawn_rounds("emails", options, move |max_batch| {
        let (service, sender) = (service.clone(), sender.clone());
        async move { deliver_due_emails(&service, &sender, max_batch).await }
    })
}
