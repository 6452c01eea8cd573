//! Approval notifications: each new approval is posted to its group's webhook, when the group
//! has one (`[approvals.groups.<name>] webhook`, `webhook_secret_file`).
//!
//! A delivery is JSON (`type: "approval.requested"` and the approval as the API shows it), with
//! three headers: `ZT-Webhook-Id` (the delivery's id, the same on every attempt),
//! `ZT-Webhook-Timestamp` (Unix seconds of this attempt) and `ZT-Webhook-Signature`
//! (`v1=<hex HMAC-SHA256 of "<id>.<timestamp>.<body>" under the group's secret>`). A receiver
//! checks the signature in constant time, refuses a timestamp more than 5 minutes from its
//! clock, and remembers the ids it took within that window to refuse a replay.
//!
//! Notifications never hold up or change a decision: they are queued without waiting (a full
//! queue drops the notification, logged and counted), sent by a task of their own, and
//! retried with backoff (1, 2, 4 and 8 s: five attempts) when the receiver fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac as _};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::approvals::ApprovalSettings;

/// The headers of a delivery.
pub const ID_HEADER: &str = "zt-webhook-id";
pub const TIMESTAMP_HEADER: &str = "zt-webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "zt-webhook-signature";

/// The shortest secret accepted, in bytes.
const MIN_SECRET: usize = 32;
/// Notifications waiting to be sent, at most.
const QUEUE: usize = 10_000;
/// Deliveries in flight at once, at most.
const IN_FLIGHT: usize = 16;
/// Attempts per delivery.
const ATTEMPTS: u32 = 5;
/// How long one attempt may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A group's webhook: where, and the secret that signs.
#[derive(Clone)]
struct Hook {
    url: String,
    secret: Arc<[u8]>,
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never printed.
        f.debug_struct("Hook")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Delivery {
    hook: Hook,
    id: String,
    body: String,
}

/// The webhooks of the approver groups, and the queue to their sender.
#[derive(Debug, Default)]
pub struct Webhooks {
    hooks: std::collections::BTreeMap<String, Hook>,
    queue: Option<mpsc::Sender<Delivery>>,
}

/// `v1=<hex HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], id: &str, timestamp: i64, body: &str) -> String {
    // HMAC takes a key of any length: this cannot fail (an empty signature verifies nowhere).
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Webhooks {
    /// Reads each group's secret and, when any group has a webhook, starts the sender.
    pub fn start(settings: &ApprovalSettings) -> Result<Self, String> {
        let mut hooks = std::collections::BTreeMap::new();
        for (name, group) in &settings.groups {
            let (Some(url), Some(path)) = (&group.webhook, &group.webhook_secret_file) else {
                continue;
            };
            hooks.insert(
                name.clone(),
                Hook {
                    url: url.clone(),
                    secret: read_secret(path).map_err(|e| format!("group `{name}`: {e}"))?,
                },
            );
        }
        if hooks.is_empty() {
            return Ok(Self::default());
        }
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {e}"))?;
        let (queue, deliveries) = mpsc::channel(QUEUE);
        tokio::spawn(send(client, deliveries));
        Ok(Self {
            hooks,
            queue: Some(queue),
        })
    }

    /// Whether `group` has a webhook (a notification is worth making).
    pub fn has(&self, group: &str) -> bool {
        self.queue.is_some() && self.hooks.contains_key(group)
    }

    /// Queues the notification of a new approval to its group's webhook, if it has one; never
    /// waits.
    pub fn approval_requested(&self, group: &str, approval: Value) {
        let (Some(hook), Some(queue)) = (self.hooks.get(group), &self.queue) else {
            return;
        };
        let id = uuid::Uuid::now_v7().to_string();
        let body = json!({"type": "approval.requested", "approval": approval}).to_string();
        let delivery = Delivery {
            hook: hook.clone(),
            id,
            body,
        };
        if let Err(e) = queue.try_send(delivery) {
            tracing::warn!(group, error = %e, "an approval notification was dropped: the webhook queue is full or closed");
            metrics::counter!("ztinfra_webhook_deliveries_total", "outcome" => "dropped")
                .increment(1);
        }
    }
}

fn read_secret(path: &PathBuf) -> Result<Arc<[u8]>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the webhook secret `{}`: {e}", path.display()))?;
    let secret = text.trim();
    if secret.len() < MIN_SECRET {
        return Err(format!(
            "the webhook secret `{}` is shorter than {MIN_SECRET} bytes",
            path.display()
        ));
    }
    Ok(Arc::from(secret.as_bytes()))
}

/// The sender: each delivery in a task of its own (at most [`IN_FLIGHT`] at once), so that a
/// slow receiver holds up only its own notifications.
async fn send(client: reqwest::Client, mut deliveries: mpsc::Receiver<Delivery>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(delivery) = deliveries.recv().await {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let client = client.clone();
        tokio::spawn(async move {
            deliver(&client, &delivery).await;
            drop(slot);
        });
    }
}

async fn deliver(client: &reqwest::Client, delivery: &Delivery) {
    let mut wait = Duration::from_secs(1);
    for attempt in 1..=ATTEMPTS {
        let timestamp = crate::now_ms() / 1000;
        let signed = signature(
            &delivery.hook.secret,
            &delivery.id,
            timestamp,
            &delivery.body,
        );
        let sent = client
            .post(&delivery.hook.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ID_HEADER, &delivery.id)
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signed)
            .body(delivery.body.clone())
            .send()
            .await;
        let failure = match sent {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("ztinfra_webhook_deliveries_total", "outcome" => "delivered")
                    .increment(1);
                return;
            }
            Ok(response) => format!("the receiver answered HTTP {}", response.status()),
            Err(e) => crate::error_chain(&e),
        };
        if attempt == ATTEMPTS {
            tracing::error!(url = %delivery.hook.url, delivery = %delivery.id, error = %failure, "an approval notification could not be delivered; given up after {ATTEMPTS} attempts");
            metrics::counter!("ztinfra_webhook_deliveries_total", "outcome" => "failed")
                .increment(1);
            return;
        }
        tracing::warn!(url = %delivery.hook.url, delivery = %delivery.id, attempt, error = %failure, "an approval notification failed; retrying in {} s", wait.as_secs());
        metrics::counter!("ztinfra_webhook_deliveries_total", "outcome" => "retried").increment(1);
        tokio::time::sleep(wait).await;
        wait *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_id_time_and_body() {
        let secret = b"a test secret, not a real one: 32+ bytes";
        let one = signature(secret, "d1", 100, "{}");
        assert!(one.starts_with("v1=") && one.len() == 3 + 64);
        assert_ne!(one, signature(secret, "d2", 100, "{}"));
        assert_ne!(one, signature(secret, "d1", 101, "{}"));
        assert_ne!(one, signature(secret, "d1", 100, "{ }"));
        assert_ne!(
            one,
            signature(b"another test secret of 32+ bytes..", "d1", 100, "{}")
        );
        // RFC 4231 test case 2, through the same construction.
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(mac.finalize().into_bytes()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
